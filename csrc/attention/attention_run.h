// The kernel runners of each (dtype, head-dim bucket): declared here, defined in attention_run.cuh,
// instantiated one bucket per translation unit under instantiations/ (generate_instantiations.py).
#pragma once

#include <cuda_runtime.h>

#include "attention/attention_params.h"

namespace fastattn {
namespace attn {

// Tensor-core kernels, T = __half or __nv_bfloat16, HD = head-dim bucket.
template <typename T, int HD> cudaError_t run_fwd(const AttnParams& p, cudaStream_t stream);
template <typename T, int HD> cudaError_t run_bwd(const AttnParams& p, cudaStream_t stream);  // dK/dV, then dQ
// float32 kernels, head-dim bucket 32 * DC.
template <int DC> cudaError_t run_fwd_simt(const AttnParams& p, cudaStream_t stream);
template <int DC> cudaError_t run_bwd_simt(const AttnParams& p, cudaStream_t stream);

}  // namespace attn
}  // namespace fastattn
