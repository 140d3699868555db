// The backward's preprocess, shared by the tensor-core and fp32 paths: per row of lse's layout,
// delta = sum_d dout * out - dlse (float32) and, with sinks, the row's share of dsink,
// -exp(sink - lse) * delta (the sink's probability times its dP - delta, dP = 0: it has no value).
#pragma once

#include "attention/attention_common.cuh"

namespace fastattn {
namespace attn {

// One warp per row; dtypes at run time.
__global__ void __launch_bounds__(128) attn_bwd_preprocess_kernel(const AttnParams p) {
  const int64_t rows = p.lse_batches * p.heads_q * p.lse_rows;
  const int64_t row = int64_t(blockIdx.x) * 4 + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;  // the whole warp: one row per warp
  const int64_t bh = row / p.lse_rows;
  const int64_t i = row % p.lse_rows;  // packed: the row among all sequences' (batch stride 0)
  const int b = int(bh / p.heads_q), h = int(bh % p.heads_q);
  const int64_t o_base = b * p.o_stride_b + h * p.o_stride_h + i * p.o_stride_n;
  const int64_t do_base = b * p.do_stride_b + h * p.do_stride_h + i * p.do_stride_n;
  float acc = 0.0f;
  for (int d = lane; d < p.head_dim; d += 32)
    acc += load_scalar(p.out, p.dtype, o_base + d) * load_scalar(p.dout, p.dtype, do_base + d);
  acc = warp_sum(acc);
  if (lane == 0) {
    const float delta = acc - (p.dlse != nullptr ? p.dlse[row] : 0.0f);
    p.delta[row] = delta;
    if (p.sinks != nullptr) {
      const float lse = p.lse[row];  // -inf only with a sink of -inf and no visible key: no share
      p.dsink_rows[row] = lse == -INFINITY ? 0.0f : -exp2f((p.sinks[h] - lse) * kLog2e) * delta;
    }
  }
}

// One warp per row, 4 rows a block.
inline cudaError_t run_bwd_preprocess(const AttnParams& p, cudaStream_t stream) {
  const int64_t rows = p.lse_batches * p.heads_q * p.lse_rows;
  if (rows == 0) return cudaSuccess;
  if (ceil_div(rows, 4) > 2147483647) return cudaErrorInvalidConfiguration;
  attn_bwd_preprocess_kernel<<<unsigned(ceil_div(rows, 4)), 128, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace attn
}  // namespace fastattn
