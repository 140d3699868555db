// LayerNorm / RMSNorm kernels, forward and backward (see norm_params.h for the math).
//
// A row is handled by a "row group": one warp (small rows, WARP_PER_ROW) or one block (large rows).
// The row is cut into 8-element chunks; chunk c belongs to thread c % group_size of the group, so a
// warp reads 32 consecutive chunks (16-byte accesses when NormParams.vec). With CACHE > 0 a thread
// keeps its (at most CACHE) chunks in registers between the passes over the row; with CACHE == 0
// (rows too long for registers) each pass reads the row again, mostly from L1/L2, recomputing
// s = x + residual in float32 exactly as the first pass did.
//
// Backward, per row (xhat = (s - mean) * rstd, or s * rstd for RMSNorm; g = dy * weight):
//   ds = rstd * (g - mean(g) - xhat * mean(g * xhat))      LayerNorm
//   ds = rstd * (g - xhat * mean(g * xhat))                RMSNorm
//   dx = dresidual = ds + dresidual_out
// dW = sum_rows dy * xhat and dB = sum_rows dy are reduced deterministically: a second kernel sums
// fixed row ranges ("splits") per column into float32 partials, a third sums the partials in split
// order. No atomics anywhere, so every gradient is the same bits on every run. (The dW pass reads dy
// and s once more; fusing it into the dx pass would save that traffic but needs per-thread column
// accumulators that do not fit in registers for long rows.)
#pragma once

#include <cuda_runtime.h>

#include "common/numeric.cuh"
#include "common/reduce.cuh"
#include "norm/norm_params.h"

namespace fastattn {
namespace norm {

constexpr int kMaxThreads = 512;   // block-per-row kernels; with CACHE = 4 (64 cached floats) they need
                                   // about 100 registers a thread, which 512 threads can have
constexpr int kWarpRowsPerBlock = 4;  // warp-per-row kernels: 4 rows (128 threads) per block
constexpr int kCache = 4;             // chunks a thread keeps in registers in the cached kernels

// The threads that share one row, and the rows they visit.
template <bool WARP_PER_ROW>
struct RowGroup {
  __device__ __forceinline__ int rank() const { return WARP_PER_ROW ? threadIdx.x % kWarpSize : threadIdx.x; }
  __device__ __forceinline__ int size() const { return WARP_PER_ROW ? kWarpSize : blockDim.x; }
  __device__ __forceinline__ int64_t first_row() const {
    return WARP_PER_ROW ? int64_t(blockIdx.x) * (blockDim.x / kWarpSize) + threadIdx.x / kWarpSize
                        : int64_t(blockIdx.x);
  }
  __device__ __forceinline__ int64_t row_step() const {
    return WARP_PER_ROW ? int64_t(gridDim.x) * (blockDim.x / kWarpSize) : int64_t(gridDim.x);
  }
  // Sums v[0..K) over the group; every thread of the group gets the sums. scratch: 32 * K floats.
  template <int K>
  __device__ __forceinline__ void sum(float (&v)[K], float* scratch) const {
    if constexpr (WARP_PER_ROW) {
#pragma unroll
      for (int k = 0; k < K; ++k) v[k] = warp_sum(v[k]);
    } else {
      block_sum<K>(v, scratch);
    }
  }
};

// Calls f(k, c) for the chunks c of this thread: k is the register slot (a compile-time constant
// after unrolling when CACHE > 0; always 0 when CACHE == 0).
template <int CACHE, class Group, class F>
__device__ __forceinline__ void for_each_chunk(const Group& group, int64_t num_chunks, F&& f) {
  if constexpr (CACHE > 0) {
#pragma unroll
    for (int k = 0; k < CACHE; ++k) {
      const int64_t c = group.rank() + int64_t(k) * group.size();
      if (c < num_chunks) f(k, c);
    }
  } else {
    for (int64_t c = group.rank(); c < num_chunks; c += group.size()) f(0, c);
  }
}

// v = s = x + residual for the 8 elements of row `row` starting at column `col` (0 past the end).
template <class P>
__device__ __forceinline__ void load_sum(const P& p, int64_t row, int64_t col, float v[kChunk]) {
  const int64_t x0 = row * p.x_row_stride;
  load_chunk(p.x, p.x_dtype, x0 + col, x0 + p.cols, p.vec, v);
  if (p.residual != nullptr) {
    float r[kChunk];
    const int64_t r0 = row * p.residual_row_stride;
    load_chunk(p.residual, p.residual_dtype, r0 + col, r0 + p.cols, p.vec, r);
#pragma unroll
    for (int e = 0; e < kChunk; ++e) v[e] += r[e];
  }
}

// Weight (or bias) chunk: `fill` where the tensor is absent.
__device__ __forceinline__ void load_param(const void* ptr, DType dtype, int64_t col, int64_t cols, bool vec,
                                           float fill, float v[kChunk]) {
  if (ptr == nullptr) {
#pragma unroll
    for (int e = 0; e < kChunk; ++e) v[e] = fill;
  } else {
    load_chunk(ptr, dtype, col, cols, vec, v);
  }
}

// ------------------------------------------------------------------------------------------ forward
template <bool WARP_PER_ROW, int CACHE>
__global__ void __launch_bounds__(kMaxThreads) norm_fwd_kernel(const NormFwdParams p) {
  __shared__ float scratch[kWarpSize];
  const RowGroup<WARP_PER_ROW> group;
  const int64_t cols = p.cols;
  const int64_t num_chunks = ceil_div(cols, kChunk);
  const float inv_cols = 1.0f / float(cols);

  for (int64_t row = group.first_row(); row < p.rows; row += group.row_step()) {
    float cache[CACHE > 0 ? CACHE : 1][kChunk];
    // Pass 1: s = x + residual (stored when asked), and sum(s) (LayerNorm) or sum(s^2) (RMSNorm).
    float acc[1] = {0.0f};
    for_each_chunk<CACHE>(group, num_chunks, [&](int k, int64_t c) {
      float* s = cache[k];
      load_sum(p, row, c * kChunk, s);
      if (p.residual_out != nullptr) store_chunk(p.residual_out, p.residual_out_dtype, row * cols + c * kChunk,
                                                 (row + 1) * cols, p.vec, s);
#pragma unroll
      for (int e = 0; e < kChunk; ++e) acc[0] += p.rms ? s[e] * s[e] : s[e];  // entries past the end are 0
    });
    group.sum(acc, scratch);

    float mean = 0.0f, variance;
    if (p.rms) {
      variance = acc[0] * inv_cols;  // mean of s^2
    } else {
      mean = acc[0] * inv_cols;
      // Pass 2 (LayerNorm): the variance from the deviations, which is accurate where
      // E[s^2] - mean^2 would cancel.
      float dev[1] = {0.0f};
      for_each_chunk<CACHE>(group, num_chunks, [&](int k, int64_t c) {
        float* s = cache[k];
        if (CACHE == 0) load_sum(p, row, c * kChunk, s);
#pragma unroll
        for (int e = 0; e < kChunk; ++e) {
          const float d = c * kChunk + e < cols ? s[e] - mean : 0.0f;
          dev[0] += d * d;
        }
      });
      group.sum(dev, scratch);
      variance = dev[0] * inv_cols;
    }
    const float rstd = 1.0f / sqrtf(variance + p.eps);
    if (group.rank() == 0) {
      if (p.mean != nullptr) p.mean[row] = mean;
      p.rstd[row] = rstd;
    }

    // Pass 3: y = (s - mean) * rstd * weight + bias.
    for_each_chunk<CACHE>(group, num_chunks, [&](int k, int64_t c) {
      float* s = cache[k];
      if (CACHE == 0) load_sum(p, row, c * kChunk, s);
      float w[kChunk], b[kChunk], y[kChunk];
      load_param(p.weight, p.weight_dtype, c * kChunk, cols, p.vec, 1.0f, w);
      load_param(p.bias, p.bias_dtype, c * kChunk, cols, p.vec, 0.0f, b);
#pragma unroll
      for (int e = 0; e < kChunk; ++e) y[e] = (s[e] - mean) * rstd * w[e] + b[e];
      store_chunk(p.y, p.x_dtype, row * cols + c * kChunk, (row + 1) * cols, p.vec, y);
    });
  }
}

// ------------------------------------------------------------------------------------- backward: dx
template <bool WARP_PER_ROW, int CACHE>
__global__ void __launch_bounds__(kMaxThreads) norm_bwd_dx_kernel(const NormBwdParams p) {
  __shared__ float scratch[2 * kWarpSize];
  const RowGroup<WARP_PER_ROW> group;
  const int64_t cols = p.cols;
  const int64_t num_chunks = ceil_div(cols, kChunk);
  const float inv_cols = 1.0f / float(cols);

  for (int64_t row = group.first_row(); row < p.rows; row += group.row_step()) {
    const float mean = p.rms ? 0.0f : p.mean[row];
    const float rstd = p.rstd[row];
    float xhat_cache[CACHE > 0 ? CACHE : 1][kChunk];
    float g_cache[CACHE > 0 ? CACHE : 1][kChunk];

    // xhat and g = dy * weight for one chunk (entries past the end: g = 0).
    auto load_xhat_g = [&](int64_t c, float xhat[kChunk], float g[kChunk]) {
      float w[kChunk];
      load_sum(p, row, c * kChunk, xhat);
      const int64_t d0 = row * p.dy_row_stride;
      load_chunk(p.dy, p.dy_dtype, d0 + c * kChunk, d0 + cols, p.vec, g);
      load_param(p.weight, p.weight_dtype, c * kChunk, cols, p.vec, 1.0f, w);
#pragma unroll
      for (int e = 0; e < kChunk; ++e) {
        xhat[e] = (xhat[e] - mean) * rstd;
        g[e] *= w[e];
      }
    };

    // Pass 1: sum(g) and sum(g * xhat).
    float acc[2] = {0.0f, 0.0f};
    for_each_chunk<CACHE>(group, num_chunks, [&](int k, int64_t c) {
      load_xhat_g(c, xhat_cache[k], g_cache[k]);
#pragma unroll
      for (int e = 0; e < kChunk; ++e) {
        acc[0] += g_cache[k][e];
        acc[1] += g_cache[k][e] * xhat_cache[k][e];
      }
    });
    group.sum(acc, scratch);
    const float mean_g = p.rms ? 0.0f : acc[0] * inv_cols;
    const float mean_gx = acc[1] * inv_cols;

    // Pass 2: ds, plus the gradient that reached s directly; written as dx and dresidual.
    for_each_chunk<CACHE>(group, num_chunks, [&](int k, int64_t c) {
      float* xhat = xhat_cache[k];
      float* g = g_cache[k];
      if (CACHE == 0) load_xhat_g(c, xhat, g);
      float ds[kChunk];
#pragma unroll
      for (int e = 0; e < kChunk; ++e) ds[e] = rstd * (g[e] - mean_g - xhat[e] * mean_gx);
      if (p.dresidual_out != nullptr) {
        float extra[kChunk];
        const int64_t o0 = row * p.dresidual_out_row_stride;
        load_chunk(p.dresidual_out, p.dresidual_out_dtype, o0 + c * kChunk, o0 + cols, p.vec, extra);
#pragma unroll
        for (int e = 0; e < kChunk; ++e) ds[e] += extra[e];
      }
      store_chunk(p.dx, p.dx_dtype, row * cols + c * kChunk, (row + 1) * cols, p.vec, ds);
      if (p.dresidual != nullptr)
        store_chunk(p.dresidual, p.residual_dtype, row * cols + c * kChunk, (row + 1) * cols, p.vec, ds);
    });
  }
}

// ------------------------------------------------------------------------------ backward: dW and dB
constexpr int kPartialCols = 32;  // columns per block: one per lane, so a warp reads 32 neighbours
constexpr int kPartialRows = 8;   // warps per block, each summing every 8th row of the split

// partial[split, col] = sum over the rows of `split` of dy * xhat (dW) and dy (dB).
// Grid (ceil(cols / 32), splits), block (32, 8).
__global__ void __launch_bounds__(kPartialCols * kPartialRows) norm_bwd_partial_kernel(const NormBwdParams p) {
  __shared__ float dw_part[kPartialRows][kPartialCols + 1];
  __shared__ float db_part[kPartialRows][kPartialCols + 1];
  const int64_t col = int64_t(blockIdx.x) * kPartialCols + threadIdx.x;
  const int64_t row_begin = int64_t(blockIdx.y) * p.rows_per_split;
  const int64_t row_end = min(row_begin + p.rows_per_split, p.rows);
  float dw = 0.0f, db = 0.0f;
  if (col < p.cols) {
    for (int64_t row = row_begin + threadIdx.y; row < row_end; row += kPartialRows) {
      float s = load_scalar(p.x, p.x_dtype, row * p.x_row_stride + col);
      if (p.residual != nullptr) s += load_scalar(p.residual, p.residual_dtype, row * p.residual_row_stride + col);
      const float xhat = (s - (p.rms ? 0.0f : p.mean[row])) * p.rstd[row];
      const float dy = load_scalar(p.dy, p.dy_dtype, row * p.dy_row_stride + col);
      dw += dy * xhat;
      db += dy;
    }
  }
  dw_part[threadIdx.y][threadIdx.x] = dw;
  db_part[threadIdx.y][threadIdx.x] = db;
  __syncthreads();
  if (threadIdx.y == 0 && col < p.cols) {
    for (int y = 1; y < kPartialRows; ++y) {  // fixed order
      dw += dw_part[y][threadIdx.x];
      db += db_part[y][threadIdx.x];
    }
    const int64_t out = int64_t(blockIdx.y) * p.cols + col;
    if (p.partial_dweight != nullptr) p.partial_dweight[out] = dw;
    if (p.partial_dbias != nullptr) p.partial_dbias[out] = db;
  }
}

// dweight[col] = sum over splits of partial_dweight[split, col], in split order; dbias likewise.
__global__ void norm_bwd_finish_kernel(const NormBwdParams p) {
  const int64_t col = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= p.cols) return;
  float dw = 0.0f, db = 0.0f;
  for (int split = 0; split < p.splits; ++split) {
    if (p.partial_dweight != nullptr) dw += p.partial_dweight[int64_t(split) * p.cols + col];
    if (p.partial_dbias != nullptr) db += p.partial_dbias[int64_t(split) * p.cols + col];
  }
  if (p.dweight != nullptr) store_scalar(p.dweight, p.weight_dtype, col, dw);
  if (p.dbias != nullptr) store_scalar(p.dbias, p.bias_dtype, col, db);
}

}  // namespace norm
}  // namespace fastattn
