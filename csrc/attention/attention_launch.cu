// Dispatch of the attention kernels on dtype and head-dim bucket (the buckets of dispatch_half and
// dispatch_simt must match generate_instantiations.py), the backward's preprocess launch, and what the
// kernels need of a device (shared memory, a kernel image).
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

// fp16/bf16: the smallest bucket >= D of {32, 64, 96, 128, 192, 256} (zero-padded in shared memory).
template <class F>
cudaError_t dispatch_half(const AttnParams& p, F&& run) {
  const int d = p.head_dim;
  if (d <= 32) return run(std::integral_constant<int, 32>{});
  if (d <= 64) return run(std::integral_constant<int, 64>{});
  if (d <= 96) return run(std::integral_constant<int, 96>{});
  if (d <= 128) return run(std::integral_constant<int, 128>{});
  if (d <= 192) return run(std::integral_constant<int, 192>{});
  return run(std::integral_constant<int, 256>{});
}

// fp32: 32 * DC >= D with DC in {1, 2, 4, 8}.
template <class F>
cudaError_t dispatch_simt(const AttnParams& p, F&& run) {
  const int d = p.head_dim;
  if (d <= 32) return run(std::integral_constant<int, 1>{});
  if (d <= 64) return run(std::integral_constant<int, 2>{});
  if (d <= 128) return run(std::integral_constant<int, 4>{});
  return run(std::integral_constant<int, 8>{});
}

}  // namespace

AttnSharedMemory attention_shared_memory(DType dtype, int head_dim) {
  AttnParams p{};
  p.dtype = dtype;
  p.head_dim = head_dim;
  AttnSharedMemory bytes{};
  const auto record_half = [&](auto hd) {
    using T = __half;  // bf16 tiles have the same size
    constexpr int HD = decltype(hd)::value;
    bytes.forward = attn::FwdShared<T, HD>::kBytes;
    bytes.backward = std::max(attn::DkdvShared<T, HD>::kBytes, attn::DqShared<T, HD>::kBytes);
    return cudaSuccess;
  };
  const auto record_simt = [&](auto dc) {
    constexpr int DC = decltype(dc)::value;
    bytes.forward = attn::simt::FwdSmem<DC>::kBytes;
    bytes.backward = std::max(attn::simt::DkdvSmem<DC>::kBytes, attn::simt::DqSmem<DC>::kBytes);
    return cudaSuccess;
  };
  if (dtype == DType::kFloat32)
    dispatch_simt(p, record_simt);
  else
    dispatch_half(p, record_half);
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
  switch (p.dtype) {
    case DType::kFloat16:
      return dispatch_half(p, [&](auto hd) { return attn::run_fwd<__half, decltype(hd)::value>(p, stream); });
    case DType::kBFloat16:
      return dispatch_half(p, [&](auto hd) { return attn::run_fwd<__nv_bfloat16, decltype(hd)::value>(p, stream); });
    default:
      return dispatch_simt(p, [&](auto dc) { return attn::run_fwd_simt<decltype(dc)::value>(p, stream); });
  }
}

cudaError_t launch_attention_bwd(const AttnParams& p, cudaStream_t stream) {
  if (p.head_dim < 1 || p.head_dim > kMaxHeadDim) return cudaErrorInvalidValue;
  const cudaError_t err = attn::run_bwd_preprocess(p, stream);
  if (err != cudaSuccess) return err;
  switch (p.dtype) {
    case DType::kFloat16:
      return dispatch_half(p, [&](auto hd) { return attn::run_bwd<__half, decltype(hd)::value>(p, stream); });
    case DType::kBFloat16:
      return dispatch_half(p, [&](auto hd) { return attn::run_bwd<__nv_bfloat16, decltype(hd)::value>(p, stream); });
    default:
      return dispatch_simt(p, [&](auto dc) { return attn::run_bwd_simt<decltype(dc)::value>(p, stream); });
  }
}

}  // namespace fastattn
