// Properties of the current GPU the launchers size their grids by (cached per device).
#pragma once

#include <cuda_runtime.h>

#include <array>
#include <atomic>

#include <c10/util/Exception.h>

namespace fastattn {

// Number of streaming multiprocessors of CUDA device `device`.
inline int sm_count(int device) {
  static std::array<std::atomic<int>, 64> cache{};
  if (device >= 0 && device < int(cache.size())) {
    const int known = cache[device].load(std::memory_order_relaxed);
    if (known > 0) return known;
  }
  int count = 0;
  const cudaError_t err = cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device);
  TORCH_CHECK(err == cudaSuccess, "fastattn: cannot read the multiprocessor count of cuda:", device, ": ",
              cudaGetErrorString(err));
  if (device >= 0 && device < int(cache.size())) cache[device].store(count, std::memory_order_relaxed);
  return count;
}

}  // namespace fastattn
