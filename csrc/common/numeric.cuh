// Device helpers: conversions between the storage types and float, and loads/stores of 8-element
// chunks whose element type is a runtime DType (memory-bound kernels branch on it once per chunk, a
// warp-uniform branch, instead of multiplying template instantiations).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/types.h"

namespace fastattn {

constexpr int kChunk = 8;  // elements per chunk: 16 bytes of fp16/bf16, two 16-byte vectors of fp32

template <typename T> __device__ __forceinline__ float to_float(T v);
template <> __device__ __forceinline__ float to_float<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

__device__ __forceinline__ float load_scalar(const void* base, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::kFloat16: return __half2float(static_cast<const __half*>(base)[i]);
    case DType::kBFloat16: return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]);
    default: return static_cast<const float*>(base)[i];
  }
}

__device__ __forceinline__ void store_scalar(void* base, DType dtype, int64_t i, float v) {
  switch (dtype) {
    case DType::kFloat16: static_cast<__half*>(base)[i] = __float2half_rn(v); break;
    case DType::kBFloat16: static_cast<__nv_bfloat16*>(base)[i] = __float2bfloat16_rn(v); break;
    default: static_cast<float*>(base)[i] = v; break;
  }
}

// v[0..8) = base[i .. i + 8) as float; entries at or past `n` read as 0.
// `vec`: base + i is 16-byte aligned and i + 8 <= n, so the chunk is read with 16-byte loads.
__device__ __forceinline__ void load_chunk(const void* base, DType dtype, int64_t i, int64_t n, bool vec,
                                           float v[kChunk]) {
  if (vec) {
    if (dtype == DType::kFloat32) {
      const float4* p = reinterpret_cast<const float4*>(static_cast<const float*>(base) + i);
      const float4 a = p[0], b = p[1];
      v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
      v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
    } else {
      const uint4 raw = *reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(base) + i);
      const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
      for (int w = 0; w < 4; ++w) {
        const uint16_t lo = static_cast<uint16_t>(words[w] & 0xffffu), hi = static_cast<uint16_t>(words[w] >> 16);
        if (dtype == DType::kFloat16) {
          v[2 * w] = __half2float(__ushort_as_half(lo));
          v[2 * w + 1] = __half2float(__ushort_as_half(hi));
        } else {
          v[2 * w] = __bfloat162float(__ushort_as_bfloat16(lo));
          v[2 * w + 1] = __bfloat162float(__ushort_as_bfloat16(hi));
        }
      }
    }
    return;
  }
#pragma unroll
  for (int e = 0; e < kChunk; ++e) v[e] = i + e < n ? load_scalar(base, dtype, i + e) : 0.0f;
}

// base[i .. min(i + 8, n)) = v, rounded to `dtype` (round to nearest even). `vec` as for load_chunk.
__device__ __forceinline__ void store_chunk(void* base, DType dtype, int64_t i, int64_t n, bool vec,
                                            const float v[kChunk]) {
  if (vec) {
    if (dtype == DType::kFloat32) {
      float4* p = reinterpret_cast<float4*>(static_cast<float*>(base) + i);
      p[0] = make_float4(v[0], v[1], v[2], v[3]);
      p[1] = make_float4(v[4], v[5], v[6], v[7]);
    } else {
      uint32_t words[4];
#pragma unroll
      for (int w = 0; w < 4; ++w) {
        uint16_t lo, hi;
        if (dtype == DType::kFloat16) {
          lo = __half_as_ushort(__float2half_rn(v[2 * w]));
          hi = __half_as_ushort(__float2half_rn(v[2 * w + 1]));
        } else {
          lo = __bfloat16_as_ushort(__float2bfloat16_rn(v[2 * w]));
          hi = __bfloat16_as_ushort(__float2bfloat16_rn(v[2 * w + 1]));
        }
        words[w] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
      }
      *reinterpret_cast<uint4*>(static_cast<uint16_t*>(base) + i) = make_uint4(words[0], words[1], words[2], words[3]);
    }
    return;
  }
#pragma unroll
  for (int e = 0; e < kChunk; ++e)
    if (i + e < n) store_scalar(base, dtype, i + e, v[e]);
}

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace fastattn
