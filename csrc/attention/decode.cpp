// Host side of the split-KV decode: checks the tensors, allocates the outputs and the partial results,
// fills the params, launches on the current stream of q's device. The op layer (fastattn/ops/kvcache.py)
// has checked the values (lengths within the cache, pages within num_blocks) and chosen the split count.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

#include "attention/attention_params.h"
#include "common/check.h"
#include "ops.h"

namespace fastattn {

namespace {

constexpr int64_t kDecodeRowsPerBlock = 16;  // attn::decode::kBlockM
constexpr int64_t kDecodeTile = 32;          // attn::decode::kTile

void check_int32_vector(const at::Tensor& t, const char* name, int64_t batch) {
  check_dtype(t, name, at::kInt);
  check_shape(t, name, {batch});
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

}  // namespace

std::vector<at::Tensor> attention_decode(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                         const std::optional<at::Tensor>& cache_rows,
                                         const std::optional<at::Tensor>& block_table, const at::Tensor& cache_total,
                                         const at::Tensor& cache_first, int64_t longest, double scale, bool causal,
                                         int64_t window_left, int64_t window_right, double softcap,
                                         const std::optional<at::Tensor>& alibi_slopes, int64_t num_splits,
                                         int64_t split_size) {
  TORCH_CHECK(q.defined(), "q must be a tensor, got None");
  check_float_dtype(q, "q");
  check_dim(q, "q", 4, "(batch, seqlen_q, heads, head_dim)");
  for (const auto& [t, name] : {std::pair{&k_cache, "k_cache"}, {&v_cache, "v_cache"}}) {
    check_dim(*t, name, 4, "(batch or pages, positions, heads_kv, head_dim)");
    check_dtype(*t, name, q.scalar_type());
    check_last_dim_contiguous(*t, name);
  }
  check_last_dim_contiguous(q, "q");
  TORCH_CHECK(k_cache.sizes() == v_cache.sizes(), "k_cache and v_cache must have one shape, got ", k_cache.sizes(),
              " and ", v_cache.sizes());
  const int64_t batch = q.size(0), seq_q = q.size(1), heads_q = q.size(2), head_dim = q.size(3);
  const int64_t heads_kv = k_cache.size(2);
  TORCH_CHECK(k_cache.size(3) == head_dim, "k_cache must have q's head_dim ", head_dim, ", got ", k_cache.sizes());
  TORCH_CHECK(heads_kv > 0 && heads_q % heads_kv == 0, "the query heads (", heads_q,
              ") must be a multiple of the key/value heads (", heads_kv, ")");
  TORCH_CHECK(head_dim >= 1 && head_dim <= kMaxHeadDim, "head_dim must be in 1..", kMaxHeadDim, ", got ", head_dim);
  TORCH_CHECK(present(cache_rows) != present(block_table),
              "give exactly one of cache_rows (a contiguous cache) and block_table (a paged one)");
  if (present(cache_rows)) check_int32_vector(*cache_rows, "cache_rows", batch);
  if (present(block_table)) {
    check_dtype(*block_table, "block_table", at::kInt);
    check_dim(*block_table, "block_table", 2, "(batch, max_blocks)");
    TORCH_CHECK(block_table->size(0) == batch && block_table->stride(1) == 1,
                "block_table must be (batch, max_blocks) with contiguous rows, got ", block_table->sizes());
  }
  check_int32_vector(cache_total, "cache_total", batch);
  check_int32_vector(cache_first, "cache_first", batch);
  TORCH_CHECK(num_splits >= 1 && split_size >= kDecodeTile && split_size % kDecodeTile == 0,
              "num_splits must be >= 1 and split_size a positive multiple of ", kDecodeTile, ", got ", num_splits,
              " and ", split_size);
  const int64_t row_blocks = (seq_q * (heads_q / heads_kv) + kDecodeRowsPerBlock - 1) / kDecodeRowsPerBlock;
  TORCH_CHECK(row_blocks * num_splits <= 65535, "ceil(seqlen_q * heads per kv head / 16) * num_splits must be at ",
              "most 65535 (the grid), got ", row_blocks * num_splits);
  TORCH_CHECK(std::isfinite(scale) && std::isfinite(softcap) && softcap >= 0.0 && window_left >= -1 &&
                  window_right >= -1 && longest >= 0 && longest < (int64_t(1) << 30),
              "scale, softcap >= 0, window sides >= -1 and 0 <= longest < 2^30 are required");
  if (present(alibi_slopes)) {
    const at::Tensor& a = *alibi_slopes;
    check_dtype(a, "alibi_slopes", at::kFloat);
    TORCH_CHECK(((a.dim() == 1 && a.size(0) == heads_q) || (a.dim() == 2 && a.size(0) == batch && a.size(1) == heads_q)) &&
                    a.is_contiguous(),
                "alibi_slopes must be contiguous (Hq,) or (batch, Hq) with Hq = ", heads_q, ", got ", a.sizes());
  }
  check_cuda(q, "q");
  for (const auto& [t, name] :
       {std::pair{&k_cache, "k_cache"}, {&v_cache, "v_cache"}, {&cache_total, "cache_total"}, {&cache_first, "cache_first"}})
    check_same_device(*t, name, q, "q");
  for (const auto& [t, name] : {std::pair{&cache_rows, "cache_rows"}, {&block_table, "block_table"},
                                {&alibi_slopes, "alibi_slopes"}})
    if (present(*t)) check_same_device(**t, name, q, "q");

  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = at::empty(q.sizes(), q.options());
  at::Tensor lse = at::empty({batch, heads_q, seq_q}, q.options().dtype(at::kFloat));
  if (out.numel() == 0) return {out, lse};
  at::Tensor out_part = at::empty({batch, heads_q, num_splits, seq_q, head_dim}, q.options().dtype(at::kFloat));
  at::Tensor lse_part = at::empty({batch, heads_q, num_splits, seq_q}, q.options().dtype(at::kFloat));

  AttnParams p{};
  p.q = q.data_ptr();
  p.k = k_cache.data_ptr();
  p.v = v_cache.data_ptr();
  p.q_stride_b = q.stride(0), p.q_stride_n = q.stride(1), p.q_stride_h = q.stride(2);
  p.k_stride_b = k_cache.stride(0), p.k_stride_n = k_cache.stride(1), p.k_stride_h = k_cache.stride(2);
  p.v_stride_b = v_cache.stride(0), p.v_stride_n = v_cache.stride(1), p.v_stride_h = v_cache.stride(2);
  p.out = out.data_ptr();
  p.o_stride_b = out.stride(0), p.o_stride_n = out.stride(1), p.o_stride_h = out.stride(2);
  p.lse = lse.data_ptr<float>();
  p.batch = int(batch);
  p.heads_q = int(heads_q);
  p.heads_kv = int(heads_kv);
  p.group = int(heads_q / heads_kv);
  p.seq_q = int(seq_q);
  p.seq_k = int(longest);
  p.head_dim = int(head_dim);
  p.scale = static_cast<float>(scale);
  p.scale_log2 = static_cast<float>(scale * 1.4426950408889634);
  p.dtype = to_dtype(q.scalar_type());
  set_band_and_softcap(p, causal, window_left, window_right, softcap);
  p.alibi = optional_ptr<float>(alibi_slopes);
  p.alibi_stride_b = present(alibi_slopes) && alibi_slopes->dim() == 2 ? heads_q : 0;
  p.cache_rows = optional_ptr<int>(cache_rows);
  p.block_table = optional_ptr<int>(block_table);
  p.block_table_stride = present(block_table) ? block_table->stride(0) : 0;
  p.page_size = int(k_cache.size(1));
  p.cache_total = cache_total.data_ptr<int>();
  p.cache_first = cache_first.data_ptr<int>();
  p.num_splits = int(num_splits);
  p.split_size = int(split_size);
  p.out_part = out_part.data_ptr<float>();
  p.lse_part = lse_part.data_ptr<float>();
  FASTATTN_CHECK_LAUNCH(launch_attention_decode(p, c10::cuda::getCurrentCUDAStream(q.get_device()).stream()));
  return {out, lse};
}

}  // namespace fastattn
