// Pieces shared by the attention kernels: tile sizes and shared-memory layouts, a block's place in the grid,
// visibility, the dropout stream, tile loads, the float32 kernels' products.
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

// The dynamic shared memory of each tensor-core kernel: its tiles one after the other, and its size in
// bytes. The kernels take it apart: const auto& [qs, ks, vs] = FwdShared<T, HD>(smem).
template <typename T, int HD>
struct FwdShared {  // Q, then one K and one V buffer
  using QTile = mma::Tile<T, Config<HD>::kFwdBlockM, HD>;
  using KTile = mma::Tile<T, Config<HD>::kFwdBlockN, HD>;
  static constexpr size_t kBytes = sizeof(T) * (QTile::kElems + 2 * KTile::kElems);
  QTile q;
  KTile k, v;
  __device__ __forceinline__ explicit FwdShared(unsigned char* smem)
      : q{reinterpret_cast<T*>(smem)}, k{q.data + QTile::kElems}, v{k.data + KTile::kElems} {}
};
template <typename T, int HD>
struct DkdvShared {  // K, V, Q, dO tiles, then lse (base 2) and delta of the query block
  using KTile = mma::Tile<T, Config<HD>::kKvBlockN, HD>;
  using QTile = mma::Tile<T, Config<HD>::kKvBlockM, HD>;
  static constexpr size_t kBytes =
      sizeof(T) * (2 * KTile::kElems + 2 * QTile::kElems) + 2 * sizeof(float) * Config<HD>::kKvBlockM;
  KTile k, v;
  QTile q, dout;
  float* lse;
  float* delta;
  __device__ __forceinline__ explicit DkdvShared(unsigned char* smem)
      : k{reinterpret_cast<T*>(smem)},
        v{k.data + KTile::kElems},
        q{v.data + KTile::kElems},
        dout{q.data + QTile::kElems},
        lse(reinterpret_cast<float*>(dout.data + QTile::kElems)),
        delta(lse + Config<HD>::kKvBlockM) {}
};
template <typename T, int HD>
struct DqShared {  // Q, dO, K, V tiles
  using QTile = mma::Tile<T, Config<HD>::kQBlockM, HD>;
  using KTile = mma::Tile<T, Config<HD>::kQBlockN, HD>;
  static constexpr size_t kBytes = sizeof(T) * (2 * QTile::kElems + 2 * KTile::kElems);
  QTile q, dout;
  KTile k, v;
  __device__ __forceinline__ explicit DqShared(unsigned char* smem)
      : q{reinterpret_cast<T*>(smem)},
        dout{q.data + QTile::kElems},
        k{dout.data + QTile::kElems},
        v{k.data + KTile::kElems} {}
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

// Row 0 of the sequence (of batch b) in head h of q, k, v or dout, T their element type: where the
// kernels' tiles of that head start.
template <typename T> __device__ __forceinline__ const T* q_rows(const AttnParams& p, const Sequence& sq, int b, int h) {
  return static_cast<const T*>(p.q) + b * p.q_stride_b + h * p.q_stride_h + sq.first_q * p.q_stride_n;
}
template <typename T> __device__ __forceinline__ const T* k_rows(const AttnParams& p, const Sequence& sq, int b, int h) {
  return static_cast<const T*>(p.k) + b * p.k_stride_b + h * p.k_stride_h + sq.first_k * p.k_stride_n;
}
template <typename T> __device__ __forceinline__ const T* v_rows(const AttnParams& p, const Sequence& sq, int b, int h) {
  return static_cast<const T*>(p.v) + b * p.v_stride_b + h * p.v_stride_h + sq.first_k * p.v_stride_n;
}
template <typename T> __device__ __forceinline__ const T* do_rows(const AttnParams& p, const Sequence& sq, int b, int h) {
  return static_cast<const T*>(p.dout) + b * p.do_stride_b + h * p.do_stride_h + sq.first_q * p.do_stride_n;
}

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

// s[r] += a_r . b over the head dim, in shared memory: a_r the warp's R rows of a (rows warp * R + r,
// stride lda), b the lane's row of the other operand (row lane, stride ldb); with lane j owning key j,
// the lane's scores (the float32 kernels' layout). The second form makes two such products in one pass
// (the backward's S and dP).
template <int R>
__device__ __forceinline__ void dot_rows(float (&s)[R], const float* a, int lda, const float* b, int ldb, int warp,
                                         int lane, const AttnParams& p) {
  for (int d = 0; d < p.head_dim; ++d) {
    const float bd = b[lane * ldb + d];
#pragma unroll
    for (int r = 0; r < R; ++r) s[r] = fmaf(a[(warp * R + r) * lda + d], bd, s[r]);
  }
}
template <int R>
__device__ __forceinline__ void dot_rows(float (&s1)[R], float (&s2)[R], const float* a1, const float* a2, int lda,
                                         const float* b1, const float* b2, int ldb, int warp, int lane,
                                         const AttnParams& p) {
  for (int d = 0; d < p.head_dim; ++d) {
    const float b1d = b1[lane * ldb + d], b2d = b2[lane * ldb + d];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      s1[r] = fmaf(a1[(warp * R + r) * lda + d], b1d, s1[r]);
      s2[r] = fmaf(a2[(warp * R + r) * lda + d], b2d, s2[r]);
    }
  }
}

// acc[r][c] += sum_j p[r][j] v[j][lane + 32c]: a warp's R rows times a BN-row tile of V (or K, for dQ) in
// shared memory (row stride ld), each lane owning head-dim columns lane + 32c. Between two __syncwarp:
// the warp's lanes wrote p.
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

// The end of a row's online softmax whose head-dim columns lane + 32c (c < DC) this lane accumulated:
// out[d] = acc * scale / l for d < D (0 for a row that saw no key: l = 0), and lane 0 stores the row's
// lse in natural log (-inf for a row that saw no key).
template <int DC>
__device__ __forceinline__ void finish_row(const float (&acc)[DC], float m, float l, float scale, float* out,
                                           float* lse, int lane, const AttnParams& p) {
  const bool no_key = l == 0.0f;
  const float inv = no_key ? 0.0f : scale / l;
#pragma unroll
  for (int c = 0; c < DC; ++c) {
    const int d = lane + 32 * c;
    if (d < p.head_dim) out[d] = acc[c] * inv;
  }
  if (lane == 0) *lse = no_key ? -INFINITY : (m + log2f(l)) * kLn2;
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

// Calls f(n, e, row, col) for each element acc[n][e] of a warp's fp32 C fragments of 16 rows x NCOLS
// (mma.cuh's layout): row rows[e / 2] (this thread's rows g and g + 8), column col0 + 8n + 2t + (e & 1).
template <int NCOLS, class F>
__device__ __forceinline__ void for_each_c(const int (&rows)[2], int col0, int t, F&& f) {
#pragma unroll
  for (int n = 0; n < NCOLS / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) f(n, e, rows[e / 2], col0 + n * 8 + 2 * t + (e & 1));
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

// The block of a grid over blocks of `block_m` queries (forward, dQ): its query head (idx.b, idx.h), the
// key/value head h_kv it reads and its first query start_m. The kernels take this and the structs below
// apart by reference, const auto& [idx, h_kv, start_m] = QueryBlock(p, BM), and keep the block's
// Sequence a variable of its own: taken apart by value, or with the Sequence as a member, they change
// how ptxas allocates registers (the tensor-core forward at HD = 64 on sm_90: 160 instead of 130).
struct QueryBlock {
  BlockIndex idx;
  int h_kv;
  int start_m;
  __device__ __forceinline__ QueryBlock(const AttnParams& p, int block_m)
      : idx(blockIdx.x, int(ceil_div(p.seq_q, block_m)), p.heads_q),
        h_kv(idx.h / p.group),
        start_m(idx.block * block_m) {}
};

// The block of a grid over blocks of `block_n` keys (dK/dV): its key/value head (idx.b, idx.h) and its
// first key start_n.
struct KeyBlock {
  BlockIndex idx;
  int start_n;
  __device__ __forceinline__ KeyBlock(const AttnParams& p, int block_n)
      : idx(blockIdx.x, int(ceil_div(p.seq_k, block_n)), p.heads_kv), start_n(idx.block * block_n) {}
};

// The rows a block of the forward reads: the sequence's row 0 in query head h of q and in key/value head
// h_kv of k and v. (h's ALiBi slope stays the kernels' variable: as a member, ptxas allocates the
// tensor-core forward's registers as above.)
template <typename T>
struct FwdHeads {
  const T *q_head, *k_head, *v_head;
  __device__ __forceinline__ FwdHeads(const AttnParams& p, const Sequence& sq, int b, int h, int h_kv)
      : q_head(q_rows<T>(p, sq, b, h)), k_head(k_rows<T>(p, sq, b, h_kv)), v_head(v_rows<T>(p, sq, b, h_kv)) {}
};

// The rows a block of dQ reads, FwdHeads' and head h's of dout, and h's ALiBi slope (base 2).
template <typename T>
struct DqHeads {
  const T *q_head, *do_head, *k_head, *v_head;
  float slope;
  __device__ __forceinline__ DqHeads(const AttnParams& p, const Sequence& sq, int b, int h, int h_kv)
      : q_head(q_rows<T>(p, sq, b, h)),
        do_head(do_rows<T>(p, sq, b, h)),
        k_head(k_rows<T>(p, sq, b, h_kv)),
        v_head(v_rows<T>(p, sq, b, h_kv)),
        slope(alibi_slope_log2(p, b, h)) {}
};

// The rows a block of dK/dV reads of its key/value head h: the sequence's row 0 in head h of k and v.
template <typename T>
struct KvHeads {
  const T *k_head, *v_head;
  __device__ __forceinline__ KvHeads(const AttnParams& p, const Sequence& sq, int b, int h)
      : k_head(k_rows<T>(p, sq, b, h)), v_head(v_rows<T>(p, sq, b, h)) {}
};

// Query head h as the dK/dV kernels read it for their key/value head: b * Hq + h (of the dropout stream),
// the sequence's row 0 in head h of q, dout and lse / delta, and h's ALiBi slope (base 2).
template <typename T>
struct QueryHead {
  int64_t bh;
  const T* q_head;
  const T* do_head;
  int64_t rows_h;
  float slope;
  __device__ __forceinline__ QueryHead(const AttnParams& p, const Sequence& sq, int b, int h)
      : bh(int64_t(b) * p.heads_q + h),
        q_head(q_rows<T>(p, sq, b, h)),
        do_head(do_rows<T>(p, sq, b, h)),
        rows_h(lse_head(p, sq, b, h)),
        slope(alibi_slope_log2(p, b, h)) {}
};

}  // namespace attn
}  // namespace fastattn
