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

constexpr int64_t kMaxSeq = int64_t(1) << 30;

bool aligned16(const at::Tensor& t) {
  if (reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 != 0) return false;
  for (int d = 0; d + 1 < t.dim(); ++d)
    if (t.size(d) > 1 && (t.stride(d) * t.element_size()) % 16 != 0) return false;
  return true;
}

// Dtypes and shapes are checked before devices, so that these errors show on any machine.
void check_qkv_like(const at::Tensor& t, const char* name, const at::Tensor& q, bool packed) {
  TORCH_CHECK(t.defined(), name, " must be a tensor, got None");
  if (packed)
    check_dim(t, name, 3, "(total, heads, head_dim) with cu_seqlens");
  else
    check_dim(t, name, 4, "(batch, heads, seq, head_dim)");
  TORCH_CHECK(t.scalar_type() == q.scalar_type(), name, " must have q's dtype ", q.scalar_type(), ", got ",
              t.scalar_type());
  check_last_dim_contiguous(t, name);
}

// (batch, heads, row) strides of a q-, k- or out-like tensor; packed (total, H, D): batch stride 0.
struct Strides {
  int64_t b, h, n;
  Strides(const at::Tensor& t, bool packed)
      : b(packed ? 0 : t.stride(0)), h(t.stride(1)), n(packed ? t.stride(0) : t.stride(2)) {}
};

struct Sizes {
  int64_t batch, heads_q, heads_kv, seq_q, seq_k, head_dim;  // packed: seq_* are the longest sequences
};

// Checks the dtypes and shapes of q, k, v, the mask and the features.
Sizes check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const std::optional<at::Tensor>& key_padding_mask, const AttentionFeatures& f) {
  const bool packed = f.packed();
  TORCH_CHECK(present(f.cu_seqlens_q) == present(f.cu_seqlens_k),
              "cu_seqlens_q and cu_seqlens_k must be given together (packed sequences) or not at all");
  TORCH_CHECK(q.defined(), "q must be a tensor, got None");
  check_float_dtype(q, "q");
  check_qkv_like(q, "q", q, packed);
  check_qkv_like(k, "k", q, packed);
  check_qkv_like(v, "v", q, packed);
  TORCH_CHECK(k.sizes() == v.sizes(), "k and v must have one shape, got ", k.sizes(), " and ", v.sizes());
  Sizes z{};
  z.heads_q = q.size(1), z.heads_kv = k.size(1), z.head_dim = q.size(-1);
  if (packed) {
    for (const auto& [t, name] : {std::pair{&*f.cu_seqlens_q, "cu_seqlens_q"}, {&*f.cu_seqlens_k, "cu_seqlens_k"}}) {
      check_dtype(*t, name, at::kInt);
      check_dim(*t, name, 1, "(batch + 1,)");
      TORCH_CHECK(t->size(0) >= 1 && t->is_contiguous(), name, " must be a contiguous (batch + 1,) tensor");
    }
    TORCH_CHECK(f.cu_seqlens_q->size(0) == f.cu_seqlens_k->size(0), "cu_seqlens_q and cu_seqlens_k must list as many ",
                "sequences, got ", f.cu_seqlens_q->size(0) - 1, " and ", f.cu_seqlens_k->size(0) - 1);
    TORCH_CHECK(f.max_seqlen_q >= 0 && f.max_seqlen_k >= 0, "max_seqlen_q and max_seqlen_k must be >= 0, got ",
                f.max_seqlen_q, " and ", f.max_seqlen_k);
    TORCH_CHECK(!present(key_padding_mask), "packed sequences take no key_padding_mask (each sequence is its keys)");
    z.batch = f.cu_seqlens_q->size(0) - 1, z.seq_q = f.max_seqlen_q, z.seq_k = f.max_seqlen_k;
  } else {
    z.batch = q.size(0), z.seq_q = q.size(2), z.seq_k = k.size(2);
    TORCH_CHECK(k.size(0) == z.batch, "k must be (batch, heads_kv, seq_k, head_dim) matching q ", q.sizes(), ", got ",
                k.sizes());
  }
  TORCH_CHECK(k.size(-1) == z.head_dim, "k must have q's head_dim ", z.head_dim, ", got shape ", k.sizes());
  TORCH_CHECK(z.heads_kv > 0 && z.heads_q % z.heads_kv == 0, "the query heads (", z.heads_q,
              ") must be a multiple of the key/value heads (", z.heads_kv, ")");
  TORCH_CHECK(z.head_dim >= 1 && z.head_dim <= kMaxHeadDim, "head_dim must be in 1..", kMaxHeadDim, ", got ",
              z.head_dim);
  // Row indices are int32 inside the kernels, with room for a block past the end (start += block).
  TORCH_CHECK(z.seq_q <= kMaxSeq && z.seq_k <= kMaxSeq, "sequence lengths must be at most 2^30, got ", z.seq_q,
              " and ", z.seq_k);
  TORCH_CHECK(!packed || (q.size(0) <= kMaxSeq && k.size(0) <= kMaxSeq),
              "packed sequences must total at most 2^30 rows, got ", q.size(0), " and ", k.size(0));
  // The grids hold one block per (batch, head, 16 rows) at most (the smallest row block of any kernel).
  const int64_t blocks =
      std::max(z.batch * z.heads_q * ((z.seq_q + 15) / 16), z.batch * z.heads_kv * ((z.seq_k + 15) / 16));
  TORCH_CHECK(blocks < INT32_MAX, "batch * heads * ceil(seq / 16) must be < 2^31 (the kernels' grid), got ", blocks,
              " for q ", q.sizes(), " and k ", k.sizes());
  if (present(key_padding_mask)) {
    const at::Tensor& m = *key_padding_mask;
    check_dtype(m, "key_padding_mask", at::kBool);
    check_shape(m, "key_padding_mask", {z.batch, z.seq_k});
  }
  TORCH_CHECK(f.window_left >= -1 && f.window_right >= -1, "window must be two ints >= -1 (-1: unlimited), got (",
              f.window_left, ", ", f.window_right, ")");
  TORCH_CHECK(std::isfinite(f.softcap) && f.softcap >= 0.0, "softcap must be a finite number >= 0, got ", f.softcap);
  if (present(f.alibi_slopes)) {
    const at::Tensor& a = *f.alibi_slopes;
    check_dtype(a, "alibi_slopes", at::kFloat);
    TORCH_CHECK((a.dim() == 1 && a.size(0) == z.heads_q) ||
                    (a.dim() == 2 && a.size(0) == z.batch && a.size(1) == z.heads_q),
                "alibi_slopes must be (Hq,) or (batch, Hq) with Hq = ", z.heads_q, ", got ", a.sizes());
    TORCH_CHECK(a.is_contiguous(), "alibi_slopes must be contiguous");
  }
  if (present(f.sinks)) {
    check_dtype(*f.sinks, "sinks", at::kFloat);
    check_shape(*f.sinks, "sinks", {z.heads_q});
    TORCH_CHECK(f.sinks->is_contiguous(), "sinks must be contiguous");
  }
  return z;
}

void check_devices(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const std::optional<at::Tensor>& key_padding_mask, const AttentionFeatures& f) {
  check_cuda(q, "q");
  check_same_device(k, "k", q, "q");
  check_same_device(v, "v", q, "q");
  for (const auto& [t, name] : {std::pair{&key_padding_mask, "key_padding_mask"}, {&f.alibi_slopes, "alibi_slopes"},
                                {&f.sinks, "sinks"}, {&f.cu_seqlens_q, "cu_seqlens_q"}, {&f.cu_seqlens_k, "cu_seqlens_k"}})
    if (present(*t)) check_same_device(**t, name, q, "q");
}

// lse's layout: (B, Hq, Nq), or packed (Hq, total_q).
std::vector<int64_t> lse_shape(const at::Tensor& q, const Sizes& z, bool packed) {
  if (packed) return {z.heads_q, q.size(0)};
  return {z.batch, z.heads_q, z.seq_q};
}

void fill_common(AttnParams& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                 const std::optional<at::Tensor>& key_padding_mask, bool causal, double scale, double dropout_p,
                 int64_t seed, const Sizes& z, const AttentionFeatures& f) {
  const bool packed = f.packed();
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  const Strides qs(q, packed), ks(k, packed), vs(v, packed);
  p.q_stride_b = qs.b, p.q_stride_h = qs.h, p.q_stride_n = qs.n;
  p.k_stride_b = ks.b, p.k_stride_h = ks.h, p.k_stride_n = ks.n;
  p.v_stride_b = vs.b, p.v_stride_h = vs.h, p.v_stride_n = vs.n;
  if (present(key_padding_mask)) {
    p.kpm = static_cast<const uint8_t*>(key_padding_mask->data_ptr());  // bool is one byte, 0 or 1
    p.kpm_stride_b = key_padding_mask->stride(0);
    p.kpm_stride_n = key_padding_mask->stride(1);
  }
  p.batch = int(z.batch);
  p.heads_q = int(z.heads_q);
  p.heads_kv = int(z.heads_kv);
  p.group = p.heads_q / p.heads_kv;
  p.seq_q = int(z.seq_q);
  p.seq_k = int(z.seq_k);
  p.head_dim = int(z.head_dim);
  p.scale = static_cast<float>(scale);
  p.scale_log2 = static_cast<float>(scale * 1.4426950408889634);  // log2(e)
  p.dropout_p = static_cast<float>(dropout_p);
  p.keep_scale = dropout_p < 1.0 ? static_cast<float>(1.0 / (1.0 - dropout_p)) : 0.0f;
  p.seed = static_cast<uint64_t>(seed);
  p.dtype = to_dtype(q.scalar_type());

  set_row_layout(p, packed, q.size(0));
  set_band_and_softcap(p, causal, f.window_left, f.window_right, f.softcap);
  p.cu_seqlens_q = optional_ptr<int>(f.cu_seqlens_q);
  p.cu_seqlens_k = optional_ptr<int>(f.cu_seqlens_k);
  p.alibi = optional_ptr<float>(f.alibi_slopes);
  p.alibi_stride_b = present(f.alibi_slopes) && f.alibi_slopes->dim() == 2 ? z.heads_q : 0;
  p.sinks = optional_ptr<float>(f.sinks);
}

void check_options(double scale, double dropout_p) {
  TORCH_CHECK(std::isfinite(scale), "scale must be finite, got ", scale);
  TORCH_CHECK(dropout_p >= 0.0 && dropout_p < 1.0, "dropout_p must be in [0, 1), got ", dropout_p);
}

// lse of rows that see no key: the sink's logit of each head, or -inf.
at::Tensor& fill_lse_without_keys(at::Tensor& lse, const std::optional<at::Tensor>& sinks) {
  if (!present(sinks)) return lse.fill_(-INFINITY);
  const std::vector<int64_t> heads = lse.dim() == 2 ? std::vector<int64_t>{-1, 1} : std::vector<int64_t>{1, -1, 1};
  return lse.copy_(sinks->view(heads).expand_as(lse));
}

}  // namespace

std::vector<at::Tensor> attention_fwd(const AttentionFeatures& f, const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& v, const std::optional<at::Tensor>& key_padding_mask,
                                      bool causal, double scale, double dropout_p, int64_t seed) {
  const Sizes z = check_inputs(q, k, v, key_padding_mask, f);
  check_options(scale, dropout_p);
  check_devices(q, k, v, key_padding_mask, f);
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = at::empty(q.sizes(), q.options());
  at::Tensor lse = at::empty(lse_shape(q, z, f.packed()), q.options().dtype(at::kFloat));
  if (out.numel() == 0 || z.seq_q == 0) return {out, lse};
  if (k.numel() == 0) return {out.zero_(), fill_lse_without_keys(lse, f.sinks)};

  AttnParams p{};
  fill_common(p, q, k, v, key_padding_mask, causal, scale, dropout_p, seed, z, f);
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  const Strides os(out, f.packed());
  p.o_stride_b = os.b, p.o_stride_h = os.h, p.o_stride_n = os.n;
  p.vec = aligned16(q) && aligned16(k) && aligned16(v);
  FASTATTN_CHECK_LAUNCH(launch_attention_fwd(p, c10::cuda::getCurrentCUDAStream(q.get_device()).stream()));
  return {out, lse};
}

std::vector<at::Tensor> attention_bwd(const AttentionFeatures& f, const at::Tensor& dout, const at::Tensor& q,
                                      const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                                      const at::Tensor& lse, const std::optional<at::Tensor>& dlse,
                                      const std::optional<at::Tensor>& key_padding_mask, bool causal, double scale,
                                      double dropout_p, int64_t seed) {
  const Sizes z = check_inputs(q, k, v, key_padding_mask, f);
  check_options(scale, dropout_p);
  check_qkv_like(dout, "dout", q, f.packed());
  check_shape(dout, "dout", q.sizes());
  check_qkv_like(out, "out", q, f.packed());
  check_shape(out, "out", q.sizes());
  const std::vector<int64_t> rows_shape = lse_shape(q, z, f.packed());
  for (const auto& [t, name] : {std::pair<const at::Tensor*, const char*>{&lse, "lse"},
                                {present(dlse) ? &*dlse : nullptr, "dlse"}}) {
    if (t == nullptr) continue;
    check_dtype(*t, name, at::kFloat);
    check_shape(*t, name, rows_shape);
    TORCH_CHECK(t->is_contiguous(), name, " must be contiguous");
  }
  check_devices(q, k, v, key_padding_mask, f);
  check_same_device(dout, "dout", q, "q");
  check_same_device(out, "out", q, "q");
  check_same_device(lse, "lse", q, "q");
  if (present(dlse)) check_same_device(*dlse, "dlse", q, "q");
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor dq = at::empty(q.sizes(), q.options());
  at::Tensor dk = at::empty(k.sizes(), k.options());
  at::Tensor dv = at::empty(v.sizes(), v.options());
  at::Tensor dsinks = at::empty({z.heads_q}, q.options().dtype(at::kFloat)).zero_();  // zeros without sinks
  if (q.numel() == 0 || z.seq_q == 0) return {dq.zero_(), dk.zero_(), dv.zero_(), dsinks};

  at::Tensor delta = at::empty(rows_shape, q.options().dtype(at::kFloat));
  at::Tensor dsink_rows = present(f.sinks) ? at::empty(rows_shape, q.options().dtype(at::kFloat)) : at::Tensor();
  AttnParams p{};
  fill_common(p, q, k, v, key_padding_mask, causal, scale, dropout_p, seed, z, f);
  p.out = const_cast<void*>(out.data_ptr());
  p.lse = const_cast<float*>(lse.data_ptr<float>());
  const Strides os(out, f.packed()), dos(dout, f.packed()), dqs(dq, f.packed()), dks(dk, f.packed());
  p.o_stride_b = os.b, p.o_stride_h = os.h, p.o_stride_n = os.n;
  p.dout = dout.data_ptr();
  p.do_stride_b = dos.b, p.do_stride_h = dos.h, p.do_stride_n = dos.n;
  p.dlse = present(dlse) ? dlse->data_ptr<float>() : nullptr;
  p.delta = delta.data_ptr<float>();
  p.dsink_rows = present(f.sinks) ? dsink_rows.data_ptr<float>() : nullptr;
  p.dq = dq.data_ptr();
  p.dk = dk.data_ptr();
  p.dv = dv.data_ptr();
  p.dq_stride_b = dqs.b, p.dq_stride_h = dqs.h, p.dq_stride_n = dqs.n;
  p.dkv_stride_b = dks.b, p.dkv_stride_h = dks.h, p.dkv_stride_n = dks.n;  // dv: dk's shape, contiguous
  // Without keys (Nk = 0, or packed sequences with no key at all) the dK/dV grid has no block, and dQ
  // comes out 0; the preprocess still gives the sinks' gradient.
  p.vec = aligned16(q) && aligned16(k) && aligned16(v) && aligned16(dout);
  FASTATTN_CHECK_LAUNCH(launch_attention_bwd(p, c10::cuda::getCurrentCUDAStream(q.get_device()).stream()));
  if (present(f.sinks)) dsinks = dsink_rows.view({p.lse_batches, z.heads_q, p.lse_rows}).sum({0, 2});
  return {dq, dk, dv, dsinks};
}

std::vector<int64_t> attention_shared_memory(at::ScalarType dtype, int64_t head_dim) {
  check_float_dtype(dtype, "dtype");
  TORCH_CHECK(head_dim >= 1 && head_dim <= kMaxHeadDim, "head_dim must be in 1..", kMaxHeadDim, ", got ", head_dim);
  const AttnSharedMemory bytes = attention_shared_memory(to_dtype(dtype), int(head_dim));
  return {int64_t(bytes.forward), int64_t(bytes.backward), int64_t(bytes.decode)};
}

std::string kernel_image_error(int64_t device) {
  const cudaError_t err = kernel_image_status(int(device));
  cudaGetLastError();  // the failed query must not show up later as the error of an unrelated launch
  return err == cudaSuccess ? std::string() : std::string(cudaGetErrorString(err));
}

}  // namespace fastattn
