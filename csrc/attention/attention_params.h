// FlashAttention-2 style attention: the arguments of the kernels (no torch types).
//
// Per (batch or packed sequence b, query head h; key/value head h / group), off = Nk - Nq:
//   S_ij = scale * q_i.k_j; with softcap c > 0, S = c * tanh(S / c); with ALiBi, S_ij -= slope * |i + off - j|;
//   query i sees key j iff j < Nk, key_padding_mask[b, j] (when given) and, with a band (causal or a
//   window), i + off - left <= j <= i + off + right (bottom-right aligned; causal: right = 0);
//   P = softmax(S) over the visible keys and the sink (when given), lse_i = log(sum_j exp(S_ij) + exp(sink_h));
//   O = (P * Z / (1 - p)) V with Z the dropout keep-mask. A row that sees no key gets O = 0,
//   lse = -inf (the sink's logit with sinks), zero gradients.
// Tensors are addressed through (batch, head, row) strides in elements; the last dim is contiguous.
// Packed sequences (cu_seqlens given): q, k, v are (total, H, D) with batch stride 0, each sequence's
// rows start at cu_seqlens[b], and seq_q / seq_k are the longest sequences (the grid's extent).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/limits.h"
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

  // lse, delta, dlse (and dsink_rows): contiguous rows, (B, Hq, Nq) or packed (Hq, total_q)
  int64_t lse_stride_b, lse_stride_h;
  int64_t lse_batches;  // B, or 1 packed
  int64_t lse_rows;     // rows per head: Nq, or total_q packed

  // backward only
  const void* dout;   // like q: upstream gradient of out
  const float* dlse;  // like lse: upstream gradient of lse, or nullptr
  float* delta;       // like lse, scratch: rowsum(dout * out) - dlse
  float* dsink_rows;  // like lse, with sinks: each row's share of dsink, -exp(sink - lse) * delta
  void* dq;           // like q, contiguous output
  void* dk;           // like k, contiguous output
  void* dv;           // like v, contiguous output
  int64_t do_stride_b, do_stride_h, do_stride_n;
  int64_t dq_stride_b, dq_stride_h, dq_stride_n;
  int64_t dkv_stride_b, dkv_stride_h, dkv_stride_n;  // of dk and dv

  // features (nullptr / false / 0: off)
  const int* cu_seqlens_q;  // (B + 1,) int32 offsets of packed sequences; nullptr: padded batches
  const int* cu_seqlens_k;
  const float* alibi;       // float32 ALiBi slopes, (Hq,) or (B, Hq) contiguous
  int64_t alibi_stride_b;   // 0 for (Hq,)
  const float* sinks;       // (Hq,) float32 sink logits
  bool band;                // causal or a window limits the keys around the diagonal
  int window_left;          // with band: keys visible before the diagonal (unlimited: seq_q + seq_k)
  int window_right;         // with band: keys visible after it (causal: 0)
  float softcap;            // > 0: scores capped to softcap * tanh(s / softcap)
  float softcap_in;         // scale / softcap: tanh's argument per unit of q.k
  float softcap_out;        // softcap * log2(e): the capped score in base 2 per unit of tanh

  // decode against a KV cache (attention_decode.cuh). q is (B, Sq, Hq, D): q_stride_n is along Sq.
  // k, v are the cache: contiguous (B_cache, S_cache, Hkv, D), or paged (num_blocks, block_size, Hkv,
  // D); k_stride_b steps a cache row or a page, k_stride_n a position or a slot.
  const int* cache_rows;      // (B,): each sequence's row of a contiguous cache; nullptr when paged
  const int* block_table;     // (B, max_blocks) pages of a paged cache; nullptr when contiguous
  int64_t block_table_stride;  // between the sequences' rows of block_table
  int page_size;               // positions per page
  const int* cache_total;      // (B,): positions each sequence holds
  const int* cache_first;      // (B,): its first position taking part (cache_leftpad)
  int num_splits;              // parts the keys of each (sequence, kv head) are cut into
  int split_size;              // keys per part, a multiple of the key tile
  float* out_part;             // (B, Hq, num_splits, Sq, D) float32 partial outputs, normalized
  float* lse_part;             // (B, Hq, num_splits, Sq) float32 partial lse (-inf: no key)

  int batch;
  int heads_q;
  int heads_kv;
  int group;  // heads_q / heads_kv
  int seq_q;
  int seq_k;
  int head_dim;  // D, 1..kMaxHeadDim
  float scale;   // softmax scale (natural-log units)
  float scale_log2;  // scale * log2(e)
  float dropout_p;   // probability of dropping (0: no dropout)
  float keep_scale;  // 1 / (1 - dropout_p)
  uint64_t seed;     // Philox key of the dropout stream
  bool vec;  // q, k, v (and dout, out) rows start 16-byte aligned: tiles load with cp.async
  DType dtype;
};

// Sets band, window_left/right and the softcap terms from a call's arguments (seq_q, seq_k and scale
// already set): causal is right = 0; a side of -1, or one beyond every key, is unlimited, which
// seq_q + seq_k (farther than any key from any diagonal) stands for.
inline void set_band_and_softcap(AttnParams& p, bool causal, int64_t window_left, int64_t window_right,
                                 double softcap) {
  const int64_t unlimited = int64_t(p.seq_q) + p.seq_k < INT32_MAX ? int64_t(p.seq_q) + p.seq_k : INT32_MAX;
  const int64_t right = causal ? 0 : window_right;
  p.band = causal || window_left >= 0 || window_right >= 0;
  p.window_left = int(window_left >= 0 && window_left < unlimited ? window_left : unlimited);
  p.window_right = int(right >= 0 && right < unlimited ? right : unlimited);
  p.softcap = static_cast<float>(softcap);
  p.softcap_in = softcap > 0.0 ? static_cast<float>(p.scale / softcap) : 0.0f;
  p.softcap_out = static_cast<float>(softcap * 1.4426950408889634);  // log2(e)
}

// Sets the layout of lse (and delta, dlse, dsink_rows): (B, Hq, Nq), or packed (Hq, total_q).
inline void set_row_layout(AttnParams& p, bool packed, int64_t total_q) {
  p.lse_batches = packed ? 1 : p.batch;
  p.lse_rows = packed ? total_q : p.seq_q;
  p.lse_stride_b = packed ? 0 : int64_t(p.heads_q) * p.seq_q;
  p.lse_stride_h = p.lse_rows;
}

// Launchers (attention_launch.cu): dispatch on dtype and head-dim bucket.
cudaError_t launch_attention_fwd(const AttnParams& params, cudaStream_t stream);
cudaError_t launch_attention_bwd(const AttnParams& params, cudaStream_t stream);
cudaError_t launch_attention_decode(const AttnParams& params, cudaStream_t stream);  // attention_decode.cu

// Dynamic shared memory per block of the kernels for (dtype, head_dim), in bytes: the forward kernel's,
// the larger of the two backward kernels', and the split-KV decode kernel's. The op layer compares them
// with the device's limit.
struct AttnSharedMemory {
  size_t forward;
  size_t backward;
  size_t decode;
};
AttnSharedMemory attention_shared_memory(DType dtype, int head_dim);
size_t attention_decode_shared_memory(int head_dim);  // attention_decode.cu: its kernels' own buckets

// cudaSuccess when the extension holds a kernel image that runs on CUDA device `device`, else the
// error a launch there would give (an extension built for sm_80 and sm_90 has none for sm_75 or sm_120).
cudaError_t kernel_image_status(int device);

}  // namespace fastattn
