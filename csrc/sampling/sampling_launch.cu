// Launcher of the sampling kernel: one block per row, up to 512 threads (fewer for short rows).
#include <algorithm>

#include "sampling/sampling_kernels.cuh"

namespace fastattn {

cudaError_t launch_sample(const SampleParams& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  // Each search pass costs ~16 compares (top-k) or a float64 exp and 16 adds (top-p) per token:
  // 512 threads keep a 128k-token row at ~256 tokens a thread per pass.
  const int64_t threads = std::min<int64_t>(
      sampling::kMaxThreads, std::max<int64_t>(kWarpSize, ceil_div(ceil_div(p.vocab, 8), kWarpSize) * kWarpSize));
  const int64_t grid = std::min<int64_t>(p.rows, 2147483647);
  sampling::sample_kernel<<<unsigned(grid), unsigned(threads), 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace fastattn
