// Dispatch of the attention kernels on dtype and head-dim bucket (dispatch's buckets must match
// generate_instantiations.py), the backward's preprocess launch, and what the kernels need of a device
// (shared memory, a kernel image).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <type_traits>

#include "attention/attention_bwd.cuh"
#include "attention/attention_fwd.cuh"
#include "attention/attention_preprocess.cuh"
#include "attention/attention_run.h"
#include "attention/attention_simt.cuh"

namespace fastattn {

namespace {

// Calls run(std::type_identity<T>{}, bucket) for p's dtype T and head dim D, the bucket an
// std::integral_constant: for fp16/bf16 the tensor-core kernels' HD, the smallest of {32, 64, 96, 128,
// 192, 256} >= D (zero-padded in shared memory); for fp32 the float32 kernels' DC, 32 * DC >= D with DC
// in {1, 2, 4, 8}.
template <class F>
cudaError_t dispatch(const AttnParams& p, F&& run) {
  const int d = p.head_dim;
  const auto half = [&](auto t) {
    if (d <= 32) return run(t, std::integral_constant<int, 32>{});
    if (d <= 64) return run(t, std::integral_constant<int, 64>{});
    if (d <= 96) return run(t, std::integral_constant<int, 96>{});
    if (d <= 128) return run(t, std::integral_constant<int, 128>{});
    if (d <= 192) return run(t, std::integral_constant<int, 192>{});
    return run(t, std::integral_constant<int, 256>{});
  };
  const std::type_identity<float> fp32{};
  switch (p.dtype) {
    case DType::kFloat16:
      return half(std::type_identity<__half>{});
    case DType::kBFloat16:
      return half(std::type_identity<__nv_bfloat16>{});
    default:
      if (d <= 32) return run(fp32, std::integral_constant<int, 1>{});
      if (d <= 64) return run(fp32, std::integral_constant<int, 2>{});
      if (d <= 128) return run(fp32, std::integral_constant<int, 4>{});
      return run(fp32, std::integral_constant<int, 8>{});
  }
}

}  // namespace

AttnSharedMemory attention_shared_memory(DType dtype, int head_dim) {
  AttnParams p{};
  p.dtype = dtype;
  p.head_dim = head_dim;
  AttnSharedMemory bytes{};
  dispatch(p, [&]<typename T, int B>(std::type_identity<T>, std::integral_constant<int, B>) {
    if constexpr (std::is_same_v<T, float>) {
      bytes.forward = attn::simt::FwdSmem<B>::kBytes;
      bytes.backward = std::max(attn::simt::DkdvSmem<B>::kBytes, attn::simt::DqSmem<B>::kBytes);
    } else {
      bytes.forward = attn::FwdShared<T, B>::kBytes;
      bytes.backward = std::max(attn::DkdvShared<T, B>::kBytes, attn::DqShared<T, B>::kBytes);
    }
    return cudaSuccess;
  });
  bytes.decode = attention_decode_shared_memory(head_dim);
  return bytes;
}

cudaError_t kernel_image_status(int device) {
  int previous = 0;
  cudaError_t err = cudaGetDevice(&previous);
  if (err != cudaSuccess) return err;
  if ((err = cudaSetDevice(device)) != cudaSuccess) return err;
  cudaFuncAttributes attributes{};
  const cudaError_t status = cudaFuncGetAttributes(&attributes, attn::attn_bwd_preprocess_kernel);
  cudaSetDevice(previous);
  return status;
}

cudaError_t launch_attention_fwd(const AttnParams& p, cudaStream_t stream) {
  if (p.head_dim < 1 || p.head_dim > kMaxHeadDim) return cudaErrorInvalidValue;
  return dispatch(p, [&]<typename T, int B>(std::type_identity<T>, std::integral_constant<int, B>) {
    if constexpr (std::is_same_v<T, float>) return attn::run_fwd_simt<B>(p, stream);
    else return attn::run_fwd<T, B>(p, stream);
  });
}

cudaError_t launch_attention_bwd(const AttnParams& p, cudaStream_t stream) {
  if (p.head_dim < 1 || p.head_dim > kMaxHeadDim) return cudaErrorInvalidValue;
  const cudaError_t err = attn::run_bwd_preprocess(p, stream);
  if (err != cudaSuccess) return err;
  return dispatch(p, [&]<typename T, int B>(std::type_identity<T>, std::integral_constant<int, B>) {
    if constexpr (std::is_same_v<T, float>) return attn::run_bwd_simt<B>(p, stream);
    else return attn::run_bwd<T, B>(p, stream);
  });
}

}  // namespace fastattn
