// Attention backward on tensor cores (fp16 / bf16 inputs, fp32 accumulation), FlashAttention-2's
// recomputation: P is rebuilt from the forward's lse, never stored.
//
//   delta_i = sum_d dO_id O_id - dlse_i                 (attn_bwd_preprocess_kernel, attention_preprocess.cuh)
//   dV  = (P * Z / (1 - p))^T dO
//   dP  = (dO V^T) * Z / (1 - p)
//   dS  = P * (dP - delta) * (1 - tanh^2 with softcap)
//   dQ  = scale * dS K,   dK = scale * dS^T Q
//   dsink_h = -sum_i exp(sink_h - lse_i) delta_i         (the preprocess, per row; summed by the host)
//
// attn_bwd_dkdv_kernel: one block per 64 keys of one (batch, key/value head); it loops over the query
// blocks of every query head of its group (GQA/MQA never copies K/V) that the band lets see its keys
// (query_begin .. query_end), and writes dK, dV once.
// attn_bwd_dq_kernel: one block per 64 queries, looping over the key blocks it can see, writes dQ once.
// No atomics: every gradient is a fixed-order sum, bitwise reproducible run to run (so
// deterministic=True costs nothing extra here; the price is that S and dP are computed twice, once in
// each kernel, 7 matrix products instead of FlashAttention-2's 5).
//
// Warp layout: warp w = w_r + 4 * w_d owns rows 16 w_r..16 w_r + 15 of the block (keys in dK/dV, queries
// in dQ) and head-dim slice w_d of the accumulators; with HD = 256 two warp groups (DSPLIT = 2) each hold
// half of dK/dV (dQ), and both compute the S and dP rows they need.
#pragma once

#include "attention/attention_common.cuh"

namespace fastattn {
namespace attn {

// -------------------------------------------------------------------------------------- dK, dV
template <typename T, int HD>
__global__ void __launch_bounds__(Config<HD>::kBwdWarps * 32) attn_bwd_dkdv_kernel(const AttnParams p) {
  using C = Config<HD>;
  constexpr int BN = C::kKvBlockN, BM = C::kKvBlockM, NT = C::kBwdWarps * 32, HS = HD / C::kDSplit;
  extern __shared__ __align__(16) unsigned char smem[];  // DkdvShared<T, HD>::kBytes
  const auto& [ks, vs, qs, dos, lse_s, delta_s] = DkdvShared<T, HD>(smem);

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int w_r = warp % 4, w_d = warp / 4;
  const int g = lane / 4, t = lane % 4;
  const auto& [idx, start_n] = KeyBlock(p, BN);  // idx.h: the key/value head
  const Sequence sq(p, idx.b);
  if (start_n >= sq.seq_k) return;  // a packed sequence shorter than the longest: the whole block leaves
  const auto& [k_head, v_head] = KvHeads<T>(p, sq, idx.b, idx.h);
  const bool dropout = p.dropout_p > 0.0f;

  load_tile(ks, k_head, p.k_stride_n, start_n, sq.seq_k, p.head_dim, p.vec, tid, NT);
  load_tile(vs, v_head, p.v_stride_n, start_n, sq.seq_k, p.head_dim, p.vec, tid, NT);
  mma::cp_async_commit();

  float acc_dk[HS / 8][4], acc_dv[HS / 8][4];
  mma::zero(acc_dk);
  mma::zero(acc_dv);
  const int keys[2] = {start_n + w_r * 16 + g, start_n + w_r * 16 + g + 8};  // this thread's rows of S^T
  const int begin_m = query_begin(p, sq, start_n, BM), end_m = query_end(p, sq, start_n, BN);

  for (int gi = 0; gi < p.group; ++gi) {
    const auto& [bh, q_head, do_head, rows_h, slope] = QueryHead<T>(p, sq, idx.b, idx.h * p.group + gi);
    for (int start_m = begin_m; start_m < end_m; start_m += BM) {
      __syncthreads();  // every warp is done with the previous Q, dO, lse, delta
      load_tile(qs, q_head, p.q_stride_n, start_m, sq.seq_q, p.head_dim, p.vec, tid, NT);
      load_tile(dos, do_head, p.do_stride_n, start_m, sq.seq_q, p.head_dim, p.vec, tid, NT);
      mma::cp_async_commit();
      load_rows(lse_s, p.lse + rows_h, start_m, BM, sq.seq_q, kLog2e, tid, NT);
      load_rows(delta_s, p.delta + rows_h, start_m, BM, sq.seq_q, 1.0f, tid, NT);
      mma::cp_async_wait<0>();
      __syncthreads();

      // S^T = K Q^T and dP^T = V dO^T for this warp's 16 keys x BM queries.
      float acc_s[BM / 8][4], acc_dp[BM / 8][4];
      mma::zero(acc_s);
      mma::zero(acc_dp);
      mma::gemm_nt<T, HD, BM>(acc_s, ks, w_r * 16, qs, 0, lane);
      mma::gemm_nt<T, HD, BM>(acc_dp, vs, w_r * 16, dos, 0, lane);

      // P^T (and its dropped version for dV), dS^T = P^T * (dP^T - delta).
      for_each_c<BM>(keys, 0, t, [&](int n, int e, int key, int qi) {  // qi: the query within the block
        const bool vis = visible(p, sq, start_m + qi, key);
        // lse = -inf only for rows that see no key, which are invisible here
        const float pr = vis ? exp2f(score(p, sq, slope, acc_s[n][e], start_m + qi, key) - lse_s[qi]) : 0.0f;
        float dp = acc_dp[n][e], pd = pr;
        if (dropout && vis) {
          const bool keep = dropout_keep(p.seed, uint32_t(bh), start_m + qi, key, p.dropout_p);
          dp = keep ? dp * p.keep_scale : 0.0f;
          pd = keep ? pd * p.keep_scale : 0.0f;
        }
        // a select, not pr * (...): a NaN/inf dO or dlse on a row that sees no key stays out of dK
        acc_dp[n][e] = vis ? pr * (dp - delta_s[qi]) * softcap_grad(p, acc_s[n][e]) : 0.0f;  // dS^T
        acc_s[n][e] = pd;  // P^T * Z / (1 - p), for dV
      });
      uint32_t pf[BM / 16][4], dsf[BM / 16][4];
      mma::c_to_a<T, BM>(pf, acc_s);
      mma::c_to_a<T, BM>(dsf, acc_dp);
      mma::gemm_rn<T, BM, HS>(acc_dv, pf, dos, 0, w_d * HS, lane);  // dV += P^T dO
      mma::gemm_rn<T, BM, HS>(acc_dk, dsf, qs, 0, w_d * HS, lane);  // dK += dS^T Q
    }
  }
  mma::cp_async_wait<0>();  // nothing may be in flight at exit (K, V when no query block is visible)

  // dK = scale * acc_dk, dV = acc_dv.
  const int64_t kv_head = idx.b * p.dkv_stride_b + idx.h * p.dkv_stride_h;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int key = keys[r];
    if (key >= sq.seq_k) continue;
    T* dk_row = static_cast<T*>(p.dk) + kv_head + (sq.first_k + key) * p.dkv_stride_n;
    T* dv_row = static_cast<T*>(p.dv) + kv_head + (sq.first_k + key) * p.dkv_stride_n;
#pragma unroll
    for (int n = 0; n < HS / 8; ++n)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int col = w_d * HS + n * 8 + 2 * t + e;
        if (col < p.head_dim) {
          dk_row[col] = from_float<T>(acc_dk[n][2 * r + e] * p.scale);
          dv_row[col] = from_float<T>(acc_dv[n][2 * r + e]);
        }
      }
  }
}

// ------------------------------------------------------------------------------------------- dQ
template <typename T, int HD>
__global__ void __launch_bounds__(Config<HD>::kBwdWarps * 32) attn_bwd_dq_kernel(const AttnParams p) {
  using C = Config<HD>;
  constexpr int BM = C::kQBlockM, BN = C::kQBlockN, NT = C::kBwdWarps * 32, HS = HD / C::kDSplit;
  extern __shared__ __align__(16) unsigned char smem[];  // DqShared<T, HD>::kBytes
  const auto& [qs, dos, ks, vs] = DqShared<T, HD>(smem);

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int w_r = warp % 4, w_d = warp / 4;
  const int g = lane / 4, t = lane % 4;
  const auto& [idx, h_kv, start_m] = QueryBlock(p, BM);
  const Sequence sq(p, idx.b);
  if (start_m >= sq.seq_q) return;  // a packed sequence shorter than the longest: the whole block leaves
  const auto& [q_head, do_head, k_head, v_head, slope] = DqHeads<T>(p, sq, idx.b, idx.h, h_kv);
  const bool dropout = p.dropout_p > 0.0f;

  load_tile(qs, q_head, p.q_stride_n, start_m, sq.seq_q, p.head_dim, p.vec, tid, NT);
  load_tile(dos, do_head, p.do_stride_n, start_m, sq.seq_q, p.head_dim, p.vec, tid, NT);
  mma::cp_async_commit();

  const int rows[2] = {start_m + w_r * 16 + g, start_m + w_r * 16 + g + 8};
  const int64_t rows_h = lse_head(p, sq, idx.b, idx.h);
  float lse2[2], delta[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const bool in = rows[r] < sq.seq_q;
    lse2[r] = in ? p.lse[rows_h + rows[r]] * kLog2e : 0.0f;
    delta[r] = in ? p.delta[rows_h + rows[r]] : 0.0f;
  }
  float acc_dq[HS / 8][4];
  mma::zero(acc_dq);
  const int begin_n = key_begin(p, sq, start_m, BN), end_n = key_end(p, sq, start_m, BM);

  for (int start_n = begin_n; start_n < end_n; start_n += BN) {
    __syncthreads();  // every warp is done with the previous K, V
    load_tile(ks, k_head, p.k_stride_n, start_n, sq.seq_k, p.head_dim, p.vec, tid, NT);
    load_tile(vs, v_head, p.v_stride_n, start_n, sq.seq_k, p.head_dim, p.vec, tid, NT);
    mma::cp_async_commit();
    mma::cp_async_wait<0>();
    __syncthreads();

    float acc_s[BN / 8][4], acc_dp[BN / 8][4];
    mma::zero(acc_s);
    mma::zero(acc_dp);
    mma::gemm_nt<T, HD, BN>(acc_s, qs, w_r * 16, ks, 0, lane);    // S = Q K^T
    mma::gemm_nt<T, HD, BN>(acc_dp, dos, w_r * 16, vs, 0, lane);  // dP = dO V^T
    for_each_c<BN>(rows, start_n, t, [&](int n, int e, int row, int col) {
      const bool vis = visible(p, sq, row, col);
      const float pr = vis ? exp2f(score(p, sq, slope, acc_s[n][e], row, col) - lse2[e / 2]) : 0.0f;
      float dp = acc_dp[n][e];
      if (dropout && vis)
        dp = dropout_keep(p.seed, uint32_t(idx.bh), row, col, p.dropout_p) ? dp * p.keep_scale : 0.0f;
      // dS (a select: see the dK/dV kernel)
      acc_s[n][e] = vis ? pr * (dp - delta[e / 2]) * softcap_grad(p, acc_s[n][e]) : 0.0f;
    });
    uint32_t dsf[BN / 16][4];
    mma::c_to_a<T, BN>(dsf, acc_s);
    mma::gemm_rn<T, BN, HS>(acc_dq, dsf, ks, 0, w_d * HS, lane);  // dQ += dS K
  }
  mma::cp_async_wait<0>();

  // dQ = scale * acc_dq.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = rows[r];
    if (row >= sq.seq_q) continue;
    T* dq_row = static_cast<T*>(p.dq) + idx.b * p.dq_stride_b + idx.h * p.dq_stride_h + (sq.first_q + row) * p.dq_stride_n;
#pragma unroll
    for (int n = 0; n < HS / 8; ++n)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int col = w_d * HS + n * 8 + 2 * t + e;
        if (col < p.head_dim) dq_row[col] = from_float<T>(acc_dq[n][2 * r + e] * p.scale);
      }
  }
}

}  // namespace attn
}  // namespace fastattn
