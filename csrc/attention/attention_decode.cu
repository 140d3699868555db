// Dispatch of the split-KV decode kernels (attention_decode.cuh) on dtype and head-dim bucket.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "attention/attention_decode.cuh"

namespace fastattn {

namespace {

// f(std::integral_constant<int, DC>{}) for the head-dim bucket of d: 32 * DC >= d with DC in {1, 2, 4,
// 8}, as the float32 attention kernels.
template <typename F>
auto with_head_dim_bucket(int d, F&& f) {
  if (d <= 32) return f(std::integral_constant<int, 1>{});
  if (d <= 64) return f(std::integral_constant<int, 2>{});
  if (d <= 128) return f(std::integral_constant<int, 4>{});
  return f(std::integral_constant<int, 8>{});
}

template <typename T>
cudaError_t dispatch_decode(const AttnParams& p, cudaStream_t stream) {
  return with_head_dim_bucket(p.head_dim, [&]<int DC>(std::integral_constant<int, DC>) {
    return attn::decode::run_decode<T, DC>(p, stream);
  });
}

}  // namespace

size_t attention_decode_shared_memory(int head_dim) {
  return with_head_dim_bucket(head_dim, []<int DC>(std::integral_constant<int, DC>) {
    return attn::decode::Smem<DC>::kBytes;
  });
}

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
