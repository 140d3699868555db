// The host entry points of fastattn._C (bound to Python in api.cpp). Each checks its tensors,
// allocates the outputs and launches on the current CUDA stream of the inputs' device.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <vector>

namespace fastattn {

// LayerNorm (rms = false) or RMSNorm over the last dim of x (rows, cols), s = x + residual.
// Returns {y, residual_out (s, or undefined without residual), mean (undefined for RMSNorm), rstd}.
std::vector<at::Tensor> norm_fwd(const at::Tensor& x, const std::optional<at::Tensor>& residual,
                                 const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                                 double eps, bool rms, bool residual_in_fp32);

// Returns {dx (x's dtype), dresidual (the same values in the residual's dtype when store_dresidual and a
// residual is given, else undefined), dweight (weight's dtype, or undefined), dbias (bias_dtype, or
// undefined)}. dresidual_out is the upstream gradient of s (forward's residual_out), or None.
std::vector<at::Tensor> norm_bwd(const at::Tensor& dy, const at::Tensor& x, const std::optional<at::Tensor>& residual,
                                 const std::optional<at::Tensor>& weight, std::optional<at::ScalarType> bias_dtype,
                                 const std::optional<at::Tensor>& mean, const at::Tensor& rstd,
                                 const std::optional<at::Tensor>& dresidual_out, bool rms,
                                 bool store_dresidual);

// Draws one token per row of logits (batch, vocab) (kernels/sampling.py's semantics and random stream).
// temperature, top_k, top_p, min_p, seeds: (batch,) tensors on the logits' device. splits: blocks per
// row, 0 = chosen for the batch, vocabulary and GPU (sample_splits in sampling/sampling_params.h), 1 =
// the single-block kernel, up to vocab; every value keeps the same set and draws the same tokens (but
// for top-p masses within float64 rounding of the target: sampling/sampling_kernels.cuh). Returns {tokens
// int64 (batch,) or (0,) without draw, logprobs float32 (batch,) or (0,), mask bool (batch, vocab) of
// the kept tokens or (0,) without write_mask}.
std::vector<at::Tensor> sample(const at::Tensor& logits, const at::Tensor& temperature, const at::Tensor& top_k,
                               const at::Tensor& top_p, const at::Tensor& min_p, const at::Tensor& seeds, bool draw,
                               bool return_logprobs, bool write_mask, int64_t splits);

// What an attention call computes besides plain softmax attention: the op layer's trailing arguments,
// which api.cpp binds by name with defaults that switch them off (the members refer to the call's).
// window (left, right), -1 unlimited; softcap > 0; alibi_slopes float32 (Hq,) or (B, Hq); sinks float32
// (Hq,); packed sequences: cu_seqlens_q/k int32 (B + 1,) with q (total_q, Hq, D), k, v (total_k, Hkv, D),
// max_seqlen_q/k at least the longest sequences (not checked here: the op layer checks the offsets),
// lse then (Hq, total_q).
struct AttentionFeatures {
  int64_t window_left, window_right;
  double softcap;
  const std::optional<at::Tensor>& alibi_slopes;
  const std::optional<at::Tensor>& sinks;
  const std::optional<at::Tensor>& cu_seqlens_q;
  const std::optional<at::Tensor>& cu_seqlens_k;
  int64_t max_seqlen_q, max_seqlen_k;
  bool packed() const { return cu_seqlens_q.has_value() && cu_seqlens_q->defined(); }
};

// Attention forward: q (B, Hq, Nq, D), k, v (B, Hkv, Nk, D), any strides with a contiguous last dim;
// key_padding_mask bool (B, Nk). Returns {out shaped like q, contiguous, lse float32 (B, Hq, Nq)}. The
// features come first here and last in Python (api.cpp).
std::vector<at::Tensor> attention_fwd(const AttentionFeatures& f, const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& v, const std::optional<at::Tensor>& key_padding_mask,
                                      bool causal, double scale, double dropout_p, int64_t seed);

// Attention backward (deterministic: no atomics), same arguments as the forward after its outputs.
// Returns {dq, dk, dv, dsinks}, contiguous; dsinks float32 (Hq,), zeros without sinks.
std::vector<at::Tensor> attention_bwd(const AttentionFeatures& f, const at::Tensor& dout, const at::Tensor& q,
                                      const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                                      const at::Tensor& lse, const std::optional<at::Tensor>& dlse,
                                      const std::optional<at::Tensor>& key_padding_mask, bool causal, double scale,
                                      double dropout_p, int64_t seed);

// Split-KV attention of q (B, Sq, Hq, D) against a KV cache: contiguous (B_cache, S, Hkv, D) with
// cache_rows int32 (B,), or paged (num_blocks, block_size, Hkv, D) with block_table int32 (B, max_blocks);
// sequence b holds positions cache_first[b] .. cache_total[b] (int32 (B,)), longest the most keys of one.
// The values are not checked here (the op layer checks them). Returns {out (B, Sq, Hq, D), lse float32
// (B, Hq, Sq)}; num_splits parts of split_size keys each (a multiple of 32) per (sequence, kv head).
std::vector<at::Tensor> attention_decode(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                         const std::optional<at::Tensor>& cache_rows,
                                         const std::optional<at::Tensor>& block_table, const at::Tensor& cache_total,
                                         const at::Tensor& cache_first, int64_t longest, double scale, bool causal,
                                         int64_t window_left, int64_t window_right, double softcap,
                                         const std::optional<at::Tensor>& alibi_slopes, int64_t num_splits,
                                         int64_t split_size);

// {forward, backward, decode} dynamic shared memory per block of the attention kernels for (dtype,
// head_dim), in bytes, to compare with the device's opt-in limit.
std::vector<int64_t> attention_shared_memory(at::ScalarType dtype, int64_t head_dim);

// Empty when the extension has a kernel image for CUDA device `device`, else why not.
std::string kernel_image_error(int64_t device);

}  // namespace fastattn
