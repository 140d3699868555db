// Sampling with temperature, top-k, top-p and min-p: the arguments of the kernel (no torch types).
// The semantics, the threshold searches and the random stream are those of kernels/sampling.py
// (its docstring is the specification; sampling_kernels.cuh follows it step by step).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "common/limits.h"
#include "common/types.h"

namespace fastattn {

struct SampleParams {
  const void* logits;         // (rows, vocab), row stride `row_stride`, last dim contiguous
  const float* temperature;   // (rows,) >= 0; 0 = greedy
  const int32_t* top_k;       // (rows,) in [1, vocab]; vocab = off
  const double* top_p;        // (rows,) in (0, 1]; 1 = off
  const double* min_p;        // (rows,) in [0, 1]; 0 = off
  const int64_t* seed;        // (rows,) Philox keys
  int64_t* token;             // (rows,) output, or nullptr (no draw)
  float* logprob;             // (rows,) output, or nullptr
  int8_t* mask;               // (rows, vocab) output (1 = kept), contiguous, or nullptr
  void* workspace;            // split_workspace_bytes(rows, splits) bytes (none for splits == 1)
  int64_t rows;
  int64_t row_stride;         // elements
  int32_t vocab;              // >= 1
  int32_t splits;             // blocks per row, in [1, vocab]: 1 = the single-block kernel
  DType dtype;                // of logits
};

// Launcher (sampling_launch.cu): every kernel of the call on `stream`, no host synchronization (so a
// CUDA graph can capture it). Returns the launch status (cudaGetLastError).
cudaError_t launch_sample(const SampleParams& params, cudaStream_t stream);

// The split path's limits (kernels/sampling.py's MAX_SPLITS and MIN_SPLIT_TOKENS). Each block of a
// search step reads every split's partials of its row: 32 splits x 17 float64 = 4.4 KB per block and
// step, L2-resident; 128 splits would read 17 KB per block x 128 blocks = 2.2 MB per step, four times
// the 512 KB of a 128k-token float32 row. A split of >= 4096 tokens is >= 8 strides of a 512-thread
// block per pass, enough loads in flight per thread to stream its slice.
constexpr int kMaxSplits = 32;
constexpr int64_t kMinSplitTokens = 4096;

// Blocks per row for `rows` rows of `vocab` tokens on a GPU of `sm_count` SMs, as kernels/sampling.py's
// split_count: the largest power of two <= min(kMaxSplits, sm_count / rows, vocab / kMinSplitTokens),
// and 1 (the single-block kernel) when that minimum is < 2.
int sample_splits(int64_t rows, int64_t vocab, int sm_count);

// Bytes of SampleParams::workspace for `rows` rows of `splits` blocks each (0 for splits == 1).
size_t split_workspace_bytes(int64_t rows, int splits);

}  // namespace fastattn
