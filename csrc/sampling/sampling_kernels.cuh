// Sampling kernel: the algorithm of kernels/sampling.py, one block per row.
//
// For one row of V logits x (see kernels/sampling.py for the derivation):
//   z_i  = float32(x_i) / T (IEEE division; T == 0: greedy, z = x), -0.0 made +0.0
//   m    = max z, e_i = exp(z_i - m) in float64
//   t_k  = the largest key t with count(key >= t) >= k               (top-k, ties kept)
//   t_p  = the largest key t >= t_k with F(t) >= p * F(t_k)           (top-p; F = float64 mass at or above)
//   kept = { key_i >= t_p, e_i >= min_p, z_i > -inf }
//   token = argmax over kept of float32((z_i - m) + g_i), lowest index on ties, g_i Gumbel noise
// where key is the int32 ordered key of the float32 value (integer order = float order), so every
// threshold is one of the row's own values and ties are kept by construction. Each threshold is
// found by a bracket search: [lo, hi) with W(>= lo) >= target > W(>= hi); one pass over the row
// measures W at PIVOTS keys spread over (lo, hi) and the bracket shrinks to the bucket between the
// last pivot that reaches the target and the first that does not (at most 8 passes from 2^32 keys).
// The first pass tests the Triton kernel's pivots; after it the brackets differ (the Triton kernel
// also snaps its bracket to keys that occur in the row, which saves passes), but each search ends on
// the same key, the unique largest key of the row meeting its target. Counts are exact integers, and
// the float64 masses agree up to summation order (they could decide differently only when a
// cumulative mass lies within float64 rounding of p * F(t_k)). Log-probabilities agree to a few ulp,
// not bit for bit (expf here, ex2.approx in Triton's exp; different summation order).
//
// The Gumbel noise is the Triton kernel's stream bit for bit (Philox4x32-10 keyed by the row's seed,
// counter (i mod 2^32, i >> 32, 0, 0); j = r0 * 2^20 + (r1 >> 12); u = (2j + 1) * 2^-53;
// g = -logf(float32(-log(u)))): log and logf are libdevice's __nv_log / __nv_logf, as in Triton
// (the same functions, instruction for instruction; Triton links the flush-to-zero variant of
// __nv_logf, which differs only for denormal intermediates, and -log(u) >= 1.1e-16 is normal). The
// division is div.rn.f32 in both. So a seed gives the same tokens on both backends.
//
// Threads of the block stride over the row (element i belongs to thread i % blockDim.x); the
// per-thread partial counts / masses / maxima are combined in a fixed order (deterministic).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/numeric.cuh"
#include "common/philox.cuh"
#include "common/reduce.cuh"
#include "sampling/sampling_params.h"

namespace fastattn {
namespace sampling {

constexpr int kPivots = 16;            // keys tested per search pass (PIVOTS of kernels/sampling.py)
constexpr int kMaxThreads = 512;
constexpr int kMaxWarps = kMaxThreads / kWarpSize;
constexpr int32_t kKeyFloor = INT32_MIN;  // below every float32 key: masked-off elements
constexpr int32_t kKeyCeil = INT32_MAX;   // above every bracket end
constexpr double kUniformScale = 0x1p-53;  // u = (2j + 1) * 2^-53 for a 52-bit j

// int32 key with the order of the float32 values (no NaN; -0.0 already made +0.0).
__device__ __forceinline__ int32_t ordered_key(float z) {
  const int32_t bits = __float_as_int(z);
  return bits ^ ((bits >> 31) & 0x7FFFFFFF);
}

// z = float32(x) / T (x for greedy rows), -0.0 made +0.0.
__device__ __forceinline__ float load_scaled(const SampleParams& p, int64_t row_offset, int64_t i, bool greedy,
                                             float temperature) {
  const float x = load_scalar(p.logits, p.dtype, row_offset + i);
  const float z = greedy ? x : __fdiv_rn(x, temperature);
  return z == 0.0f ? 0.0f : z;
}

// Gumbel noise of token i under `seed` (the stream of kernels/sampling.py::_gumbel).
__device__ __forceinline__ float gumbel(int64_t seed, int64_t i) {
  const Philox4 r = philox4x32_10(static_cast<uint64_t>(seed), static_cast<uint32_t>(i),
                                  static_cast<uint32_t>(static_cast<uint64_t>(i) >> 32), 0u, 0u);
  const uint64_t j = (static_cast<uint64_t>(r.x) << 20) | static_cast<uint64_t>(r.y >> 12);  // 52 bits
  const double u = static_cast<double>(j * 2 + 1) * kUniformScale;  // exact, in (0, 1)
  const double exponential = -log(u);
  return -logf(static_cast<float>(exponential));
}

// (PIVOTS) keys spread over [lo + 1, hi - 1] (all of them when there are <= PIVOTS).
__device__ __forceinline__ int32_t pivot(int32_t lo, int32_t hi, int s) {
  const int64_t width = int64_t(hi) - int64_t(lo) - 1;  // >= 0
  return static_cast<int32_t>(int64_t(lo) + 1 + (width * s) / kPivots);
}

// Block-wide reductions in a fixed order: each warp reduces by butterfly, then thread k's loop over
// the warps' k-th results. A pass sums at most kSums values per thread: the kPivots counts or masses,
// and with the top-p masses Z_k = F(t_k) as well.
constexpr int kSums = kPivots + 1;

struct Shared {
  double d[kMaxWarps][kSums];
  int32_t i[kMaxWarps][kSums];
  float f[kMaxWarps];
  int32_t idx[kMaxWarps];
  double d_out[kSums];
  int32_t i_out[kSums];
};

template <class T>
__device__ __forceinline__ T warp_reduce_sum(T v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

// Sums v[0..K) over the block through `partial` (one row per warp) and `total`; every thread gets the
// totals. T is int32_t (counts, exact) or double (masses).
template <class T, int K>
__device__ __forceinline__ void block_sum(T (&v)[K], T (&partial)[kMaxWarps][kSums], T (&total)[kSums]) {
  static_assert(K <= kSums, "Shared holds kSums partial sums per warp");
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize, warps = blockDim.x / kWarpSize;
#pragma unroll
  for (int k = 0; k < K; ++k) v[k] = warp_reduce_sum(v[k]);
  __syncthreads();
  if (lane == 0)
#pragma unroll
    for (int k = 0; k < K; ++k) partial[warp][k] = v[k];
  __syncthreads();
  if (threadIdx.x < K) {
    T sum = 0;
    for (int w = 0; w < warps; ++w) sum += partial[w][threadIdx.x];
    total[threadIdx.x] = sum;
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < K; ++k) v[k] = total[k];
}

// (value, index) pairs: the larger value wins, the lower index on equal values. No NaN values.
__device__ __forceinline__ bool beats(float v, int32_t i, float best, int32_t best_i) {
  return v > best || (v == best && i < best_i);
}

__device__ __forceinline__ void block_argmax(float& v, int32_t& i, Shared& sh) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize, warps = blockDim.x / kWarpSize;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float ov = __shfl_xor_sync(kFullMask, v, offset);
    const int32_t oi = __shfl_xor_sync(kFullMask, i, offset);
    if (beats(ov, oi, v, i)) {
      v = ov;
      i = oi;
    }
  }
  __syncthreads();
  if (lane == 0) {
    sh.f[warp] = v;
    sh.idx[warp] = i;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < warps; ++w)
      if (beats(sh.f[w], sh.idx[w], sh.f[0], sh.idx[0])) {
        sh.f[0] = sh.f[w];
        sh.idx[0] = sh.idx[w];
      }
  }
  __syncthreads();
  v = sh.f[0];
  i = sh.idx[0];
}

__device__ __forceinline__ int32_t block_min_int(int32_t v, Shared& sh) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize, warps = blockDim.x / kWarpSize;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = min(v, __shfl_xor_sync(kFullMask, v, offset));
  __syncthreads();
  if (lane == 0) sh.i[warp][0] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t m = sh.i[0][0];
    for (int w = 1; w < warps; ++w) m = min(m, sh.i[w][0]);
    sh.i_out[0] = m;
  }
  __syncthreads();
  return sh.i_out[0];
}

__device__ __forceinline__ float block_sum_float(float v, Shared& sh) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize, warps = blockDim.x / kWarpSize;
  v = warp_reduce_sum(v);
  __syncthreads();
  if (lane == 0) sh.f[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
    for (int w = 0; w < warps; ++w) total += sh.f[w];
    sh.f[0] = total;
  }
  __syncthreads();
  return sh.f[0];
}

// One block (a multiple of 32 threads, at most kMaxThreads) per row; rows beyond the grid loop.
__global__ void __launch_bounds__(kMaxThreads) sample_kernel(const SampleParams p) {
  __shared__ Shared sh;
  const int64_t vocab = p.vocab;
  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const int64_t row_offset = row * p.row_stride;
    const float temperature = p.temperature[row];
    const bool greedy = temperature == 0.0f;
    const int32_t top_k = p.top_k[row];
    const double top_p = p.top_p[row];
    const double min_p = p.min_p[row];
    const int64_t seed = p.seed[row];

    // Pass 1: max and first argmax of z, NaN and +inf counts, smallest key.
    float z_max = -INFINITY;
    int32_t arg_max = INT32_MAX;
    int32_t key_min = kKeyCeil;
    int32_t counts2[2] = {0, 0};  // NaN count, +inf count
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
      const float z = load_scaled(p, row_offset, i, greedy, temperature);
      if (z != z) {
        ++counts2[0];
        continue;
      }
      if (z == INFINITY) ++counts2[1];
      if (beats(z, int32_t(i), z_max, arg_max)) {
        z_max = z;
        arg_max = int32_t(i);
      }
      key_min = min(key_min, ordered_key(z));
    }
    block_sum(counts2, sh.i, sh.i_out);
    block_argmax(z_max, arg_max, sh);
    key_min = block_min_int(key_min, sh);
    const bool valid = counts2[0] == 0 && z_max > -INFINITY;
    const bool has_posinf = counts2[1] > 0;
    const bool searched = valid && !greedy && !has_posinf;  // rows whose kept set needs thresholds
    const int32_t key_max = ordered_key(z_max);
    const double z_max64 = static_cast<double>(z_max);

    // Top-k: the largest key t with count(key >= t) >= k. Off (k = V): the smallest key. Rows not
    // searched get the empty bracket [0, 1).
    int32_t lo = searched ? key_min : 0;
    int32_t hi = searched && top_k < vocab ? key_max + 1 : lo + 1;
    while (int64_t(hi) - int64_t(lo) > 1) {  // uniform over the block: lo and hi are block-wide
      int32_t counts[kPivots] = {};
      for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
        const int32_t key = ordered_key(load_scaled(p, row_offset, i, greedy, temperature));
        if (key <= lo) continue;  // reaches no pivot
#pragma unroll
        for (int s = 0; s < kPivots; ++s) counts[s] += key >= pivot(lo, hi, s) ? 1 : 0;
      }
      block_sum(counts, sh.i, sh.i_out);
      int32_t new_lo = lo, new_hi = hi;
#pragma unroll
      for (int s = 0; s < kPivots; ++s) {
        const int32_t pv = pivot(lo, hi, s);
        if (counts[s] >= top_k) new_lo = max(new_lo, pv);
        else new_hi = min(new_hi, pv);
      }
      lo = new_lo;
      hi = new_hi;
    }
    const int32_t key_k = lo;

    // Top-p: the largest key t with F(t) >= p * F(t_k), F the float64 mass of the top-k set at or above t.
    hi = searched && top_p < 1.0 ? key_max + 1 : key_k + 1;
    double target = -1.0;  // p * Z_k, measured in the first pass
    while (int64_t(hi) - int64_t(lo) > 1) {
      double masses[kPivots + 1] = {};  // [kPivots]: Z_k = F(t_k)
      const int32_t floor = target < 0.0 ? key_k : lo + 1;
      for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float z = load_scaled(p, row_offset, i, greedy, temperature);
        const int32_t key = ordered_key(z);
        if (key < floor) continue;  // below t_k, or reaches no pivot after the first pass
        const double e = exp(static_cast<double>(z) - z_max64);
        masses[kPivots] += e;
#pragma unroll
        for (int s = 0; s < kPivots; ++s) masses[s] += key >= pivot(lo, hi, s) ? e : 0.0;
      }
      block_sum(masses, sh.d, sh.d_out);
      if (target < 0.0) target = top_p * masses[kPivots];
      int32_t new_lo = lo, new_hi = hi;
#pragma unroll
      for (int s = 0; s < kPivots; ++s) {
        const int32_t pv = pivot(lo, hi, s);
        if (masses[s] >= target) new_lo = max(new_lo, pv);
        else new_hi = min(new_hi, pv);
      }
      lo = new_lo;
      hi = new_hi;
    }
    const int32_t threshold = lo;  // max(t_k, t_p): the top-p search starts at t_k

    // Last pass: min-p, then Gumbel-max over the kept set; the kept set's mass for the log-prob.
    const bool drawn = valid && !greedy;
    float best = -INFINITY;
    int32_t token = INT32_MAX;
    float kept_sum = 0.0f;  // sum over kept of exp(z - m)
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
      bool kept = false;
      if (drawn) {
        const float z = load_scaled(p, row_offset, i, greedy, temperature);
        const bool candidate = has_posinf ? z == INFINITY : ordered_key(z) >= threshold && z > -INFINITY;
        if (candidate) {
          kept = has_posinf || exp(static_cast<double>(z) - z_max64) >= min_p;
          if (kept) {
            const float d = has_posinf ? 0.0f : z - z_max;
            if (p.token != nullptr) {
              const float score = d + gumbel(seed, i);
              if (beats(score, int32_t(i), best, token)) {
                best = score;
                token = int32_t(i);
              }
            }
            if (p.logprob != nullptr) kept_sum += expf(d);
          }
        }
      }
      if (p.mask != nullptr) {
        const bool greedy_pick = greedy && valid && i == arg_max;
        p.mask[row * vocab + i] = (kept || greedy_pick) ? 1 : 0;
      }
    }
    if (p.token == nullptr) continue;
    block_argmax(best, token, sh);
    if (p.logprob != nullptr) kept_sum = block_sum_float(kept_sum, sh);
    if (threadIdx.x == 0) {
      int64_t out = greedy ? arg_max : token;
      if (!valid) out = -1;
      p.token[row] = out;
      if (p.logprob != nullptr) {
        float logprob = 0.0f;
        if (!valid) {
          logprob = NAN;
        } else if (!greedy) {
          // d of the token, recomputed (float32 z - m, as in the draw)
          const float z = load_scaled(p, row_offset, token, greedy, temperature);
          const float d = has_posinf ? 0.0f : z - z_max;
          logprob = d - logf(kept_sum);
        }
        p.logprob[row] = logprob;
      }
    }
    __syncthreads();  // sh is reused by the next row
  }
}

}  // namespace sampling
}  // namespace fastattn
