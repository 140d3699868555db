// Sampling with temperature, top-k, top-p and min-p: the arguments of the kernel (no torch types).
// The semantics, the threshold searches and the random stream are those of kernels/sampling.py
// (its docstring is the specification; sampling_kernels.cuh follows it step by step).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

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
  int64_t rows;
  int64_t row_stride;         // elements
  int32_t vocab;              // >= 1
  DType dtype;                // of logits
};

cudaError_t launch_sample(const SampleParams& params, cudaStream_t stream);

}  // namespace fastattn
