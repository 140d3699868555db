// LayerNorm / RMSNorm with a fused residual add: the arguments of the kernels (no torch types).
//
// Row r of the (rows, cols) input: s = x[r] + residual[r] (or x[r]), statistics in float32 over s,
//   LayerNorm: y = (s - mean) * rstd * weight + bias,   rstd = 1 / sqrt(mean((s - mean)^2) + eps)
//   RMSNorm:   y = s * rstd * weight,                    rstd = 1 / sqrt(mean(s^2) + eps)
// Every tensor has its own runtime dtype (fp16/bf16/fp32), so fp32 weights with fp16 activations
// or an fp32 residual stream need no extra instantiation.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/types.h"

namespace fastattn {

struct NormFwdParams {
  const void* x;         // (rows, cols), row stride x_row_stride, last dim contiguous
  const void* residual;  // (rows, cols) or nullptr
  const void* weight;    // (cols,) contiguous, or nullptr (= 1)
  const void* bias;      // (cols,) contiguous, or nullptr (= 0); LayerNorm only
  void* y;               // (rows, cols) output, contiguous, x_dtype
  void* residual_out;    // (rows, cols) output s, contiguous, or nullptr
  float* mean;           // (rows,) output, or nullptr (RMSNorm)
  float* rstd;           // (rows,) output
  int64_t rows;          // M
  int64_t cols;          // N >= 1
  int64_t x_row_stride;         // elements
  int64_t residual_row_stride;  // elements
  DType x_dtype;  // also the dtype of y
  DType residual_dtype;
  DType residual_out_dtype;
  DType weight_dtype;
  DType bias_dtype;
  float eps;
  bool rms;  // RMSNorm (no mean, no bias)
  bool vec;  // every row of every tensor starts 16-byte aligned and cols % 8 == 0: 16-byte accesses
};

struct NormBwdParams {
  const void* dy;             // (rows, cols) upstream gradient of y, row stride dy_row_stride
  const void* x;              // (rows, cols) forward input, row stride x_row_stride
  const void* residual;       // (rows, cols) forward residual (s = x + residual), or nullptr
  const void* weight;         // (cols,) or nullptr
  const float* mean;          // (rows,) forward statistics (nullptr for RMSNorm)
  const float* rstd;          // (rows,)
  const void* dresidual_out;  // (rows, cols) upstream gradient of s, or nullptr
  void* dx;                   // (rows, cols) output, contiguous, dx_dtype
  void* dresidual;            // (rows, cols) output, contiguous, residual_dtype; nullptr without residual
  float* partial_dweight;     // (splits, cols) scratch for the deterministic dW reduction, or nullptr
  float* partial_dbias;       // (splits, cols) scratch for dB, or nullptr
  void* dweight;              // (cols,) output in weight_dtype, or nullptr
  void* dbias;                // (cols,) output in bias_dtype, or nullptr
  int64_t rows;
  int64_t cols;
  int64_t dy_row_stride;
  int64_t x_row_stride;
  int64_t residual_row_stride;
  int64_t dresidual_out_row_stride;
  int64_t rows_per_split;  // rows summed by one dW/dB partial
  int splits;              // number of partials: norm_bwd_splits(rows, cols, sm_count)
  DType dy_dtype;
  DType x_dtype;
  DType residual_dtype;
  DType weight_dtype;
  DType bias_dtype;
  DType dresidual_out_dtype;
  DType dx_dtype;
  bool rms;
  bool vec;  // as in NormFwdParams, over dy, x, residual, weight, dresidual_out, dx, dresidual
};

// Launchers (norm_launch.cu). They return the launch status (cudaGetLastError).
cudaError_t launch_norm_fwd(const NormFwdParams& params, cudaStream_t stream);
cudaError_t launch_norm_bwd(const NormBwdParams& params, cudaStream_t stream);
// How many row partials dW/dB are split into (a function of the shape and the GPU only, so the
// reduction order, and the result, are the same on every run).
int norm_bwd_splits(int64_t rows, int64_t cols, int sm_count);

}  // namespace fastattn
