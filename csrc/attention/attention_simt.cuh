// Attention for float32 inputs: the same algorithm as the tensor-core kernels (online softmax forward,
// recomputing backward with separate dK/dV and dQ kernels, same masks, same dropout stream), with
// every product an fp32 FMA on the CUDA cores, so fp32 inputs get fp32 accuracy (never tf32).
//
// Layout: 4 warps a block; within a warp, lane j owns key j of a 32-key tile when computing scores
// (dot products over the head dim read shared-memory rows padded by one float, conflict-free), and
// head-dim columns lane + 32c (c < DC) when accumulating O / dQ / dK / dV. Tiles are plain
// (synchronous) loads; the head dim is bucketed to HD = 32 * DC and zero-padded.
#pragma once

#include "attention/attention_common.cuh"

namespace fastattn {
namespace attn {
namespace simt {

// ptxas -v (nvcc 13.0; python bench/static_resources.py): 4 warps a block; registers, sm_80 / sm_90, and
// the warps per SM they allow (shared memory holds these kernels to 1-2 blocks at HD = 256):
//   forward 128-168 regs, 4-12 warps; dK/dV 96-168 regs, 4-20 warps; dQ 162-190 regs, 4-12 warps.
// ptxas keeps the backward kernels at 128 or 168 registers on sm_80 and spills 8-40 bytes a thread for
// one block more per SM (ACCEPTED_SPILLS in bench/static_resources.py says where and how to change it).
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kTile = 32;             // keys (forward, dQ) or queries (dK/dV) per tile: one per lane
constexpr int kFwdRowsPerWarp = 8;    // forward / dQ: query rows per warp (32 per block)
constexpr int kKvRowsPerWarp = 4;     // dK/dV: keys per warp (16 per block)

// Dynamic shared memory of each kernel: its arrays one after the other, which the kernel takes apart
// (const auto& [qs, ks, vs, ps] = FwdSmem<DC>(smem_f32)), and their size in bytes (up to 132.25 KiB at
// HD = 256: opted in by the launcher). The rows a lane reads along the head dim, its own key or query,
// are padded by one float (HD + 1: conflict-free). FwdSmem's R is the query rows per warp: the split-KV
// decode kernel has the forward's layout with R = 4.
template <int DC, int R = kFwdRowsPerWarp>
struct FwdSmem {
  static constexpr int HD = 32 * DC, BM = kWarps * R;
  static constexpr size_t kBytes = sizeof(float) * (BM * HD + kTile * (HD + 1) + kTile * HD + BM * kTile);
  float* q;              // (BM, HD) the block's query rows
  float* k;              // (kTile, HD + 1)
  float* v;              // (kTile, HD)
  float (*p)[R][kTile];  // each warp's P rows
  __device__ __forceinline__ explicit FwdSmem(float* base)
      : q(base), k(q + BM * HD), v(k + kTile * (HD + 1)), p(reinterpret_cast<float (*)[R][kTile]>(v + kTile * HD)) {}
};
template <int DC>
struct DkdvSmem {
  static constexpr int HD = 32 * DC, BN = kWarps * kKvRowsPerWarp;
  static constexpr size_t kBytes = sizeof(float) * (2 * BN * HD + 2 * kTile * (HD + 1) + 2 * kTile + 2 * BN * kTile);
  float* k;                            // (BN, HD) the block's key rows
  float* v;                            // (BN, HD)
  float* q;                            // (kTile, HD + 1)
  float* dout;                         // (kTile, HD + 1)
  float* lse;                          // (kTile,) of the query tile, base 2
  float* delta;                        // (kTile,)
  float (*p)[kKvRowsPerWarp][kTile];   // each warp's P^T rows (dropped, scaled)
  float (*ds)[kKvRowsPerWarp][kTile];  // each warp's dS^T rows
  __device__ __forceinline__ explicit DkdvSmem(float* base)
      : k(base),
        v(k + BN * HD),
        q(v + BN * HD),
        dout(q + kTile * (HD + 1)),
        lse(dout + kTile * (HD + 1)),
        delta(lse + kTile),
        p(reinterpret_cast<float (*)[kKvRowsPerWarp][kTile]>(delta + kTile)),
        ds(p + kWarps) {}
};
template <int DC>
struct DqSmem {
  static constexpr int HD = 32 * DC, BM = kWarps * kFwdRowsPerWarp;
  static constexpr size_t kBytes = sizeof(float) * (2 * BM * HD + 2 * kTile * (HD + 1) + BM * kTile);
  float* q;                             // (BM, HD) the block's query rows
  float* dout;                          // (BM, HD)
  float* k;                             // (kTile, HD + 1)
  float* v;                             // (kTile, HD + 1)
  float (*ds)[kFwdRowsPerWarp][kTile];  // each warp's dS rows
  __device__ __forceinline__ explicit DqSmem(float* base)
      : q(base),
        dout(q + BM * HD),
        k(dout + BM * HD),
        v(k + kTile * (HD + 1)),
        ds(reinterpret_cast<float (*)[kFwdRowsPerWarp][kTile]>(v + kTile * (HD + 1))) {}
};

// rows [row0, row0 + ROWS) x cols [0, HD) of a (rows, D) float matrix into shared memory with row
// stride `ld`; 0 outside.
template <int ROWS, int HD>
__device__ __forceinline__ void load_rows_f32(float* dst, int ld, const float* base, int64_t stride, int row0,
                                              int nrows, int dim) {
  for (int c = threadIdx.x; c < ROWS * HD; c += kThreads) {
    const int r = c / HD, col = c % HD;
    const int row = row0 + r;
    dst[r * ld + col] = row < nrows && col < dim ? base[int64_t(row) * stride + col] : 0.0f;
  }
}

// ----------------------------------------------------------------------------------------- forward
template <int DC>
__global__ void __launch_bounds__(kThreads) attn_fwd_simt_kernel(const AttnParams p) {
  constexpr int HD = 32 * DC, BM = kWarps * kFwdRowsPerWarp, BN = kTile, R = kFwdRowsPerWarp;
  constexpr int LDQ = HD, LDK = HD + 1, LDV = HD;
  extern __shared__ float smem_f32[];  // FwdSmem<DC>::kBytes
  const auto& [qs, ks, vs, ps] = FwdSmem<DC>(smem_f32);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const auto& [idx, h_kv, start_m] = QueryBlock(p, BM);
  const Sequence sq(p, idx.b);
  if (start_m >= sq.seq_q) return;  // a packed sequence shorter than the longest: the whole block leaves
  const auto& [q_head, k_head, v_head] = FwdHeads<float>(p, sq, idx.b, idx.h, h_kv);
  const float slope = alibi_slope_log2(p, idx.b, idx.h);
  const bool dropout = p.dropout_p > 0.0f;
  const int begin_n = key_begin(p, sq, start_m, BN), end_n = key_end(p, sq, start_m, BM);

  load_rows_f32<BM, HD>(qs, LDQ, q_head, p.q_stride_n, start_m, sq.seq_q, p.head_dim);
  float acc[R][DC] = {};
  float m_i[R], l_i[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {  // a sink starts the row: m = sink, l = exp2(sink - m) = 1
    m_i[r] = p.sinks != nullptr ? p.sinks[idx.h] * kLog2e : -INFINITY;
    l_i[r] = p.sinks != nullptr ? 1.0f : 0.0f;
  }
  const int row0 = start_m + warp * R;

  for (int start_n = begin_n; start_n < end_n; start_n += BN) {
    __syncthreads();  // every warp is done with the previous K, V (and Q is loaded)
    load_rows_f32<BN, HD>(ks, LDK, k_head, p.k_stride_n, start_n, sq.seq_k, p.head_dim);
    load_rows_f32<BN, HD>(vs, LDV, v_head, p.v_stride_n, start_n, sq.seq_k, p.head_dim);
    __syncthreads();

    float s[R] = {};
    dot_rows(s, qs, LDQ, ks, LDK, warp, lane, p);
    const int col = start_n + lane;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const float sr = visible(p, sq, row0 + r, col) ? score(p, sq, slope, s[r], row0 + r, col) : -INFINITY;
      float alpha;
      float pr = online_softmax_step(sr, m_i[r], l_i[r], alpha);
      if (dropout && !dropout_keep(p.seed, uint32_t(idx.bh), row0 + r, col, p.dropout_p)) pr = 0.0f;
      ps[warp][r][lane] = pr;
#pragma unroll
      for (int c = 0; c < DC; ++c) acc[r][c] *= alpha;
    }
    accumulate_pv<R, DC, BN>(acc, ps[warp], vs, LDV, lane);
  }

  float* o_head = static_cast<float*>(p.out) + idx.b * p.o_stride_b + idx.h * p.o_stride_h + sq.first_q * p.o_stride_n;
  float* lse_row0 = p.lse + lse_head(p, sq, idx.b, idx.h);
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int row = row0 + r;
    if (row >= sq.seq_q) continue;
    finish_row(acc[r], m_i[r], l_i[r], dropout ? p.keep_scale : 1.0f, o_head + int64_t(row) * p.o_stride_n,
               lse_row0 + row, lane, p);
  }
}

// -------------------------------------------------------------------------------------- dK, dV
template <int DC>
__global__ void __launch_bounds__(kThreads) attn_bwd_dkdv_simt_kernel(const AttnParams p) {
  constexpr int HD = 32 * DC, BN = kWarps * kKvRowsPerWarp, BM = kTile, R = kKvRowsPerWarp;
  constexpr int LD = HD + 1;
  extern __shared__ float smem_f32[];  // DkdvSmem<DC>::kBytes
  const auto& [ks, vs, qs, dos, lse_s, delta_s, ps, dss] = DkdvSmem<DC>(smem_f32);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const auto& [idx, start_n] = KeyBlock(p, BN);  // idx.h: the key/value head
  const Sequence sq(p, idx.b);
  if (start_n >= sq.seq_k) return;  // a packed sequence shorter than the longest: the whole block leaves
  const auto& [k_head, v_head] = KvHeads<float>(p, sq, idx.b, idx.h);
  const bool dropout = p.dropout_p > 0.0f;

  load_rows_f32<BN, HD>(ks, HD, k_head, p.k_stride_n, start_n, sq.seq_k, p.head_dim);
  load_rows_f32<BN, HD>(vs, HD, v_head, p.v_stride_n, start_n, sq.seq_k, p.head_dim);
  float acc_dk[R][DC] = {}, acc_dv[R][DC] = {};
  const int key0 = start_n + warp * R;
  const int begin_m = query_begin(p, sq, start_n, BM), end_m = query_end(p, sq, start_n, BN);

  for (int gi = 0; gi < p.group; ++gi) {
    const auto& [bh, q_head, do_head, rows_h, slope] = QueryHead<float>(p, sq, idx.b, idx.h * p.group + gi);
    for (int start_m = begin_m; start_m < end_m; start_m += BM) {
      __syncthreads();
      load_rows_f32<BM, HD>(qs, LD, q_head, p.q_stride_n, start_m, sq.seq_q, p.head_dim);
      load_rows_f32<BM, HD>(dos, LD, do_head, p.do_stride_n, start_m, sq.seq_q, p.head_dim);
      load_rows(lse_s, p.lse + rows_h, start_m, BM, sq.seq_q, kLog2e, threadIdx.x, kThreads);
      load_rows(delta_s, p.delta + rows_h, start_m, BM, sq.seq_q, 1.0f, threadIdx.x, kThreads);
      __syncthreads();

      const int query = start_m + lane;  // the lane's; rows r: keys key0 + r
      float s[R] = {}, dp[R] = {};
      dot_rows(s, dp, ks, vs, HD, qs, dos, LD, warp, lane, p);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const bool vis = visible(p, sq, query, key0 + r);
        const float pr = vis ? exp2f(score(p, sq, slope, s[r], query, key0 + r) - lse_s[lane]) : 0.0f;
        float dpr = dp[r], pd = pr;
        if (dropout && vis) {
          const bool keep = dropout_keep(p.seed, uint32_t(bh), query, key0 + r, p.dropout_p);
          dpr = keep ? dpr * p.keep_scale : 0.0f;
          pd = keep ? pd * p.keep_scale : 0.0f;
        }
        ps[warp][r][lane] = pd;
        // a select: see attention_bwd.cuh
        dss[warp][r][lane] = vis ? pr * (dpr - delta_s[lane]) * softcap_grad(p, s[r]) : 0.0f;
      }
      __syncwarp();
      for (int j = 0; j < BM; ++j) {
#pragma unroll
        for (int c = 0; c < DC; ++c) {
          const float doj = dos[j * LD + lane + 32 * c], qj = qs[j * LD + lane + 32 * c];
#pragma unroll
          for (int r = 0; r < R; ++r) {
            acc_dv[r][c] = fmaf(ps[warp][r][j], doj, acc_dv[r][c]);
            acc_dk[r][c] = fmaf(dss[warp][r][j], qj, acc_dk[r][c]);
          }
        }
      }
      __syncwarp();
    }
  }

  const int64_t kv_head = idx.b * p.dkv_stride_b + idx.h * p.dkv_stride_h;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int key = key0 + r;
    if (key >= sq.seq_k) continue;
    const int64_t row = kv_head + (sq.first_k + key) * p.dkv_stride_n;
#pragma unroll
    for (int c = 0; c < DC; ++c) {
      const int d = lane + 32 * c;
      if (d >= p.head_dim) continue;
      static_cast<float*>(p.dk)[row + d] = acc_dk[r][c] * p.scale;
      static_cast<float*>(p.dv)[row + d] = acc_dv[r][c];
    }
  }
}

// ------------------------------------------------------------------------------------------- dQ
template <int DC>
__global__ void __launch_bounds__(kThreads) attn_bwd_dq_simt_kernel(const AttnParams p) {
  constexpr int HD = 32 * DC, BM = kWarps * kFwdRowsPerWarp, BN = kTile, R = kFwdRowsPerWarp;
  constexpr int LD = HD + 1;
  extern __shared__ float smem_f32[];  // DqSmem<DC>::kBytes
  const auto& [qs, dos, ks, vs, dss] = DqSmem<DC>(smem_f32);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const auto& [idx, h_kv, start_m] = QueryBlock(p, BM);
  const Sequence sq(p, idx.b);
  if (start_m >= sq.seq_q) return;  // a packed sequence shorter than the longest: the whole block leaves
  const auto& [q_head, do_head, k_head, v_head, slope] = DqHeads<float>(p, sq, idx.b, idx.h, h_kv);
  const bool dropout = p.dropout_p > 0.0f;
  const int begin_n = key_begin(p, sq, start_m, BN), end_n = key_end(p, sq, start_m, BM);

  load_rows_f32<BM, HD>(qs, HD, q_head, p.q_stride_n, start_m, sq.seq_q, p.head_dim);
  load_rows_f32<BM, HD>(dos, HD, do_head, p.do_stride_n, start_m, sq.seq_q, p.head_dim);
  const int row0 = start_m + warp * R;
  const int64_t rows_h = lse_head(p, sq, idx.b, idx.h);
  float lse2[R], delta[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const bool in = row0 + r < sq.seq_q;
    lse2[r] = in ? p.lse[rows_h + row0 + r] * kLog2e : 0.0f;
    delta[r] = in ? p.delta[rows_h + row0 + r] : 0.0f;
  }
  float acc[R][DC] = {};

  for (int start_n = begin_n; start_n < end_n; start_n += BN) {
    __syncthreads();
    load_rows_f32<BN, HD>(ks, LD, k_head, p.k_stride_n, start_n, sq.seq_k, p.head_dim);
    load_rows_f32<BN, HD>(vs, LD, v_head, p.v_stride_n, start_n, sq.seq_k, p.head_dim);
    __syncthreads();

    float s[R] = {}, dp[R] = {};
    dot_rows(s, dp, qs, dos, HD, ks, vs, LD, warp, lane, p);
    const int col = start_n + lane;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const bool vis = visible(p, sq, row0 + r, col);
      const float pr = vis ? exp2f(score(p, sq, slope, s[r], row0 + r, col) - lse2[r]) : 0.0f;
      float dpr = dp[r];
      if (dropout && vis)
        dpr = dropout_keep(p.seed, uint32_t(idx.bh), row0 + r, col, p.dropout_p) ? dpr * p.keep_scale : 0.0f;
      dss[warp][r][lane] = vis ? pr * (dpr - delta[r]) * softcap_grad(p, s[r]) : 0.0f;
    }
    accumulate_pv<R, DC, BN>(acc, dss[warp], ks, LD, lane);  // dQ += dS K
  }

#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int row = row0 + r;
    if (row >= sq.seq_q) continue;
    float* dq_row = static_cast<float*>(p.dq) + idx.b * p.dq_stride_b + idx.h * p.dq_stride_h +
                    (sq.first_q + row) * p.dq_stride_n;
#pragma unroll
    for (int c = 0; c < DC; ++c) {
      const int d = lane + 32 * c;
      if (d < p.head_dim) dq_row[d] = acc[r][c] * p.scale;
    }
  }
}

}  // namespace simt
}  // namespace attn
}  // namespace fastattn
