// Split-KV attention against a KV cache (flash-decoding), contiguous or paged, for every dtype.
//
// The keys of each (sequence, kv head) are cut into num_splits parts, one block each; a block's rows
// are the (query position, query head) pairs of one GQA group, so every query head of the group is
// served from one read of each K/V tile. Each block writes its part's output, normalized, and lse in
// float32; the merge kernel combines them exactly:
//   lse = log sum_s exp(lse_s),   O = sum_s exp(lse_s - lse) O_s.
// Decoding reads K and V once and does 2 FLOPs per byte of them: memory-bound, so the products are
// fp32 FMAs on the CUDA cores (as attention_simt.cuh), with K and V converted to float as they are
// loaded; no tensor cores needed. Layout (the float32 kernels'): 4 warps; warp w owns rows 4w..4w+3 of
// the block's 16; lane j owns key j of a 32-key tile for the scores, and head-dim columns lane + 32c for
// the output; shared memory as the float32 forward's.
// Keys are counted from each sequence's first position (cache_leftpad); masks, scores and ALiBi are
// attention_common.cuh's, aligned to the sequence's last key.
#pragma once

#include "attention/attention_simt.cuh"

namespace fastattn {
namespace attn {
namespace decode {

// ptxas -v (nvcc 13.0; python bench/static_resources.py): the split kernel takes 96-128 registers, 16 warps
// per SM (20 at 96), bound by registers up to head dim 64; ptxas holds it at 128 for the fourth block per SM
// and spills 8-16 bytes a thread in some buckets (ACCEPTED_SPILLS in bench/static_resources.py). Shared
// memory (Smem::kBytes: 43,136 bytes at DC = 4, 84,096 at DC = 8) bounds the larger buckets: 12 warps per
// SM at DC = 4 on sm_80, and at DC = 8 only 4 on sm_80 and 8 on sm_90, which a memory-bound kernel may
// feel (to measure on a GPU). The merge kernel takes 32-40 registers.
using simt::kThreads;
using simt::kTile;  // keys per tile: one per lane
using simt::kWarps;
constexpr int kRowsPerWarp = 4;
constexpr int kBlockM = kWarps * kRowsPerWarp;  // (query, head) rows per block

template <int DC>
using Smem = simt::FwdSmem<DC, kRowsPerWarp>;  // Q rows, K tile, V tile, each warp's P

// The sequence b as the masks see it: Sq queries, its keys from its first position to its length.
__device__ __forceinline__ Sequence cached_sequence(const AttnParams& p, int b) {
  Sequence sq(p, b);  // padded-batch defaults (no cu_seqlens in a decode call)
  sq.first_k = p.cache_first[b];
  sq.seq_k = p.cache_total[b] - int(sq.first_k);
  return sq;
}

// Element offset of position `pos` of sequence b (kv head h_kv) in the cache.
__device__ __forceinline__ int64_t cache_offset(const AttnParams& p, int b, int h_kv, int64_t pos, int64_t stride_b,
                                                int64_t stride_n, int64_t stride_h) {
  if (p.block_table != nullptr) {
    const int64_t page = p.block_table[b * p.block_table_stride + pos / p.page_size];
    return page * stride_b + (pos % p.page_size) * stride_n + h_kv * stride_h;
  }
  return int64_t(p.cache_rows[b]) * stride_b + pos * stride_n + h_kv * stride_h;
}

template <typename T, int DC>
__global__ void __launch_bounds__(kThreads) attn_decode_split_kernel(const AttnParams p) {
  constexpr int HD = 32 * DC, R = kRowsPerWarp, BM = kBlockM, BN = kTile, LDK = HD + 1;
  extern __shared__ float smem_f32[];  // Smem<DC>::kBytes
  const auto& [qs, ks, vs, ps] = Smem<DC>(smem_f32);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int rows_total = p.seq_q * p.group;
  const int num_m_blocks = int(ceil_div(rows_total, BM));
  const int m_block = int(blockIdx.y % num_m_blocks), split = int(blockIdx.y / num_m_blocks);
  const int b = int(blockIdx.x / p.heads_kv), h_kv = int(blockIdx.x % p.heads_kv);
  const Sequence sq = cached_sequence(p, b);
  const T* q = static_cast<const T*>(p.q);
  const T* kc = static_cast<const T*>(p.k);
  const T* vc = static_cast<const T*>(p.v);

  for (int c = threadIdx.x; c < BM * HD; c += kThreads) {  // the block's (query, head) rows of Q
    const int r = c / HD, d = c % HD, m = m_block * BM + r;
    const int query = m / p.group, head = h_kv * p.group + m % p.group;
    const bool in = m < rows_total && d < p.head_dim;
    qs[c] = in ? to_float(q[b * p.q_stride_b + int64_t(query) * p.q_stride_n + head * p.q_stride_h + d]) : 0.0f;
  }
  int query[R], head[R];
  float slope[R], acc[R][DC] = {}, m_i[R], l_i[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int m = m_block * BM + warp * R + r;
    query[r] = m < rows_total ? m / p.group : p.seq_q;  // rows past the end: a query that sees nothing
    head[r] = h_kv * p.group + m % p.group;
    slope[r] = alibi_slope_log2(p, b, head[r] < p.heads_q ? head[r] : 0);
    m_i[r] = -INFINITY;
    l_i[r] = 0.0f;
  }

  // This split's keys, narrowed to those the block's queries can see.
  int64_t lo = int64_t(split) * p.split_size;
  int64_t hi = lo + p.split_size < sq.seq_k ? lo + p.split_size : sq.seq_k;
  if (p.band) {
    const int64_t first_query = (int64_t(m_block) * BM) / p.group;
    const int64_t last_row = int64_t(m_block) * BM + BM - 1 < rows_total - 1 ? int64_t(m_block) * BM + BM - 1 : rows_total - 1;
    const int64_t from = first_query + sq.offset() - p.window_left;
    if (from > lo) lo = (from / BN) * BN;
    const int64_t to = last_row / p.group + sq.offset() + p.window_right + 1;
    if (to < hi) hi = to;
  }

  for (int64_t start_n = lo; start_n < hi; start_n += BN) {
    __syncthreads();  // every warp is done with the previous K, V (and Q is loaded)
    for (int c = threadIdx.x; c < BN * HD; c += kThreads) {
      const int j = c / HD, d = c % HD;
      const int64_t key = start_n + j;
      const bool in = key < sq.seq_k && d < p.head_dim;
      float kd = 0.0f, vd = 0.0f;
      if (in) {
        const int64_t pos = sq.first_k + key;
        kd = to_float(kc[cache_offset(p, b, h_kv, pos, p.k_stride_b, p.k_stride_n, p.k_stride_h) + d]);
        vd = to_float(vc[cache_offset(p, b, h_kv, pos, p.v_stride_b, p.v_stride_n, p.v_stride_h) + d]);
      }
      ks[j * LDK + d] = kd;
      vs[j * HD + d] = vd;
    }
    __syncthreads();

    float s[R] = {};
    dot_rows(s, qs, HD, ks, LDK, warp, lane, p);
    const int col = int(start_n) + lane;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const float sr = visible(p, sq, query[r], col) ? score(p, sq, slope[r], s[r], query[r], col) : -INFINITY;
      float alpha;
      ps[warp][r][lane] = online_softmax_step(sr, m_i[r], l_i[r], alpha);
#pragma unroll
      for (int c = 0; c < DC; ++c) acc[r][c] *= alpha;
    }
    accumulate_pv<R, DC, BN>(acc, ps[warp], vs, HD, lane);
  }

#pragma unroll
  for (int r = 0; r < R; ++r) {
    if (query[r] >= p.seq_q) continue;
    const int64_t part = ((int64_t(b) * p.heads_q + head[r]) * p.num_splits + split) * p.seq_q + query[r];
    finish_row(acc[r], m_i[r], l_i[r], 1.0f, p.out_part + part * p.head_dim, p.lse_part + part, lane, p);
  }
}

// One warp per (sequence, query head, query): the parts' outputs weighted by exp(lse_s - lse).
template <typename T, int DC>
__global__ void __launch_bounds__(kThreads) attn_decode_merge_kernel(const AttnParams p) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * kWarps + warp;  // (b, h, query)
  if (row >= int64_t(p.batch) * p.heads_q * p.seq_q) return;  // the whole warp
  const int64_t bh = row / p.seq_q;
  const int query = int(row % p.seq_q);
  const int b = int(bh / p.heads_q), h = int(bh % p.heads_q);
  const int64_t part0 = bh * p.num_splits * p.seq_q + query;  // split s at part0 + s * Sq
  float top = -INFINITY;
  for (int s = lane; s < p.num_splits; s += 32) top = fmaxf(top, p.lse_part[part0 + int64_t(s) * p.seq_q]);
  top = warp_max(top);
  const float top_safe = top == -INFINITY ? 0.0f : top;  // no part saw a key
  float total = 0.0f;
  for (int s = lane; s < p.num_splits; s += 32) total += exp2f((p.lse_part[part0 + int64_t(s) * p.seq_q] - top_safe) * kLog2e);
  total = warp_sum(total);
  const float inv = total == 0.0f ? 0.0f : 1.0f / total;
  T* out = static_cast<T*>(p.out) + b * p.o_stride_b + int64_t(query) * p.o_stride_n + h * p.o_stride_h;
#pragma unroll
  for (int c = 0; c < DC; ++c) {
    const int d = lane + 32 * c;
    if (d >= p.head_dim) continue;
    float acc = 0.0f;
    for (int s = 0; s < p.num_splits; ++s) {
      const int64_t part = part0 + int64_t(s) * p.seq_q;
      const float weight = exp2f((p.lse_part[part] - top_safe) * kLog2e);  // 0 for a part with no key
      acc = fmaf(weight, p.out_part[part * p.head_dim + d], acc);
    }
    out[d] = from_float<T>(acc * inv);
  }
  if (lane == 0) p.lse[bh * p.seq_q + query] = total == 0.0f ? -INFINITY : top_safe + log2f(total) * kLn2;
}

// Launches the split kernel then the merge for dtype T and head-dim bucket 32 * DC. The grid is
// (B * Hkv, row blocks * splits): the host keeps the second at most 65535.
template <typename T, int DC>
cudaError_t run_decode(const AttnParams& p, cudaStream_t stream) {
  const int64_t sequence_heads = int64_t(p.batch) * p.heads_kv;
  const int64_t parts = ceil_div(int64_t(p.seq_q) * p.group, kBlockM) * p.num_splits;
  const int64_t rows = int64_t(p.batch) * p.heads_q * p.seq_q;
  if (sequence_heads == 0 || parts == 0) return cudaSuccess;
  if (sequence_heads > 2147483647 || parts > 65535 || ceil_div(rows, kWarps) > 2147483647)
    return cudaErrorInvalidConfiguration;
  const auto split_kernel = attn_decode_split_kernel<T, DC>;
  const auto merge_kernel = attn_decode_merge_kernel<T, DC>;
  constexpr size_t smem = Smem<DC>::kBytes;
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(split_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (err != cudaSuccess) return err;
  }
  split_kernel<<<dim3(unsigned(sequence_heads), unsigned(parts)), kThreads, smem, stream>>>(p);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  merge_kernel<<<unsigned(ceil_div(rows, kWarps)), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace decode
}  // namespace attn
}  // namespace fastattn
