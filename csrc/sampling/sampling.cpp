// Host side of sampling: checks the tensors, converts the per-row parameters, picks the blocks per row
// (sample_splits), allocates the split path's workspace, launches.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <vector>

#include "common/check.h"
#include "common/device.h"
#include "ops.h"
#include "sampling/sampling_params.h"

namespace fastattn {

std::vector<at::Tensor> sample(const at::Tensor& logits, const at::Tensor& temperature, const at::Tensor& top_k,
                               const at::Tensor& top_p, const at::Tensor& min_p, const at::Tensor& seeds, bool draw,
                               bool return_logprobs, bool write_mask, int64_t splits) {
  TORCH_CHECK(logits.defined(), "logits must be a tensor, got None");
  check_float_dtype(logits, "logits");
  check_dim(logits, "logits", 2, "(batch, vocab)");
  check_last_dim_contiguous(logits, "logits");
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  TORCH_CHECK(vocab >= 1, "logits must have at least one token, got shape ", logits.sizes());
  TORCH_CHECK(vocab <= kMaxVocab, "logits: at most ", kMaxVocab, " tokens per row, got ", vocab);
  TORCH_CHECK(splits >= 0 && splits <= vocab, "splits must be 0 (chosen for the GPU) or in [1, vocab = ", vocab,
              "], got ", splits);
  for (const auto& [t, name] : {std::pair<const at::Tensor*, const char*>{&temperature, "temperature"},
                                {&top_k, "top_k"}, {&top_p, "top_p"}, {&min_p, "min_p"}, {&seeds, "seeds"}}) {
    TORCH_CHECK(t->defined(), name, " must be a tensor, got None");
    check_shape(*t, name, {rows});
  }
  TORCH_CHECK(seeds.scalar_type() == at::kLong, "seeds must be int64, got ", seeds.scalar_type());
  TORCH_CHECK(!top_k.is_floating_point() && top_k.scalar_type() != at::kBool, "top_k must be an integer tensor, got ",
              top_k.scalar_type());
  check_cuda(logits, "logits");
  for (const auto& [t, name] : {std::pair<const at::Tensor*, const char*>{&temperature, "temperature"},
                                {&top_k, "top_k"}, {&top_p, "top_p"}, {&min_p, "min_p"}, {&seeds, "seeds"}})
    check_same_device(*t, name, logits, "logits");

  const c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor temperature32 = temperature.to(at::kFloat).contiguous();
  const at::Tensor top_k32 = top_k.clamp(1, vocab).to(at::kInt).contiguous();
  const at::Tensor top_p64 = top_p.to(at::kDouble).contiguous();
  const at::Tensor min_p64 = min_p.to(at::kDouble).contiguous();
  const at::Tensor seeds64 = seeds.contiguous();
  const auto options = logits.options();
  at::Tensor tokens = at::empty({draw ? rows : 0}, options.dtype(at::kLong));
  at::Tensor logprobs = at::empty({draw && return_logprobs ? rows : 0}, options.dtype(at::kFloat));
  at::Tensor mask = at::empty(write_mask ? std::vector<int64_t>{rows, vocab} : std::vector<int64_t>{0},
                              options.dtype(at::kChar));
  if (rows > 0) {
    const int blocks_per_row = splits > 0 ? int(splits) : sample_splits(rows, vocab, sm_count(logits.get_device()));
    const at::Tensor workspace =
        at::empty({int64_t(split_workspace_bytes(rows, blocks_per_row))}, options.dtype(at::kByte));
    SampleParams p{};
    p.logits = logits.data_ptr();
    p.temperature = temperature32.data_ptr<float>();
    p.top_k = top_k32.data_ptr<int32_t>();
    p.top_p = top_p64.data_ptr<double>();
    p.min_p = min_p64.data_ptr<double>();
    p.seed = seeds64.data_ptr<int64_t>();
    p.token = draw ? tokens.data_ptr<int64_t>() : nullptr;
    p.logprob = draw && return_logprobs ? logprobs.data_ptr<float>() : nullptr;
    p.mask = write_mask ? mask.data_ptr<int8_t>() : nullptr;
    p.workspace = workspace.data_ptr();
    p.rows = rows;
    p.row_stride = rows > 1 ? logits.stride(0) : vocab;
    p.vocab = static_cast<int32_t>(vocab);
    p.splits = blocks_per_row;
    p.dtype = to_dtype(logits.scalar_type());
    FASTATTN_CHECK_LAUNCH(launch_sample(p, c10::cuda::getCurrentCUDAStream(logits.get_device()).stream()));
  }
  return {tokens, logprobs, mask.to(at::kBool)};
}

}  // namespace fastattn
