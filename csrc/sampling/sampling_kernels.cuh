// Sampling kernels: the algorithm of kernels/sampling.py, one block per row (sample_kernel), or for
// small batches of long rows `splits` blocks per row (the split path, at the end of this file).
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
// Each pass is a __device__ function over a slice [begin, end) of a row: the block's threads stride
// over it (element i belongs to thread (i - begin) % blockDim.x) and the per-thread partial counts /
// masses / maxima are combined in a fixed order (deterministic). sample_kernel runs them on [0, V),
// each search until its bracket closes.
//
// The split path: at batch 1, one block on one SM streams a 128k-256k row 10-18 times, so the row is
// cut into `splits` slices of a block each, in a fixed sequence of launches on the stream (no host
// synchronization: a CUDA graph can capture it):
//   sample_stats_kernel      (splits, rows)  each slice's max, first argmax, smallest key, NaN and +inf counts
//   sample_step_kernel x 16  (splits, rows)  steps 0-7: top-k count passes, 8-15: top-p mass passes
//   sample_draw_kernel       (splits, rows)  the threshold; min-p and Gumbel-max over the slice, its mask
//   sample_merge_kernel      (rows)          the best draw of the splits, the log-prob
// Every block of a step narrows its row's bracket by the previous step's partials of all splits, summed
// in split order (so every block gets the same bracket), then measures its slice at the pivots. The
// brackets are sample_kernel's, pass for pass: the counts are exact, and the top-p masses are sums in
// another order, which could decide differently only when a cumulative mass lies within float64
// rounding of p * Z_k. So the kept set and the tokens are sample_kernel's; the log-prob agrees to a
// few ulp (the float32 kept mass is summed in another order).
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
constexpr int32_t kKeyCeil = INT32_MAX;   // above every bracket end
constexpr double kUniformScale = 0x1p-53;  // u = (2j + 1) * 2^-53 for a 52-bit j
// A pass narrows a bracket of width w <= 2^32 to at most ceil((w - 1) / 16) (the widest bucket between
// two of the 16 pivots, or above the last): 2^32 -> 2^28 -> ... -> 2^4 -> 1 in 8 passes. So the split
// path runs a fixed 8 steps per search, and a bracket closed early stays closed (its blocks skip).
constexpr int kSearchSteps = 8;
constexpr int kSteps = 2 * kSearchSteps;  // top-k, then top-p

// int32 key with the order of the float32 values (no NaN; -0.0 already made +0.0).
__device__ __forceinline__ int32_t ordered_key(float z) {
  const int32_t bits = __float_as_int(z);
  return bits ^ ((bits >> 31) & 0x7FFFFFFF);
}

// A row's parameters, as sampling.cpp converted them.
struct RowInput {
  int64_t offset;  // of the row's first logit, in elements
  float temperature;
  bool greedy;  // temperature == 0: z = x, and the token is the first argmax
  int32_t top_k;
  double top_p;
  double min_p;
  int64_t seed;
};

__device__ __forceinline__ RowInput load_row(const SampleParams& p, int64_t row) {
  const float temperature = p.temperature[row];
  return {row * p.row_stride, temperature, temperature == 0.0f, p.top_k[row], p.top_p[row], p.min_p[row], p.seed[row]};
}

// z = float32(x) / T (x for greedy rows), -0.0 made +0.0.
__device__ __forceinline__ float load_scaled(const SampleParams& p, const RowInput& r, int64_t i) {
  const float x = load_scalar(p.logits, p.dtype, r.offset + i);
  const float z = r.greedy ? x : __fdiv_rn(x, r.temperature);
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

// (value, index) pairs: the larger value wins, the lower index on equal values. No NaN values.
__device__ __forceinline__ bool beats(float v, int32_t i, float best, int32_t best_i) {
  return v > best || (v == best && i < best_i);
}

// Pass 1's results over a slice: the max and first argmax of z, the smallest key, NaN and +inf counts.
struct RowStats {
  float z_max;           // -inf when the slice holds no number
  int32_t arg_max;       // INT32_MAX when the slice holds no number
  int32_t key_min;       // kKeyCeil when the slice holds no number
  int32_t nan_count;
  int32_t posinf_count;
};

__device__ __forceinline__ RowStats no_stats() { return {-INFINITY, INT32_MAX, kKeyCeil, 0, 0}; }

// Adds slice o's statistics to s's (exact: the same result in any order).
__device__ __forceinline__ void add_stats(RowStats& s, const RowStats& o) {
  if (beats(o.z_max, o.arg_max, s.z_max, s.arg_max)) {
    s.z_max = o.z_max;
    s.arg_max = o.arg_max;
  }
  s.key_min = min(s.key_min, o.key_min);
  s.nan_count += o.nan_count;
  s.posinf_count += o.posinf_count;
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
  RowStats stats;
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

// s: the thread's statistics on entry, the block's on return (every thread).
__device__ __forceinline__ void block_stats(RowStats& s, Shared& sh) {
  int32_t counts[2] = {s.nan_count, s.posinf_count};
  block_sum(counts, sh.i, sh.i_out);
  block_argmax(s.z_max, s.arg_max, sh);
  s.key_min = block_min_int(s.key_min, sh);
  s.nan_count = counts[0];
  s.posinf_count = counts[1];
}

// What the rest of the row's work needs from its statistics.
struct RowSummary {
  RowStats stats;
  bool valid;       // no NaN and some z > -inf (else token -1, log-prob NaN)
  bool has_posinf;  // the draw is uniform over the +inf entries
  bool searched;    // valid, sampled and no +inf: the kept set needs thresholds
  int32_t key_max;
  double z_max64;
};

__device__ __forceinline__ RowSummary summarize(const RowStats& s, const RowInput& r) {
  const bool valid = s.nan_count == 0 && s.z_max > -INFINITY;
  const bool has_posinf = s.posinf_count > 0;
  return {s, valid, has_posinf, valid && !r.greedy && !has_posinf, ordered_key(s.z_max), static_cast<double>(s.z_max)};
}

// A search's bracket [lo, hi): W(>= lo) >= target > W(>= hi); closed when it holds one key, lo.
struct Bracket {
  int32_t lo;
  int32_t hi;
};

__device__ __forceinline__ bool is_open(Bracket b) { return int64_t(b.hi) - int64_t(b.lo) > 1; }

// Top-k: the largest key t with count(key >= t) >= k. Off (k = V): the smallest key. Rows not
// searched get the empty bracket [0, 1).
__device__ __forceinline__ Bracket top_k_bracket(const RowSummary& s, const RowInput& r, int32_t vocab) {
  const int32_t lo = s.searched ? s.stats.key_min : 0;
  return {lo, s.searched && r.top_k < vocab ? s.key_max + 1 : lo + 1};
}

// Top-p: the largest key t >= t_k with F(t) >= p * F(t_k), F the float64 mass of the top-k set at or
// above t. Off (p = 1) or not searched: t_k.
__device__ __forceinline__ Bracket top_p_bracket(int32_t key_k, const RowSummary& s, const RowInput& r) {
  return {key_k, s.searched && r.top_p < 1.0 ? s.key_max + 1 : key_k + 1};
}

// The bucket of an open bracket after a pass that measured `weight` at its pivots: from the largest
// pivot whose weight reaches the target to the smallest that does not (no snapping to the row's keys).
template <class T>
__device__ __forceinline__ Bracket narrow(Bracket b, const T* weight, T target) {
  Bracket narrowed = b;
#pragma unroll
  for (int s = 0; s < kPivots; ++s) {
    const int32_t pv = pivot(b.lo, b.hi, s);
    if (weight[s] >= target) narrowed.lo = max(narrowed.lo, pv);
    else narrowed.hi = min(narrowed.hi, pv);
  }
  return narrowed;
}

// ------------------------------------------------------------------------------ passes over a slice
// Pass 1: the statistics of [begin, end), to every thread.
__device__ __forceinline__ RowStats stats_pass(const SampleParams& p, const RowInput& r, int64_t begin, int64_t end,
                                               Shared& sh) {
  RowStats s = no_stats();
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const float z = load_scaled(p, r, i);
    if (z != z) {
      ++s.nan_count;
      continue;
    }
    if (z == INFINITY) ++s.posinf_count;
    if (beats(z, int32_t(i), s.z_max, s.arg_max)) {
      s.z_max = z;
      s.arg_max = int32_t(i);
    }
    s.key_min = min(s.key_min, ordered_key(z));
  }
  block_stats(s, sh);
  return s;
}

// A top-k pass: counts[s] = the number of keys of [begin, end) at or above pivot s, to every thread.
__device__ __forceinline__ void count_pass(const SampleParams& p, const RowInput& r, int64_t begin, int64_t end,
                                           Bracket b, Shared& sh, int32_t (&counts)[kPivots]) {
#pragma unroll
  for (int s = 0; s < kPivots; ++s) counts[s] = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const int32_t key = ordered_key(load_scaled(p, r, i));
    if (key <= b.lo) continue;  // reaches no pivot
#pragma unroll
    for (int s = 0; s < kPivots; ++s) counts[s] += key >= pivot(b.lo, b.hi, s) ? 1 : 0;
  }
  block_sum(counts, sh.i, sh.i_out);
}

// A top-p pass: masses[s] = the float64 mass exp(z - m) of [begin, end) at or above pivot s, to every
// thread. The first pass (with_total, lo = t_k) also measures masses[kPivots] = F(t_k), Z_k's share.
__device__ __forceinline__ void mass_pass(const SampleParams& p, const RowInput& r, int64_t begin, int64_t end,
                                          Bracket b, bool with_total, double z_max64, Shared& sh,
                                          double (&masses)[kSums]) {
#pragma unroll
  for (int s = 0; s < kSums; ++s) masses[s] = 0.0;
  const int32_t floor = with_total ? b.lo : b.lo + 1;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const float z = load_scaled(p, r, i);
    const int32_t key = ordered_key(z);
    if (key < floor) continue;  // below t_k, or reaches no pivot after the first pass
    const double e = exp(static_cast<double>(z) - z_max64);
    masses[kPivots] += e;
#pragma unroll
    for (int s = 0; s < kPivots; ++s) masses[s] += key >= pivot(b.lo, b.hi, s) ? e : 0.0;
  }
  block_sum(masses, sh.d, sh.d_out);
}

// A slice's draw: its best Gumbel score and token (INT32_MAX: none kept), and its kept mass.
struct Draw {
  float best;
  int32_t token;
  float kept_sum;  // sum over kept of exp(z - m), float32
};

// Last pass: min-p, then Gumbel-max over the kept set of [begin, end) and the kept set's mass for the
// log-prob (block-reduced when p.token is set); writes the slice of the mask when p.mask is set.
__device__ __forceinline__ Draw draw_pass(const SampleParams& p, const RowInput& r, int64_t row, int64_t begin,
                                          int64_t end, const RowSummary& s, int32_t threshold, Shared& sh) {
  const bool drawn = s.valid && !r.greedy;
  Draw d = {-INFINITY, INT32_MAX, 0.0f};
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    bool kept = false;
    if (drawn) {
      const float z = load_scaled(p, r, i);
      const bool candidate = s.has_posinf ? z == INFINITY : ordered_key(z) >= threshold && z > -INFINITY;
      if (candidate) {
        kept = s.has_posinf || exp(static_cast<double>(z) - s.z_max64) >= r.min_p;
        if (kept) {
          const float delta = s.has_posinf ? 0.0f : z - s.stats.z_max;
          if (p.token != nullptr) {
            const float score = delta + gumbel(r.seed, i);
            if (beats(score, int32_t(i), d.best, d.token)) {
              d.best = score;
              d.token = int32_t(i);
            }
          }
          if (p.logprob != nullptr) d.kept_sum += expf(delta);
        }
      }
    }
    if (p.mask != nullptr) {
      const bool greedy_pick = r.greedy && s.valid && i == s.stats.arg_max;
      p.mask[row * p.vocab + i] = (kept || greedy_pick) ? 1 : 0;
    }
  }
  if (p.token != nullptr) {
    block_argmax(d.best, d.token, sh);
    if (p.logprob != nullptr) d.kept_sum = block_sum_float(d.kept_sum, sh);
  }
  return d;
}

// The row's outputs from its draw (one thread): the token (the first argmax for greedy rows, -1 for
// rows with a NaN or no finite z) and its log-prob under the kept distribution.
__device__ __forceinline__ void write_draw(const SampleParams& p, int64_t row, const RowInput& r, const RowSummary& s,
                                           const Draw& d) {
  int64_t out = r.greedy ? s.stats.arg_max : d.token;
  if (!s.valid) out = -1;
  p.token[row] = out;
  if (p.logprob == nullptr) return;
  float logprob = 0.0f;
  if (!s.valid) {
    logprob = NAN;
  } else if (!r.greedy) {
    // d of the token, recomputed (float32 z - m, as in the draw)
    const float z = load_scaled(p, r, d.token);
    const float delta = s.has_posinf ? 0.0f : z - s.stats.z_max;
    logprob = delta - logf(d.kept_sum);
  }
  p.logprob[row] = logprob;
}

// ------------------------------------------------------------------------------ one block per row
// One block (a multiple of 32 threads, at most kMaxThreads) per row; rows beyond the grid loop.
__global__ void __launch_bounds__(kMaxThreads) sample_kernel(const SampleParams p) {
  __shared__ Shared sh;
  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const RowInput r = load_row(p, row);
    const RowSummary s = summarize(stats_pass(p, r, 0, p.vocab, sh), r);
    Bracket b = top_k_bracket(s, r, p.vocab);
    while (is_open(b)) {  // uniform over the block: the bracket is block-wide
      int32_t counts[kPivots];
      count_pass(p, r, 0, p.vocab, b, sh, counts);
      b = narrow(b, counts, r.top_k);
    }
    b = top_p_bracket(b.lo, s, r);
    double target = -1.0;  // p * Z_k, measured in the first pass
    while (is_open(b)) {
      double masses[kSums];
      mass_pass(p, r, 0, p.vocab, b, target < 0.0, s.z_max64, sh, masses);
      if (target < 0.0) target = r.top_p * masses[kPivots];
      b = narrow(b, masses, target);
    }
    const int32_t threshold = b.lo;  // max(t_k, t_p): the top-p search starts at t_k
    const Draw d = draw_pass(p, r, row, 0, p.vocab, s, threshold, sh);
    if (p.token != nullptr && threadIdx.x == 0) write_draw(p, row, r, s, d);
    __syncthreads();  // sh is reused by the next row
  }
}

// ---------------------------------------------------------------------------------- the split path
// A row's search as of a step: the bracket that step's pass measures.
struct SearchState {
  Bracket bracket;
  double target;  // top-p: p * Z_k; -1 until the first top-p pass has measured Z_k
};

// The split path's workspace (SampleParams::workspace, laid out by sampling_launch.cu), for row r,
// split k, and the parity of a step (step s writes s % 2 while its blocks read (s - 1) % 2, so no block
// overwrites what another block of the same launch still reads).
struct SplitWorkspace {
  RowStats* stats;      // [r][k] the slice's statistics
  int32_t* counts;      // [s % 2][r][k][kPivots] a top-k step's counts of the slice
  double* masses;       // [s % 2][r][k][kSums] a top-p step's masses of the slice, its share of Z_k last
  SearchState* states;  // [s % 2][r] the row's search (written by split 0)
  Draw* draws;          // [r][k] the slice's draw
};

// The split kernels' one argument: the call's parameters, the workspace's arrays, the search step.
struct SplitArgs {
  SampleParams p;
  SplitWorkspace ws;
  int64_t split_length;  // tokens per slice, a multiple of 32: the last slices may be short or empty
  int32_t step;          // sample_step_kernel's step, in [0, kSteps)
};

struct Slice {
  int64_t begin;
  int64_t end;
};

__device__ __forceinline__ Slice block_slice(const SplitArgs& a) {
  const int64_t begin = min(int64_t(a.p.vocab), int64_t(blockIdx.x) * a.split_length);
  return {begin, min(int64_t(a.p.vocab), begin + a.split_length)};
}

// The row's statistics from its splits' (warp 0 combines them, exact in any order), to every thread.
__device__ __forceinline__ RowStats gather_stats(const SplitArgs& a, int64_t row, Shared& sh) {
  if (threadIdx.x < kWarpSize) {
    const RowStats* split_stats = a.ws.stats + row * a.p.splits;
    RowStats s = no_stats();
    for (int k = threadIdx.x; k < a.p.splits; k += kWarpSize) add_stats(s, split_stats[k]);
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
      RowStats other;
      other.z_max = __shfl_xor_sync(kFullMask, s.z_max, offset);
      other.arg_max = __shfl_xor_sync(kFullMask, s.arg_max, offset);
      other.key_min = __shfl_xor_sync(kFullMask, s.key_min, offset);
      other.nan_count = __shfl_xor_sync(kFullMask, s.nan_count, offset);
      other.posinf_count = __shfl_xor_sync(kFullMask, s.posinf_count, offset);
      add_stats(s, other);
    }
    if (threadIdx.x == 0) sh.stats = s;
  }
  __syncthreads();
  return sh.stats;
}

// totals[k] = the sum over the row's splits of partials[split][k] (K values per split), added in split
// order so that every block of the row gets the same bits; staged through `stage` 16 splits at a time
// (the block loads a chunk's values together, not one split after another), `total` hands the sums to
// every thread.
template <class T, int K>
__device__ __forceinline__ void sum_over_splits(const T* partials, int splits, T (&stage)[kMaxWarps][kSums],
                                                T (&total)[kSums], T (&totals)[K]) {
  static_assert(K <= kSums, "Shared stages kSums values per split");
  T sum = 0;  // thread k < K: total k
  for (int first = 0; first < splits; first += kMaxWarps) {
    const int chunk = min(kMaxWarps, splits - first);
    __syncthreads();  // the previous chunk is summed
    for (int j = threadIdx.x; j < chunk * K; j += blockDim.x) stage[j / K][j % K] = partials[int64_t(first) * K + j];
    __syncthreads();
    if (threadIdx.x < K)
      for (int k = 0; k < chunk; ++k) sum += stage[k][threadIdx.x];
  }
  if (threadIdx.x < K) total[threadIdx.x] = sum;
  __syncthreads();
#pragma unroll
  for (int k = 0; k < K; ++k) totals[k] = total[k];
}

// The row's search for `step` (kSteps: after the last pass, the threshold in lo). Step 0 opens top-k as
// sample_kernel does; every later step narrows the previous step's bracket by that step's partials
// (the first top-p partials also give Z_k, so the target), and step kSearchSteps then takes t_k = lo
// and opens top-p on [t_k, ...) with Z_k still to measure. Uniform over the block.
__device__ __forceinline__ SearchState search_state(const SplitArgs& a, int64_t row, int step, const RowInput& r,
                                                    const RowSummary& s, Shared& sh) {
  if (step == 0) return {top_k_bracket(s, r, a.p.vocab), -1.0};
  const int64_t previous = (step - 1) % 2 * a.p.rows + row;
  SearchState state = a.ws.states[previous];
  if (is_open(state.bracket)) {
    if (step <= kSearchSteps) {
      int32_t counts[kPivots];
      sum_over_splits(a.ws.counts + previous * a.p.splits * kPivots, a.p.splits, sh.i, sh.i_out, counts);
      state.bracket = narrow(state.bracket, counts, r.top_k);
    } else {
      double masses[kSums];
      sum_over_splits(a.ws.masses + previous * a.p.splits * kSums, a.p.splits, sh.d, sh.d_out, masses);
      if (state.target < 0.0) state.target = r.top_p * masses[kPivots];
      state.bracket = narrow(state.bracket, masses, state.target);
    }
  }
  if (step == kSearchSteps) state = {top_p_bracket(state.bracket.lo, s, r), -1.0};
  return state;
}

// Calls f(row, r, s) for the rows first, first + step, ... (the block's share of the grid's rows) with the
// row's input and the summary of its splits' statistics; sh is reused by the next row.
template <class F>
__device__ __forceinline__ void for_each_split_row(const SplitArgs& a, int64_t first, int64_t step, Shared& sh,
                                                   F&& f) {
  for (int64_t row = first; row < a.p.rows; row += step) {
    const RowInput r = load_row(a.p, row);
    f(row, r, summarize(gather_stats(a, row, sh), r));
    __syncthreads();  // sh is reused by the next row
  }
}

// Grid (splits, rows; rows beyond the grid loop): the statistics of each slice.
__global__ void __launch_bounds__(kMaxThreads) sample_stats_kernel(const SplitArgs a) {
  __shared__ Shared sh;
  const Slice slice = block_slice(a);
  for (int64_t row = blockIdx.y; row < a.p.rows; row += gridDim.y) {
    const RowStats s = stats_pass(a.p, load_row(a.p, row), slice.begin, slice.end, sh);
    if (threadIdx.x == 0) a.ws.stats[row * a.p.splits + blockIdx.x] = s;
    __syncthreads();  // sh is reused by the next row
  }
}

// Grid (splits, rows): search step a.step, one pass over each slice whose row's bracket is open.
__global__ void __launch_bounds__(kMaxThreads) sample_step_kernel(const SplitArgs a) {
  __shared__ Shared sh;
  const Slice slice = block_slice(a);
  for_each_split_row(a, blockIdx.y, gridDim.y, sh, [&](int64_t row, const RowInput& r, const RowSummary& s) {
    const SearchState state = search_state(a, row, a.step, r, s, sh);
    const int64_t current = a.step % 2 * a.p.rows + row;
    if (blockIdx.x == 0 && threadIdx.x == 0) a.ws.states[current] = state;
    if (is_open(state.bracket)) {
      const int64_t partial = current * a.p.splits + blockIdx.x;
      if (a.step < kSearchSteps) {
        int32_t counts[kPivots];
        count_pass(a.p, r, slice.begin, slice.end, state.bracket, sh, counts);
        if (threadIdx.x == 0)
#pragma unroll
          for (int k = 0; k < kPivots; ++k) a.ws.counts[partial * kPivots + k] = counts[k];
      } else {
        double masses[kSums];
        mass_pass(a.p, r, slice.begin, slice.end, state.bracket, state.target < 0.0, s.z_max64, sh, masses);
        if (threadIdx.x == 0)
#pragma unroll
          for (int k = 0; k < kSums; ++k) a.ws.masses[partial * kSums + k] = masses[k];
      }
    }
  });
}

// Grid (splits, rows): the threshold from the last step's partials, then the draw over each slice.
__global__ void __launch_bounds__(kMaxThreads) sample_draw_kernel(const SplitArgs a) {
  __shared__ Shared sh;
  const Slice slice = block_slice(a);
  for_each_split_row(a, blockIdx.y, gridDim.y, sh, [&](int64_t row, const RowInput& r, const RowSummary& s) {
    const int32_t threshold = search_state(a, row, kSteps, r, s, sh).bracket.lo;  // max(t_k, t_p)
    const Draw d = draw_pass(a.p, r, row, slice.begin, slice.end, s, threshold, sh);
    if (a.p.token != nullptr && threadIdx.x == 0) a.ws.draws[row * a.p.splits + blockIdx.x] = d;
  });
}

// Grid (rows), one warp per block: each row's token, the best draw of its splits (the larger score, the
// lower token on equal scores, as within a slice), and its log-prob over the splits' kept mass.
__global__ void __launch_bounds__(kWarpSize) sample_merge_kernel(const SplitArgs a) {
  __shared__ Shared sh;
  for_each_split_row(a, blockIdx.x, gridDim.x, sh, [&](int64_t row, const RowInput& r, const RowSummary& s) {
    const Draw* split_draws = a.ws.draws + row * a.p.splits;
    Draw d = {-INFINITY, INT32_MAX, 0.0f};
    for (int k = threadIdx.x; k < a.p.splits; k += blockDim.x) {
      if (beats(split_draws[k].best, split_draws[k].token, d.best, d.token)) {
        d.best = split_draws[k].best;
        d.token = split_draws[k].token;
      }
      d.kept_sum += split_draws[k].kept_sum;
    }
    block_argmax(d.best, d.token, sh);
    if (a.p.logprob != nullptr) d.kept_sum = block_sum_float(d.kept_sum, sh);
    if (threadIdx.x == 0) write_draw(a.p, row, r, s, d);
  });
}

}  // namespace sampling
}  // namespace fastattn
