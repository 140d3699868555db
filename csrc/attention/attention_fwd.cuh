// Attention forward on tensor cores (fp16 / bf16 inputs, fp32 accumulation), FlashAttention-2 style.
//
// One block of 4 warps per BLOCK_M = 64 query rows of one (batch, head); warp w owns rows 16w..16w+15.
// The block walks the key blocks of BLOCK_N keys with the online softmax in base 2 (LOG2E folded into
// the scale, exp2f): running max m, running sum l (of P before dropout), accumulator O rescaled by
// exp2(m_old - m_new) when the max grows; at the end O / l and lse = (m + log2 l) * ln 2. S lives in
// registers only (the (Nq, Nk) matrix is never stored); P is rounded to the input dtype and fed back
// as the A operand of P V straight from the S accumulators.
//
// Pipeline (cp.async, one K and one V buffer): V_j is fetched while S_j = Q K_j^T and the softmax run,
// K_{j+1} while O += P_j V_j runs.
//
// Masking: a key is visible per attn::visible (bounds, band, padding mask); the invisible scores are
// -inf, the visible ones attn::score (scale, softcap, ALiBi). The key loop covers only the tiles the
// band lets the block see (key_begin .. key_end). A row with no visible key so far keeps m = -inf and
// is exponentiated against 0 instead, so exp2 never sees -inf - (-inf); at the end l = 0 gives O = 0
// and lse = -inf. A sink starts every row at m = sink, l = 1 (on one thread of the quad).
#pragma once

#include "attention/attention_common.cuh"

namespace fastattn {
namespace attn {

template <typename T, int HD>
__global__ void __launch_bounds__(Config<HD>::kFwdWarps * 32) attn_fwd_kernel(const AttnParams p) {
  constexpr int BM = Config<HD>::kFwdBlockM, BN = Config<HD>::kFwdBlockN, NT = Config<HD>::kFwdWarps * 32;
  extern __shared__ __align__(16) unsigned char smem[];  // FwdShared<T, HD>::kBytes
  const auto& [qs, ks, vs] = FwdShared<T, HD>(smem);

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;
  const auto& [idx, h_kv, start_m] = QueryBlock(p, BM);
  const Sequence sq(p, idx.b);
  if (start_m >= sq.seq_q) return;  // a packed sequence shorter than the longest: the whole block leaves

  const auto& [q_head, k_head, v_head] = FwdHeads<T>(p, sq, idx.b, idx.h, h_kv);
  const float slope = alibi_slope_log2(p, idx.b, idx.h);
  const int begin_n = key_begin(p, sq, start_m, BN), end_n = key_end(p, sq, start_m, BM);
  const bool dropout = p.dropout_p > 0.0f;

  load_tile(qs, q_head, p.q_stride_n, start_m, sq.seq_q, p.head_dim, p.vec, tid, NT);
  if (begin_n < end_n) load_tile(ks, k_head, p.k_stride_n, begin_n, sq.seq_k, p.head_dim, p.vec, tid, NT);
  mma::cp_async_commit();

  float acc_o[HD / 8][4];
  mma::zero(acc_o);
  const float sink = p.sinks != nullptr ? p.sinks[idx.h] * kLog2e : -INFINITY;
  float m_i[2] = {sink, sink};  // running max of the base-2 scores of rows g and g + 8
  const float l_0 = p.sinks != nullptr && t == 0 ? 1.0f : 0.0f;  // the sink's exp2(sink - m), counted once a quad
  float l_i[2] = {l_0, l_0};    // this thread's part of the running sum
  const int rows[2] = {start_m + warp * 16 + g, start_m + warp * 16 + g + 8};

  for (int start_n = begin_n; start_n < end_n; start_n += BN) {
    mma::cp_async_wait<0>();  // K_j (and Q) have landed
    __syncthreads();          // ... for every thread, and every warp is done with V_{j-1}
    load_tile(vs, v_head, p.v_stride_n, start_n, sq.seq_k, p.head_dim, p.vec, tid, NT);
    mma::cp_async_commit();

    float acc_s[BN / 8][4];
    mma::zero(acc_s);
    mma::gemm_nt<T, HD, BN>(acc_s, qs, warp * 16, ks, 0, lane);

    // Scores in base 2, invisible ones -inf; the row max over the block (a quad shares a row).
    float row_max[2] = {-INFINITY, -INFINITY};
    for_each_c<BN>(rows, start_n, t, [&](int n, int e, int row, int col) {
      const float s = visible(p, sq, row, col) ? score(p, sq, slope, acc_s[n][e], row, col) : -INFINITY;
      acc_s[n][e] = s;
      row_max[e / 2] = fmaxf(row_max[e / 2], s);
    });
    float alpha[2], m_safe[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      row_max[r] = fmaxf(row_max[r], __shfl_xor_sync(kFullMask, row_max[r], 1));
      row_max[r] = fmaxf(row_max[r], __shfl_xor_sync(kFullMask, row_max[r], 2));
      const float m_new = fmaxf(m_i[r], row_max[r]);
      m_safe[r] = m_new == -INFINITY ? 0.0f : m_new;  // rows with no visible key yet
      alpha[r] = exp2f(m_i[r] - m_safe[r]);
      m_i[r] = m_new;
      l_i[r] *= alpha[r];
    }
    for_each_c<BN>(rows, start_n, t, [&](int n, int e, int row, int col) {
      float pr = exp2f(acc_s[n][e] - m_safe[e / 2]);  // 0 for invisible keys
      l_i[e / 2] += pr;
      if (dropout && !dropout_keep(p.seed, uint32_t(idx.bh), row, col, p.dropout_p)) pr = 0.0f;
      acc_s[n][e] = pr;
    });
#pragma unroll
    for (int n = 0; n < HD / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_o[n][e] *= alpha[e / 2];
    uint32_t pf[BN / 16][4];
    mma::c_to_a<T, BN>(pf, acc_s);

    mma::cp_async_wait<0>();  // V_j has landed
    __syncthreads();          // ... for every thread, and every warp is done with K_j
    if (start_n + BN < end_n) load_tile(ks, k_head, p.k_stride_n, start_n + BN, sq.seq_k, p.head_dim, p.vec, tid, NT);
    mma::cp_async_commit();
    mma::gemm_rn<T, BN, HD>(acc_o, pf, vs, 0, 0, lane);
  }
  mma::cp_async_wait<0>();  // nothing may be in flight at exit (Q when no key block is visible)

  // O = acc / l (times 1 / (1 - p) with dropout); rows that saw no key: O = 0, lse = -inf (or the sink).
  T* o_head = static_cast<T*>(p.out) + idx.b * p.o_stride_b + idx.h * p.o_stride_h + sq.first_q * p.o_stride_n;
  float* lse_row0 = p.lse + lse_head(p, sq, idx.b, idx.h);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float l = l_i[r];
    l += __shfl_xor_sync(kFullMask, l, 1);
    l += __shfl_xor_sync(kFullMask, l, 2);
    const bool no_key = l == 0.0f;
    const float inv = no_key ? 0.0f : (dropout ? p.keep_scale : 1.0f) / l;
    const int row = rows[r];
    if (row < sq.seq_q) {
      T* o_row = o_head + int64_t(row) * p.o_stride_n;
#pragma unroll
      for (int n = 0; n < HD / 8; ++n)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int col = n * 8 + 2 * t + e;
          if (col < p.head_dim) o_row[col] = from_float<T>(acc_o[n][2 * r + e] * inv);
        }
      if (t == 0) lse_row0[row] = no_key ? -INFINITY : (m_i[r] + log2f(l)) * kLn2;
    }
  }
}

}  // namespace attn
}  // namespace fastattn
