// Warp and block reductions (fixed butterfly order: the result is the same bits on every run).
#pragma once

#include <cuda_runtime.h>

namespace fastattn {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarpSize = 32;

// Every lane gets the sum of v over the warp.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
  return v;
}

// Every thread of the block gets the sums of v[0..K) over the block. blockDim.x is a multiple of 32
// (at most 1024); `scratch` holds 32 * K floats of shared memory. Call from every thread of the
// block (it synchronizes); it may be called again right away with the same scratch.
template <int K>
__device__ __forceinline__ void block_sum(float (&v)[K], float* scratch) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int warps = blockDim.x / kWarpSize;
#pragma unroll
  for (int k = 0; k < K; ++k) v[k] = warp_sum(v[k]);
  __syncthreads();  // the previous call's readers are done with scratch
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) scratch[k * kWarpSize + warp] = v[k];
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < K; ++k) v[k] = warp_sum(lane < warps ? scratch[k * kWarpSize + lane] : 0.0f);
}

}  // namespace fastattn
