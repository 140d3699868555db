// Definitions of the runners declared in attention_run.h: grid, shared memory, launch.
#pragma once

#include "attention/attention_bwd.cuh"
#include "attention/attention_fwd.cuh"
#include "attention/attention_run.h"
#include "attention/attention_simt.cuh"

namespace fastattn {
namespace attn {

// Launches `kernel` on `blocks` blocks of `threads` threads with `smem` bytes of dynamic shared memory,
// raising the kernel's limit first when it needs more than the default 48 KB.
template <class Kernel>
cudaError_t launch(Kernel kernel, int64_t blocks, int threads, size_t smem, cudaStream_t stream, const AttnParams& p) {
  if (blocks == 0) return cudaSuccess;
  if (blocks > 2147483647) return cudaErrorInvalidConfiguration;
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (err != cudaSuccess) return err;
  }
  kernel<<<unsigned(blocks), threads, smem, stream>>>(p);
  return cudaGetLastError();
}

template <typename T, int HD>
cudaError_t run_fwd(const AttnParams& p, cudaStream_t stream) {
  using C = Config<HD>;
  const int64_t blocks = ceil_div(p.seq_q, C::kFwdBlockM) * p.batch * p.heads_q;
  return launch(attn_fwd_kernel<T, HD>, blocks, C::kFwdWarps * 32, FwdShared<T, HD>::kBytes, stream, p);
}

template <typename T, int HD>
cudaError_t run_bwd(const AttnParams& p, cudaStream_t stream) {
  using C = Config<HD>;
  const int64_t kv_blocks = ceil_div(p.seq_k, C::kKvBlockN) * p.batch * p.heads_kv;
  cudaError_t err = launch(attn_bwd_dkdv_kernel<T, HD>, kv_blocks, C::kBwdWarps * 32, DkdvShared<T, HD>::kBytes,
                           stream, p);
  if (err != cudaSuccess) return err;
  const int64_t q_blocks = ceil_div(p.seq_q, C::kQBlockM) * p.batch * p.heads_q;
  return launch(attn_bwd_dq_kernel<T, HD>, q_blocks, C::kBwdWarps * 32, DqShared<T, HD>::kBytes, stream, p);
}

template <int DC>
cudaError_t run_fwd_simt(const AttnParams& p, cudaStream_t stream) {
  const int64_t blocks = ceil_div(p.seq_q, simt::kWarps * simt::kFwdRowsPerWarp) * p.batch * p.heads_q;
  return launch(simt::attn_fwd_simt_kernel<DC>, blocks, simt::kThreads, simt::FwdSmem<DC>::kBytes, stream, p);
}

template <int DC>
cudaError_t run_bwd_simt(const AttnParams& p, cudaStream_t stream) {
  const int64_t kv_blocks = ceil_div(p.seq_k, simt::kWarps * simt::kKvRowsPerWarp) * p.batch * p.heads_kv;
  cudaError_t err = launch(simt::attn_bwd_dkdv_simt_kernel<DC>, kv_blocks, simt::kThreads, simt::DkdvSmem<DC>::kBytes,
                           stream, p);
  if (err != cudaSuccess) return err;
  const int64_t q_blocks = ceil_div(p.seq_q, simt::kWarps * simt::kFwdRowsPerWarp) * p.batch * p.heads_q;
  return launch(simt::attn_bwd_dq_simt_kernel<DC>, q_blocks, simt::kThreads, simt::DqSmem<DC>::kBytes, stream, p);
}

}  // namespace attn
}  // namespace fastattn

// The explicit instantiations of one bucket's runners, the one line of each file under instantiations/
// (generate_instantiations.py): FASTATTN_INSTANTIATE(T, HD) for the tensor-core kernels,
// FASTATTN_INSTANTIATE_SIMT(DC) for the float32 ones; at global scope, followed by a semicolon.
#define FASTATTN_INSTANTIATE(T, HD)                                                                 \
  template cudaError_t fastattn::attn::run_fwd<T, HD>(const fastattn::AttnParams&, cudaStream_t);   \
  template cudaError_t fastattn::attn::run_bwd<T, HD>(const fastattn::AttnParams&, cudaStream_t)
#define FASTATTN_INSTANTIATE_SIMT(DC)                                                               \
  template cudaError_t fastattn::attn::run_fwd_simt<DC>(const fastattn::AttnParams&, cudaStream_t); \
  template cudaError_t fastattn::attn::run_bwd_simt<DC>(const fastattn::AttnParams&, cudaStream_t)
