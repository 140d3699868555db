// Pieces shared by the attention kernels: visibility, the dropout stream, tile loads, tile sizes.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "attention/attention_params.h"
#include "attention/mma.cuh"
#include "common/numeric.cuh"
#include "common/philox.cuh"
#include "common/reduce.cuh"

namespace fastattn {
namespace attn {

constexpr float kLog2e = 1.4426950408889634f;  // 1 / ln 2
constexpr float kLn2 = 0.6931471805599453f;    // ln 2

// Tile sizes of the tensor-core kernels for a head-dim bucket HD (a multiple of 16; D <= HD is
// zero-padded in shared memory). One warp owns 16 rows of a tile. Register budget per thread
// (fp32 accumulators): forward O is HD/2 and S is BN/2; backward dK + dV are HD/DSPLIT and S^T, dP^T are
// BM_BWD/2 each, so HD > 128 (192, 256) splits the head dim over two warp groups (DSPLIT = 2) to stay < 255
// registers without spilling.
//
// What ptxas -v reports of them (nvcc 13.0, fp16 and bf16 alike, sm_80 / sm_90 where they differ;
// python bench/static_resources.py, bench/results/static/), until GPU timings replace it: registers per
// thread, dynamic shared memory per block, and the warps per SM the registers allow (the limit
// everywhere; at HD = 256 the backward's shared memory allows no more either), no spill anywhere:
//   HD    forward                    dK/dV                       dQ
//   32    120/128 regs  15.0 KiB 16  137/140 regs 15.25 KiB 12   96 regs      15.25 KiB 20
//   64    130 regs      27.0 KiB 12  174 regs     27.25 KiB  8   124/122 regs 27.25 KiB 16
//   96    161/164 regs  39.0 KiB 12  234 regs     39.25 KiB  8   128 regs     39.25 KiB 16
//   128   164/168 regs  51.0 KiB 12  253 regs     51.25 KiB  8   160/164 regs 51.25 KiB 12
//   192   166/164 regs  50.0 KiB 12  232 regs     75.25 KiB  8   128 regs     75.25 KiB 16
//   256   238 regs      66.0 KiB  8  250/248 regs 99.25 KiB  8   174/164 regs 99.25 KiB  8
// (the backward's shared memory is the larger of its two kernels', as attention_shared_memory reports it;
// at HD = 256 it is more than the 99 KiB of sm_86/sm_89, where ops/attention.py sends such calls elsewhere).
//
// So 8 to 20 warps per SM (forward 8-16, dK/dV 8-12, dQ 8-20), bound by registers: each warp keeps its
// rows' accumulators (O; dK and dV; dQ) in registers for the whole key or query loop, as in
// FlashAttention-2, and the latency of the next tile's loads is hidden by the cp.async double buffer
// (K_{j+1} lands while P_j V_j runs) rather than by more warps. The forward's 64-row block of 4 warps
// x 16 rows (FlashAttention-2: 128 rows, 4 warps x 32 rows at HD <= 128) is what mma.sync m16n8k16 gives
// a warp with one row fragment: 32 rows a warp would double O and S, to HD + BN = 192 accumulator
// registers at HD = 128, past what 255 registers leave for the Q fragments, P and addresses, so it
// would spill or need a different register plan. The cost of the smaller block is that K and V are read
// once per 64 query rows instead of 128 (twice the L2 traffic); whether that or the occupancy weighs
// more is for GPU timings to say.
template <int HD>
struct Config {
  static constexpr int kFwdWarps = 4;
  static constexpr int kFwdBlockM = 16 * kFwdWarps;            // 64 queries per block
  static constexpr int kFwdBlockN = HD > 128 ? 32 : 64;        // keys per iteration
  static constexpr int kDSplit = HD > 128 ? 2 : 1;             // backward: head-dim slices of dK/dV/dQ
  static constexpr int kBwdWarps = 4 * kDSplit;
  static constexpr int kKvBlockN = 64;                         // dK/dV kernel: keys per block (4 x 16)
  static constexpr int kKvBlockM = 32;                         // dK/dV kernel: queries per iteration
  static constexpr int kQBlockM = 64;                          // dQ kernel: queries per block (4 x 16)
  static constexpr int kQBlockN = 32;                          // dQ kernel: keys per iteration
};

// One sequence's part of the problem: its lengths and first rows (packed sequences), its padding-mask row.
struct Sequence {
  int seq_q, seq_k;          // its lengths (padded batches: Nq, Nk)
  int64_t first_q, first_k;  // its first rows in q / out and k / v (padded batches: 0)
  const uint8_t* kpm_row;    // key_padding_mask[b], or nullptr
  __device__ __forceinline__ Sequence(const AttnParams& p, int b) {
    if (p.cu_seqlens_q != nullptr) {
      first_q = p.cu_seqlens_q[b];
      first_k = p.cu_seqlens_k[b];
      seq_q = int(p.cu_seqlens_q[b + 1] - first_q);
      seq_k = int(p.cu_seqlens_k[b + 1] - first_k);
    } else {
      first_q = first_k = 0;
      seq_q = p.seq_q;
      seq_k = p.seq_k;
    }
    kpm_row = p.kpm != nullptr ? p.kpm + b * p.kpm_stride_b : nullptr;
  }
  __device__ __forceinline__ int64_t offset() const { return int64_t(seq_k) - seq_q; }  // bottom-right corner
};

// Query i of the sequence may attend to key j (i < Nq and j < Nk are checked too).
__device__ __forceinline__ bool visible(const AttnParams& p, const Sequence& sq, int i, int j) {
  if (i >= sq.seq_q || j >= sq.seq_k) return false;
  if (p.band) {
    const int64_t diagonal = int64_t(i) + sq.offset();  // the key aligned with query i
    if (j < diagonal - p.window_left || j > diagonal + p.window_right) return false;
  }
  if (sq.kpm_row != nullptr && sq.kpm_row[int64_t(j) * p.kpm_stride_n] == 0) return false;
  return true;
}

// The ALiBi slope of (b, h) times log2(e); 0 without ALiBi.
__device__ __forceinline__ float alibi_slope_log2(const AttnParams& p, int b, int h) {
  return p.alibi != nullptr ? p.alibi[b * p.alibi_stride_b + h] * kLog2e : 0.0f;
}

// The base-2 score of query i and key j from their dot product qk: scaled, capped, ALiBi-biased.
__device__ __forceinline__ float score(const AttnParams& p, const Sequence& sq, float slope_log2, float qk, int i,
                                       int j) {
  float s = p.softcap > 0.0f ? tanhf(qk * p.softcap_in) * p.softcap_out : qk * p.scale_log2;
  if (p.alibi != nullptr) s -= slope_log2 * fabsf(float(int64_t(i) + sq.offset() - j));
  return s;
}

// d(c tanh(x / c))/dx at x = scale * qk: 1 - tanh^2 (1 without softcap).
__device__ __forceinline__ float softcap_grad(const AttnParams& p, float qk) {
  if (p.softcap <= 0.0f) return 1.0f;
  const float c = tanhf(qk * p.softcap_in);
  return 1.0f - c * c;
}

// The keys queries [start_m, start_m + block_m) can see, [key_begin, key_end), key_begin a multiple of
// block_n: row i sees j in [i + off - left, i + off + right], so the block's first row bounds the
// start and its last row the end; with a 4k window at 16k keys a block reads ~1/4 of the key tiles.
__device__ __forceinline__ int key_begin(const AttnParams& p, const Sequence& sq, int start_m, int block_n) {
  if (!p.band) return 0;
  const int64_t first = int64_t(start_m) + sq.offset() - p.window_left;
  return first <= 0 ? 0 : int(first / block_n) * block_n;
}
__device__ __forceinline__ int key_end(const AttnParams& p, const Sequence& sq, int start_m, int block_m) {
  if (!p.band) return sq.seq_k;
  const int64_t end = int64_t(start_m) + block_m + sq.offset() + p.window_right;
  return int(end < 0 ? 0 : (end < sq.seq_k ? end : sq.seq_k));
}

// The queries that can see keys [start_n, start_n + block_n), [query_begin, query_end), query_begin a
// multiple of block_m: key j is seen by rows i in [j - off - right, j - off + left].
__device__ __forceinline__ int query_begin(const AttnParams& p, const Sequence& sq, int start_n, int block_m) {
  if (!p.band) return 0;
  const int64_t first = int64_t(start_n) - sq.offset() - p.window_right;
  return first <= 0 ? 0 : int(first / block_m) * block_m;
}
__device__ __forceinline__ int query_end(const AttnParams& p, const Sequence& sq, int start_n, int block_n) {
  if (!p.band) return sq.seq_q;
  const int64_t end = int64_t(start_n) + block_n - sq.offset() + p.window_left;
  return int(end < 0 ? 0 : (end < sq.seq_q ? end : sq.seq_q));
}

// One key tile of the online softmax for a row whose keys are spread over a warp (lane j: key j),
// from the lane's base-2 score `s` (-inf if invisible): updates the running max `m` and sum `l`, sets
// `alpha`, the factor that rescales what was accumulated, and returns the lane's exp2(s - m). A row
// with no visible key so far keeps m = -inf and is exponentiated against 0, never -inf - (-inf).
__device__ __forceinline__ float online_softmax_step(float s, float& m, float& l, float& alpha) {
  const float m_new = fmaxf(m, warp_max(s));
  const float m_safe = m_new == -INFINITY ? 0.0f : m_new;
  alpha = exp2f(m - m_safe);
  const float pr = exp2f(s - m_safe);
  l = l * alpha + warp_sum(pr);
  m = m_new;
  return pr;
}

// acc[r][c] += sum_j p[r][j] v[j][lane + 32c]: a warp's R rows times a BN-key tile of V in shared
// memory (row stride ld), each lane owning head-dim columns lane + 32c. Between two __syncwarp: the
// warp's lanes wrote p.
template <int R, int DC, int BN>
__device__ __forceinline__ void accumulate_pv(float (&acc)[R][DC], const float (&p)[R][BN], const float* v, int ld,
                                              int lane) {
  __syncwarp();
  for (int j = 0; j < BN; ++j) {
#pragma unroll
    for (int c = 0; c < DC; ++c) {
      const float vj = v[j * ld + lane + 32 * c];
#pragma unroll
      for (int r = 0; r < R; ++r) acc[r][c] = fmaf(p[r][j], vj, acc[r][c]);
    }
  }
  __syncwarp();
}

// Row 0 of (b, h) in lse, delta and dlse.
__device__ __forceinline__ int64_t lse_head(const AttnParams& p, const Sequence& sq, int b, int h) {
  return b * p.lse_stride_b + h * p.lse_stride_h + sq.first_q;
}

// Z[b, h, i, j] of the dropout stream of kernels/attention.py: the first word of Philox4x32-10 keyed
// by `seed` at counter (j, i, b * Hq + h, 0), as triton's uint_to_uniform_float, kept iff >= p
// (i, j within the sequence).
__device__ __forceinline__ bool dropout_keep(uint64_t seed, uint32_t bh, int i, int j, float dropout_p) {
  const Philox4 r = philox4x32_10(seed, static_cast<uint32_t>(j), static_cast<uint32_t>(i), bh, 0u);
  return uint_to_uniform_float(r.x) >= dropout_p;
}

// Rows [row0, row0 + ROWS) x cols [0, HD) of a (rows, D) matrix (row stride `stride`, last dim
// contiguous) into a shared tile; rows >= nrows and cols >= D read as 0. With `vec` (every row starts
// 16-byte aligned) through cp.async, 16 bytes at a time (the caller commits and waits); else with
// plain loads. All `nthreads` threads of the block call it.
template <typename T, int ROWS, int HD>
__device__ __forceinline__ void load_tile(const mma::Tile<T, ROWS, HD>& tile, const T* base, int64_t stride, int row0,
                                          int nrows, int dim, bool vec, int tid, int nthreads) {
  constexpr int kChunksPerRow = HD / 8;
  for (int c = tid; c < ROWS * kChunksPerRow; c += nthreads) {
    const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
    const int row = row0 + r;
    T* dst = tile.at(r, col);
    const bool inside = row < nrows && col < dim;
    if (vec) {
      const T* src = inside ? base + int64_t(row) * stride + col : base;
      const int bytes = inside ? (dim - col < 8 ? dim - col : 8) * int(sizeof(T)) : 0;
      mma::cp_async_16(dst, src, bytes);
    } else {
      const T* src = base + int64_t(row) * stride + col;
#pragma unroll
      for (int e = 0; e < 8; ++e) dst[e] = inside && col + e < dim ? src[e] : from_float<T>(0.0f);
    }
  }
}

// Rows [row0, row0 + n) of a contiguous float vector into shared memory (0 past `nrows`).
__device__ __forceinline__ void load_rows(float* dst, const float* src, int row0, int n, int nrows, float scale,
                                          int tid, int nthreads) {
  for (int r = tid; r < n; r += nthreads) dst[r] = row0 + r < nrows ? src[row0 + r] * scale : 0.0f;
}

// Decomposes a 1-D block index into (row block, batch * head): row blocks of one head are neighbours,
// so they share K/V in L2.
struct BlockIndex {
  int block;   // row block within the head
  int64_t bh;  // b * heads + h
  int b, h;
  __device__ __forceinline__ BlockIndex(int64_t pid, int num_blocks, int heads) {
    block = int(pid % num_blocks);
    bh = pid / num_blocks;
    b = int(bh / heads);
    h = int(bh % heads);
  }
};

}  // namespace attn
}  // namespace fastattn
