// Dispatch of the split-KV decode kernels (attention_decode.cuh) on dtype and head-dim bucket.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "attention/attention_decode.cuh"

namespace fastattn {

namespace {

// 32 * DC >= D with DC in {1, 2, 4, 8}, as the float32 attention kernels.
template <typename T>
cudaError_t dispatch_decode(const AttnParams& p, cudaStream_t stream) {
  const int d = p.head_dim;
  if (d <= 32) return attn::decode::run_decode<T, 1>(p, stream);
  if (d <= 64) return attn::decode::run_decode<T, 2>(p, stream);
  if (d <= 128) return attn::decode::run_decode<T, 4>(p, stream);
  return attn::decode::run_decode<T, 8>(p, stream);
}

}  // namespace

cudaError_t launch_attention_decode(const AttnParams& p, cudaStream_t stream) {
  if (p.head_dim < 1 || p.head_dim > kMaxHeadDim) return cudaErrorInvalidValue;
  switch (p.dtype) {
    case DType::kFloat16:
      return dispatch_decode<__half>(p, stream);
    case DType::kBFloat16:
      return dispatch_decode<__nv_bfloat16>(p, stream);
    default:
      return dispatch_decode<float>(p, stream);
  }
}

}  // namespace fastattn
