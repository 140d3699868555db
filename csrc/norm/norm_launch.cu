// Launchers of the norm kernels: pick the kernel variant and the grid from the row length.
//
//   cols <= 1024           one warp per row, 4 rows per block, the row in registers (4 chunks a lane)
//   cols <= 16384          one block per row (32..512 threads, about 4 chunks each), the row in registers
//   longer                 one block of 512 threads per row, each pass re-reads the row
//
// Six kernels in all (3 variants x fwd/bwd) plus the two dW/dB kernels: the dtypes are runtime
// arguments (see common/numeric.cuh), so this translation unit compiles in seconds.
#include <algorithm>

#include "norm/norm_kernels.cuh"

namespace fastattn {

namespace {

constexpr int64_t kWarpMaxCols = int64_t(kWarpSize) * norm::kCache * kChunk;         // 1024
constexpr int64_t kCachedMaxCols = int64_t(norm::kMaxThreads) * norm::kCache * kChunk;  // 16384
constexpr int64_t kMaxGrid = 2147483647;  // gridDim.x limit; the kernels loop over further rows

int block_threads(int64_t cols) {
  const int64_t chunks_per_thread = norm::kCache;
  const int64_t threads = ceil_div(ceil_div(ceil_div(cols, kChunk), chunks_per_thread), kWarpSize) * kWarpSize;
  return int(std::min<int64_t>(std::max<int64_t>(threads, kWarpSize), norm::kMaxThreads));
}

template <class Params, class WarpKernel, class CachedKernel, class StreamKernel>
void launch_rows(const Params& p, cudaStream_t stream, WarpKernel warp_kernel, CachedKernel cached_kernel,
                 StreamKernel stream_kernel) {
  if (p.cols <= kWarpMaxCols) {
    const int64_t grid = std::min(ceil_div(p.rows, norm::kWarpRowsPerBlock), kMaxGrid);
    warp_kernel<<<unsigned(grid), norm::kWarpRowsPerBlock * kWarpSize, 0, stream>>>(p);
  } else if (p.cols <= kCachedMaxCols) {
    cached_kernel<<<unsigned(std::min(p.rows, kMaxGrid)), block_threads(p.cols), 0, stream>>>(p);
  } else {
    stream_kernel<<<unsigned(std::min(p.rows, kMaxGrid)), norm::kMaxThreads, 0, stream>>>(p);
  }
}

}  // namespace

cudaError_t launch_norm_fwd(const NormFwdParams& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  launch_rows(p, stream, norm::norm_fwd_kernel<true, norm::kCache>, norm::norm_fwd_kernel<false, norm::kCache>,
              norm::norm_fwd_kernel<false, 0>);
  return cudaGetLastError();
}

int norm_bwd_splits(int64_t rows, int64_t cols, int sm_count) {
  // Enough blocks to fill the GPU about 4 times over, each summing at least 64 rows.
  const int64_t col_blocks = ceil_div(cols, norm::kPartialCols);
  const int64_t wanted = ceil_div(int64_t(4) * std::max(sm_count, 1), col_blocks);
  const int64_t most = std::max<int64_t>(ceil_div(rows, 64), 1);
  return int(std::min<int64_t>(std::min(wanted, most), 65535));
}

cudaError_t launch_norm_bwd(const NormBwdParams& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  launch_rows(p, stream, norm::norm_bwd_dx_kernel<true, norm::kCache>,
              norm::norm_bwd_dx_kernel<false, norm::kCache>, norm::norm_bwd_dx_kernel<false, 0>);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || (p.dweight == nullptr && p.dbias == nullptr)) return err;
  const dim3 partial_grid(unsigned(ceil_div(p.cols, norm::kPartialCols)), unsigned(p.splits));
  norm::norm_bwd_partial_kernel<<<partial_grid, dim3(norm::kPartialCols, norm::kPartialRows), 0, stream>>>(p);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  constexpr int kFinishThreads = 256;
  norm::norm_bwd_finish_kernel<<<unsigned(ceil_div(p.cols, kFinishThreads)), kFinishThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace fastattn
