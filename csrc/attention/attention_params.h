// FlashAttention-2 style attention: the arguments of the kernels (no torch types).
//
// Per (batch b, query head h; key/value head h / group), with S = scale * Q K^T (Nq x Nk):
//   query i sees key j iff j < Nk, key_padding_mask[b, j] (when given) and, when causal,
//   j <= i + (Nk - Nq) (bottom-right aligned);
//   P = softmax(S) over the visible keys, lse_i = log sum_j exp(S_ij); O = (P * Z / (1 - p)) V
//   with Z the dropout keep-mask. A row that sees no key gets O = 0, lse = -inf, zero gradients.
// Tensors are addressed through (batch, head, row) strides in elements; the last dim is contiguous.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/types.h"

namespace fastattn {

struct AttnParams {
  // inputs, (B, H, N, D) with strides in elements
  const void* q;  // (B, Hq, Nq, D)
  const void* k;  // (B, Hkv, Nk, D)
  const void* v;  // (B, Hkv, Nk, D)
  const uint8_t* kpm;  // (B, Nk) key_padding_mask, 1 = the key takes part; nullptr: every key does
  int64_t q_stride_b, q_stride_h, q_stride_n;
  int64_t k_stride_b, k_stride_h, k_stride_n;
  int64_t v_stride_b, v_stride_h, v_stride_n;
  int64_t kpm_stride_b, kpm_stride_n;

  // forward outputs / backward inputs
  void* out;   // (B, Hq, Nq, D)
  float* lse;  // (B, Hq, Nq) contiguous, natural log
  int64_t o_stride_b, o_stride_h, o_stride_n;

  // backward only
  const void* dout;   // (B, Hq, Nq, D) upstream gradient of out
  const float* dlse;  // (B, Hq, Nq) contiguous upstream gradient of lse, or nullptr
  float* delta;       // (B, Hq, Nq) contiguous scratch: rowsum(dout * out) - dlse
  void* dq;           // (B, Hq, Nq, D) contiguous output
  void* dk;           // (B, Hkv, Nk, D) contiguous output
  void* dv;           // (B, Hkv, Nk, D) contiguous output
  int64_t do_stride_b, do_stride_h, do_stride_n;

  int batch;
  int heads_q;
  int heads_kv;
  int group;  // heads_q / heads_kv
  int seq_q;
  int seq_k;
  int head_dim;  // D, 1..256
  float scale;   // softmax scale (natural-log units)
  float scale_log2;  // scale * log2(e)
  float dropout_p;   // probability of dropping (0: no dropout)
  float keep_scale;  // 1 / (1 - dropout_p)
  uint64_t seed;     // Philox key of the dropout stream
  bool causal;
  bool vec;  // q, k, v (and dout, out) rows start 16-byte aligned: tiles load with cp.async
  DType dtype;
};

// Launchers (attention_launch.cu): dispatch on dtype and head-dim bucket.
cudaError_t launch_attention_fwd(const AttnParams& params, cudaStream_t stream);
cudaError_t launch_attention_bwd(const AttnParams& params, cudaStream_t stream);

// Dynamic shared memory per block of the kernels for (dtype, head_dim), in bytes: the forward kernel's,
// and the larger of the two backward kernels'. The op layer compares them with the device's limit.
struct AttnSharedMemory {
  size_t forward;
  size_t backward;
};
AttnSharedMemory attention_shared_memory(DType dtype, int head_dim);

// cudaSuccess when the extension holds a kernel image that runs on CUDA device `device`, else the
// error a launch there would give (an extension built for sm_80 and sm_90 has none for sm_75 or sm_120).
cudaError_t kernel_image_status(int device);

}  // namespace fastattn
