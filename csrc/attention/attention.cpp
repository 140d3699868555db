// Host side of attention: checks the tensors, allocates the outputs, fills the params, launches on the
// current stream of q's device.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "attention/attention_params.h"
#include "common/check.h"
#include "ops.h"

namespace fastattn {

namespace {

constexpr int64_t kMaxHeadDim = 256;
constexpr int64_t kMaxSeq = int64_t(1) << 30;

bool aligned16(const at::Tensor& t) {
  if (reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 != 0) return false;
  for (int d = 0; d < 3; ++d)
    if (t.size(d) > 1 && (t.stride(d) * t.element_size()) % 16 != 0) return false;
  return true;
}

// Dtypes and shapes are checked before devices, so that these errors show on any machine.
void check_4d(const at::Tensor& t, const char* name, const at::Tensor& q) {
  TORCH_CHECK(t.defined(), name, " must be a tensor, got None");
  check_dim(t, name, 4, "(batch, heads, seq, head_dim)");
  TORCH_CHECK(t.scalar_type() == q.scalar_type(), name, " must have q's dtype ", q.scalar_type(), ", got ",
              t.scalar_type());
  check_last_dim_contiguous(t, name);
}

// Checks the dtypes and shapes of q, k, v and the mask; returns (B, Hq, Hkv, Nq, Nk, D).
std::vector<int64_t> check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const std::optional<at::Tensor>& key_padding_mask) {
  TORCH_CHECK(q.defined(), "q must be a tensor, got None");
  check_float_dtype(q, "q");
  check_4d(q, "q", q);
  check_4d(k, "k", q);
  check_4d(v, "v", q);
  const int64_t batch = q.size(0), heads_q = q.size(1), seq_q = q.size(2), head_dim = q.size(3);
  const int64_t heads_kv = k.size(1), seq_k = k.size(2);
  TORCH_CHECK(k.sizes() == v.sizes(), "k and v must have one shape, got ", k.sizes(), " and ", v.sizes());
  TORCH_CHECK(k.size(0) == batch && k.size(3) == head_dim, "k must be (batch, heads_kv, seq_k, head_dim) matching q ",
              q.sizes(), ", got ", k.sizes());
  TORCH_CHECK(heads_kv > 0 && heads_q % heads_kv == 0, "the query heads (", heads_q,
              ") must be a multiple of the key/value heads (", heads_kv, ")");
  TORCH_CHECK(head_dim >= 1 && head_dim <= kMaxHeadDim, "head_dim must be in 1..", kMaxHeadDim, ", got ", head_dim);
  // Row indices are int32 inside the kernels, with room for a block past the end (start += block).
  TORCH_CHECK(seq_q <= kMaxSeq && seq_k <= kMaxSeq, "sequence lengths must be at most 2^30, got ", seq_q, " and ",
              seq_k);
  // The grids hold one block per (batch, head, 16 rows) at most (the smallest row block of any kernel).
  const int64_t blocks = std::max(batch * heads_q * ((seq_q + 15) / 16), batch * heads_kv * ((seq_k + 15) / 16));
  TORCH_CHECK(blocks < INT32_MAX, "batch * heads * ceil(seq / 16) must be < 2^31 (the kernels' grid), got ", blocks,
              " for q ", q.sizes(), " and k ", k.sizes());
  if (present(key_padding_mask)) {
    const at::Tensor& m = *key_padding_mask;
    check_dtype(m, "key_padding_mask", at::kBool);
    check_shape(m, "key_padding_mask", {batch, seq_k});
  }
  return {batch, heads_q, heads_kv, seq_q, seq_k, head_dim};
}

void check_devices(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const std::optional<at::Tensor>& key_padding_mask) {
  check_cuda(q, "q");
  check_same_device(k, "k", q, "q");
  check_same_device(v, "v", q, "q");
  if (present(key_padding_mask)) check_same_device(*key_padding_mask, "key_padding_mask", q, "q");
}

void fill_common(AttnParams& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                 const std::optional<at::Tensor>& key_padding_mask, bool causal, double scale, double dropout_p,
                 int64_t seed) {
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.q_stride_b = q.stride(0), p.q_stride_h = q.stride(1), p.q_stride_n = q.stride(2);
  p.k_stride_b = k.stride(0), p.k_stride_h = k.stride(1), p.k_stride_n = k.stride(2);
  p.v_stride_b = v.stride(0), p.v_stride_h = v.stride(1), p.v_stride_n = v.stride(2);
  if (present(key_padding_mask)) {
    p.kpm = static_cast<const uint8_t*>(key_padding_mask->data_ptr());  // bool is one byte, 0 or 1
    p.kpm_stride_b = key_padding_mask->stride(0);
    p.kpm_stride_n = key_padding_mask->stride(1);
  }
  p.batch = int(q.size(0));
  p.heads_q = int(q.size(1));
  p.heads_kv = int(k.size(1));
  p.group = p.heads_q / p.heads_kv;
  p.seq_q = int(q.size(2));
  p.seq_k = int(k.size(2));
  p.head_dim = int(q.size(3));
  p.scale = static_cast<float>(scale);
  p.scale_log2 = static_cast<float>(scale * 1.4426950408889634);  // log2(e)
  p.dropout_p = static_cast<float>(dropout_p);
  p.keep_scale = dropout_p < 1.0 ? static_cast<float>(1.0 / (1.0 - dropout_p)) : 0.0f;
  p.seed = static_cast<uint64_t>(seed);
  p.causal = causal;
  p.dtype = to_dtype(q.scalar_type());
}

void check_options(double scale, double dropout_p) {
  TORCH_CHECK(std::isfinite(scale), "scale must be finite, got ", scale);
  TORCH_CHECK(dropout_p >= 0.0 && dropout_p < 1.0, "dropout_p must be in [0, 1), got ", dropout_p);
}

}  // namespace

std::vector<at::Tensor> attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      const std::optional<at::Tensor>& key_padding_mask, bool causal, double scale,
                                      double dropout_p, int64_t seed) {
  const auto sizes = check_inputs(q, k, v, key_padding_mask);
  check_options(scale, dropout_p);
  check_devices(q, k, v, key_padding_mask);
  const c10::cuda::CUDAGuard guard(q.device());
  const int64_t batch = sizes[0], heads_q = sizes[1], seq_q = sizes[3], seq_k = sizes[4], head_dim = sizes[5];
  at::Tensor out = at::empty({batch, heads_q, seq_q, head_dim}, q.options());
  at::Tensor lse = at::empty({batch, heads_q, seq_q}, q.options().dtype(at::kFloat));
  if (out.numel() == 0) return {out, lse};
  if (seq_k == 0) return {out.zero_(), lse.fill_(-INFINITY)};

  AttnParams p{};
  fill_common(p, q, k, v, key_padding_mask, causal, scale, dropout_p, seed);
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  p.o_stride_b = out.stride(0), p.o_stride_h = out.stride(1), p.o_stride_n = out.stride(2);
  p.vec = aligned16(q) && aligned16(k) && aligned16(v);
  FASTATTN_CHECK_LAUNCH(launch_attention_fwd(p, c10::cuda::getCurrentCUDAStream(q.get_device()).stream()));
  return {out, lse};
}

std::vector<at::Tensor> attention_bwd(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                                      const std::optional<at::Tensor>& dlse,
                                      const std::optional<at::Tensor>& key_padding_mask, bool causal, double scale,
                                      double dropout_p, int64_t seed) {
  const auto sizes = check_inputs(q, k, v, key_padding_mask);
  check_options(scale, dropout_p);
  const int64_t batch = sizes[0], heads_q = sizes[1], seq_q = sizes[3], seq_k = sizes[4];
  check_4d(dout, "dout", q);
  check_shape(dout, "dout", q.sizes());
  check_4d(out, "out", q);
  check_shape(out, "out", q.sizes());
  for (const auto& [t, name] : {std::pair<const at::Tensor*, const char*>{&lse, "lse"},
                                {present(dlse) ? &*dlse : nullptr, "dlse"}}) {
    if (t == nullptr) continue;
    check_dtype(*t, name, at::kFloat);
    check_shape(*t, name, {batch, heads_q, seq_q});
    TORCH_CHECK(t->is_contiguous(), name, " must be contiguous");
  }
  check_devices(q, k, v, key_padding_mask);
  check_same_device(dout, "dout", q, "q");
  check_same_device(out, "out", q, "q");
  check_same_device(lse, "lse", q, "q");
  if (present(dlse)) check_same_device(*dlse, "dlse", q, "q");
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor dq = at::empty(q.sizes(), q.options());
  at::Tensor dk = at::empty(k.sizes(), k.options());
  at::Tensor dv = at::empty(v.sizes(), v.options());
  if (batch * heads_q * seq_q == 0 || seq_k == 0 || q.size(3) == 0) return {dq.zero_(), dk.zero_(), dv.zero_()};

  at::Tensor delta = at::empty({batch, heads_q, seq_q}, q.options().dtype(at::kFloat));
  AttnParams p{};
  fill_common(p, q, k, v, key_padding_mask, causal, scale, dropout_p, seed);
  p.out = const_cast<void*>(out.data_ptr());
  p.lse = const_cast<float*>(lse.data_ptr<float>());
  p.o_stride_b = out.stride(0), p.o_stride_h = out.stride(1), p.o_stride_n = out.stride(2);
  p.dout = dout.data_ptr();
  p.do_stride_b = dout.stride(0), p.do_stride_h = dout.stride(1), p.do_stride_n = dout.stride(2);
  p.dlse = present(dlse) ? dlse->data_ptr<float>() : nullptr;
  p.delta = delta.data_ptr<float>();
  p.dq = dq.data_ptr();
  p.dk = dk.data_ptr();
  p.dv = dv.data_ptr();
  p.vec = aligned16(q) && aligned16(k) && aligned16(v) && aligned16(dout);
  FASTATTN_CHECK_LAUNCH(launch_attention_bwd(p, c10::cuda::getCurrentCUDAStream(q.get_device()).stream()));
  return {dq, dk, dv};
}

std::vector<int64_t> attention_shared_memory(at::ScalarType dtype, int64_t head_dim) {
  check_float_dtype(dtype, "dtype");
  TORCH_CHECK(head_dim >= 1 && head_dim <= kMaxHeadDim, "head_dim must be in 1..", kMaxHeadDim, ", got ", head_dim);
  const AttnSharedMemory bytes = attention_shared_memory(to_dtype(dtype), int(head_dim));
  return {int64_t(bytes.forward), int64_t(bytes.backward)};
}

std::string kernel_image_error(int64_t device) {
  const cudaError_t err = kernel_image_status(int(device));
  cudaGetLastError();  // the failed query must not show up later as the error of an unrelated launch
  return err == cudaSuccess ? std::string() : std::string(cudaGetErrorString(err));
}

}  // namespace fastattn
