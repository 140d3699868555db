// Runs csrc/attention's kernels on the host (fakecuda.h), filling the params as csrc/attention/attention.cpp
// does and launching through its dispatcher (attention_launch.cu: launch_attention_fwd, _bwd), for
// test_cuda_emulated.py: the float32 kernels (attention_simt.cuh) or, for float16 / bfloat16, the
// tensor-core kernels (attention_fwd.cuh, attention_bwd.cuh) with mma.sync and ldmatrix emulated by
// emulated_ptx.h (built with -DFASTATTN_EMULATED_PTX); forward, preprocess, dK/dV, dQ.
//
// stdin:  AttnCase, then float32 q, k, v (for 16-bit dtypes: values of that dtype, converted exactly) (padded (B, H, N, D) or packed (total, H, D), contiguous), the
//         key_padding_mask (uint8 (B, Nk), if any), cu_seqlens_q and cu_seqlens_k (int32 (B + 1,), if
//         packed), ALiBi slopes (float32 (Hq,) or (B, Hq), if any), sinks (float32 (Hq,), if any), dout
//         (like q), dlse (like lse, if any).
// stdout: out (like q), lse ((B, Hq, Nq), or packed (Hq, total_q)), dq, dk, dv, dsinks ((Hq,), if sinks).
#include <cstdio>
#include <type_traits>

#include "driver_io.h"
#include "attention/attention_run.cuh"  // the test's rewritten copies (their -I comes before csrc's)
#include "attention/attention_launch.cu"
#include "attention/attention_decode.cu"  // attention_shared_memory reports the decode kernel's too

using namespace fastattn;

namespace {

struct AttnCase {
  int64_t batch, heads_q, heads_kv, seq_q, seq_k, head_dim;  // packed: seq_q, seq_k are the longest sequences
  int64_t packed, total_q, total_k;                          // packed: the rows of q and of k
  int64_t causal, window_left, window_right, has_kpm, alibi_dims, has_sinks, has_dlse, seed;
  int64_t dtype;  // csrc/common/types.h: 0 float32, 1 float16, 2 bfloat16
  double scale, softcap, dropout_p;
};

// (batch, head, row) strides of a contiguous q-, k- or out-like tensor, as attention.cpp's Strides.
void strides(const AttnCase& c, int64_t heads, int64_t rows, int64_t& b, int64_t& h, int64_t& n) {
  b = c.packed ? 0 : heads * rows * c.head_dim;
  h = c.packed ? c.head_dim : rows * c.head_dim;
  n = c.packed ? heads * c.head_dim : c.head_dim;
}

void run(const AttnParams& p) {
  if (launch_attention_fwd(p, nullptr) != cudaSuccess) fakecuda::fail("the forward launch failed");
  if (launch_attention_bwd(p, nullptr) != cudaSuccess) fakecuda::fail("the backward launch failed");
}

// Storage of float values in 16-bit dtype T (exact for values of that dtype), and back.
template <typename T>
std::vector<T> narrow(const std::vector<float>& values) {
  std::vector<T> out(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    if constexpr (std::is_same_v<T, __half>) out[i] = __float2half_rn(values[i]);
    else out[i] = __float2bfloat16_rn(values[i]);
  }
  return out;
}
template <typename T>
void widen(const std::vector<T>& values, std::vector<float>& out) {
  for (size_t i = 0; i < values.size(); ++i) {
    if constexpr (std::is_same_v<T, __half>) out[i] = __half2float(values[i]);
    else out[i] = __bfloat162float(values[i]);
  }
}

// The 16-bit kernels on 16-bit copies of the data; out, dq, dk, dv are written back as floats.
template <typename T>
void run_16bit(AttnParams p, std::vector<float>& out, std::vector<float>& dq, std::vector<float>& dk,
               std::vector<float>& dv) {
  const auto q = narrow<T>(std::vector<float>(static_cast<const float*>(p.q), static_cast<const float*>(p.q) + out.size()));
  const auto k = narrow<T>(std::vector<float>(static_cast<const float*>(p.k), static_cast<const float*>(p.k) + dk.size()));
  const auto v = narrow<T>(std::vector<float>(static_cast<const float*>(p.v), static_cast<const float*>(p.v) + dv.size()));
  const auto dout =
      narrow<T>(std::vector<float>(static_cast<const float*>(p.dout), static_cast<const float*>(p.dout) + out.size()));
  std::vector<T> out16(out.size()), dq16(dq.size()), dk16(dk.size()), dv16(dv.size());
  p.q = q.data(), p.k = k.data(), p.v = v.data(), p.dout = dout.data();
  // As attention.cpp's aligned16: cp.async tile loads when every row of q, k, v, dout starts 16-byte
  // aligned (the buffers are; the rows are when D * 2 bytes is a multiple of 16), else plain loads.
  const auto aligned16 = [](const void* data, int64_t stride_b, int64_t stride_h, int64_t stride_n) {
    const auto bytes16 = [](int64_t stride) { return stride * int64_t(sizeof(T)) % 16 == 0; };
    return reinterpret_cast<uintptr_t>(data) % 16 == 0 && bytes16(stride_b) && bytes16(stride_h) && bytes16(stride_n);
  };
  p.vec = aligned16(q.data(), p.q_stride_b, p.q_stride_h, p.q_stride_n) &&
          aligned16(k.data(), p.k_stride_b, p.k_stride_h, p.k_stride_n) &&
          aligned16(v.data(), p.v_stride_b, p.v_stride_h, p.v_stride_n) &&
          aligned16(dout.data(), p.do_stride_b, p.do_stride_h, p.do_stride_n);
  p.out = out16.data(), p.dq = dq16.data(), p.dk = dk16.data(), p.dv = dv16.data();
  run(p);
  widen(out16, out), widen(dq16, dq), widen(dk16, dk), widen(dv16, dv);
}

}  // namespace

int main() {
  AttnCase c;
  if (std::fread(&c, sizeof c, 1, stdin) != 1) fakecuda::fail("short read from stdin");
  const int64_t rows_q = c.packed ? c.total_q : c.batch * c.seq_q;  // per head
  const int64_t rows_k = c.packed ? c.total_k : c.batch * c.seq_k;
  const int64_t q_elems = rows_q * c.heads_q * c.head_dim, k_elems = rows_k * c.heads_kv * c.head_dim;
  const auto q = read_values<float>(q_elems), k = read_values<float>(k_elems), v = read_values<float>(k_elems);
  const auto kpm = read_values<uint8_t>(c.has_kpm ? c.batch * c.seq_k : 0);
  const auto cu_q = read_values<int32_t>(c.packed ? c.batch + 1 : 0);
  const auto cu_k = read_values<int32_t>(c.packed ? c.batch + 1 : 0);
  const auto alibi = read_values<float>(c.alibi_dims == 2 ? c.batch * c.heads_q : c.alibi_dims == 1 ? c.heads_q : 0);
  const auto sinks = read_values<float>(c.has_sinks ? c.heads_q : 0);
  const auto dout = read_values<float>(q_elems);
  const auto dlse = read_values<float>(c.has_dlse ? rows_q * c.heads_q : 0);
  // Poisoned: what the kernels do not write shows.
  std::vector<float> out(size_t(q_elems), NAN), lse(size_t(rows_q * c.heads_q), NAN);
  std::vector<float> dq(size_t(q_elems), NAN), dk(size_t(k_elems), NAN), dv(size_t(k_elems), NAN);
  std::vector<float> delta(lse.size(), NAN), dsink_rows(lse.size(), NAN);

  AttnParams p{};
  p.q = q.data(), p.k = k.data(), p.v = v.data(), p.out = out.data(), p.lse = lse.data();
  strides(c, c.heads_q, c.seq_q, p.q_stride_b, p.q_stride_h, p.q_stride_n);
  strides(c, c.heads_kv, c.seq_k, p.k_stride_b, p.k_stride_h, p.k_stride_n);
  strides(c, c.heads_kv, c.seq_k, p.v_stride_b, p.v_stride_h, p.v_stride_n);
  strides(c, c.heads_q, c.seq_q, p.o_stride_b, p.o_stride_h, p.o_stride_n);
  strides(c, c.heads_q, c.seq_q, p.do_stride_b, p.do_stride_h, p.do_stride_n);
  strides(c, c.heads_q, c.seq_q, p.dq_stride_b, p.dq_stride_h, p.dq_stride_n);
  strides(c, c.heads_kv, c.seq_k, p.dkv_stride_b, p.dkv_stride_h, p.dkv_stride_n);
  if (c.has_kpm) p.kpm = kpm.data(), p.kpm_stride_b = c.seq_k, p.kpm_stride_n = 1;
  p.dout = dout.data(), p.dlse = c.has_dlse ? dlse.data() : nullptr, p.delta = delta.data();
  p.dsink_rows = c.has_sinks ? dsink_rows.data() : nullptr;
  p.dq = dq.data(), p.dk = dk.data(), p.dv = dv.data();
  p.batch = int(c.batch), p.heads_q = int(c.heads_q), p.heads_kv = int(c.heads_kv);
  p.group = p.heads_q / p.heads_kv;
  p.seq_q = int(c.seq_q), p.seq_k = int(c.seq_k), p.head_dim = int(c.head_dim);
  p.scale = float(c.scale), p.scale_log2 = float(c.scale * 1.4426950408889634);
  p.dropout_p = float(c.dropout_p), p.keep_scale = float(1.0 / (1.0 - c.dropout_p)), p.seed = uint64_t(c.seed);
  p.dtype = DType(c.dtype);
  set_row_layout(p, c.packed != 0, c.total_q);
  set_band_and_softcap(p, c.causal != 0, c.window_left, c.window_right, c.softcap);
  p.cu_seqlens_q = c.packed ? cu_q.data() : nullptr, p.cu_seqlens_k = c.packed ? cu_k.data() : nullptr;
  p.alibi = c.alibi_dims ? alibi.data() : nullptr, p.alibi_stride_b = c.alibi_dims == 2 ? c.heads_q : 0;
  p.sinks = c.has_sinks ? sinks.data() : nullptr;

  if (p.dtype == DType::kFloat16) run_16bit<__half>(p, out, dq, dk, dv);
  else if (p.dtype == DType::kBFloat16) run_16bit<__nv_bfloat16>(p, out, dq, dk, dv);
  else run(p);

  write_values(out);
  write_values(lse);
  write_values(dq);
  write_values(dk);
  write_values(dv);
  if (c.has_sinks) {  // as attention.cpp: the rows' shares summed per head
    std::vector<float> dsinks(size_t(c.heads_q), 0.0f);
    for (size_t row = 0; row < dsink_rows.size(); ++row) dsinks[(row / size_t(p.lse_rows)) % size_t(c.heads_q)] += dsink_rows[row];
    write_values(dsinks);
  }
  return 0;
}
