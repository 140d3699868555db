// fastattn._C: the only Python binding of the CUDA kernels. The op layer (fastattn/ops/*.py) wraps
// these functions in torch.library custom ops; nothing here is meant to be called directly.
// pybind11 with torch's type casters (Tensor, dtype); much lighter to compile than torch/extension.h
#include <torch/csrc/utils/pybind.h>

#include "common/check.h"
#include "common/limits.h"
#include "ops.h"

namespace {

// What the kernels serve, per op: fastattn.capabilities reads this, so that no Python file restates a
// limit of the C++ code. The feature names are those of fastattn.capabilities.FEATURES.
pybind11::dict capabilities() {
  namespace py = pybind11;
  py::list dtypes;
  for (const at::ScalarType dtype : fastattn::kFloatDtypes) dtypes.append(py::cast(dtype));
  const auto op = [&](py::tuple features) {
    py::dict entry;
    entry["dtypes"] = py::tuple(dtypes);
    entry["features"] = features;
    return entry;
  };
  py::dict attention = op(py::make_tuple("dropout", "deterministic", "return_lse", "window", "softcap",
                                         "alibi_slopes", "sinks", "varlen"));
  attention["max_head_dim"] = fastattn::kMaxHeadDim;
  py::dict kvcache = op(py::make_tuple("return_lse", "window", "softcap", "alibi_slopes", "paged"));
  kvcache["max_head_dim"] = fastattn::kMaxHeadDim;
  py::dict sampling = op(py::make_tuple());
  sampling["max_vocab"] = fastattn::kMaxVocab;
  py::dict table;
  table["attention"] = attention;
  table["kvcache"] = kvcache;
  table["norm"] = op(py::make_tuple());
  table["sampling"] = sampling;
  return table;
}

// The attention ops take their features (ops.h) as the op layer's trailing arguments, named below with
// the defaults that switch them off: op(features, lead...) is bound as a function of (lead...,
// window_left, window_right, softcap, alibi_slopes, sinks, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
// max_seqlen_k).
template <class... Lead>
auto features_last(std::vector<at::Tensor> (*op)(const fastattn::AttentionFeatures&, Lead...)) {
  return [op](Lead... lead, int64_t window_left, int64_t window_right, double softcap,
              const std::optional<at::Tensor>& alibi_slopes, const std::optional<at::Tensor>& sinks,
              const std::optional<at::Tensor>& cu_seqlens_q, const std::optional<at::Tensor>& cu_seqlens_k,
              int64_t max_seqlen_q, int64_t max_seqlen_k) {
    return op({window_left, window_right, softcap, alibi_slopes, sinks, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
               max_seqlen_k},
              lead...);
  };
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastattn CUDA kernels (LayerNorm/RMSNorm, sampling, attention); see fastattn.ops";
  using pybind11::arg;

  m.def("norm_fwd", &fastattn::norm_fwd, "LayerNorm/RMSNorm forward with fused residual add", arg("x"),
        arg("residual"), arg("weight"), arg("bias"), arg("eps"), arg("rms"), arg("residual_in_fp32"));
  m.def("norm_bwd", &fastattn::norm_bwd, "LayerNorm/RMSNorm backward", arg("dy"), arg("x"), arg("residual"),
        arg("weight"), arg("bias_dtype"), arg("mean"), arg("rstd"), arg("dresidual_out"), arg("rms"),
        arg("store_dresidual"));
  m.def("sample", &fastattn::sample, "top-k / top-p / min-p sampling (Gumbel-max, Philox stream of triton)",
        arg("logits"), arg("temperature"), arg("top_k"), arg("top_p"), arg("min_p"), arg("seeds"), arg("draw"),
        arg("return_logprobs"), arg("write_mask"), arg("splits") = 0);
  // The features' defaults switch them off, so a plain call names only the first arguments.
  m.def("attention_fwd", features_last(&fastattn::attention_fwd), "FlashAttention-2 style forward", arg("q"),
        arg("k"), arg("v"), arg("key_padding_mask"), arg("causal"), arg("scale"), arg("dropout_p"), arg("seed"),
        arg("window_left") = -1, arg("window_right") = -1, arg("softcap") = 0.0, arg("alibi_slopes") = pybind11::none(),
        arg("sinks") = pybind11::none(), arg("cu_seqlens_q") = pybind11::none(),
        arg("cu_seqlens_k") = pybind11::none(), arg("max_seqlen_q") = 0, arg("max_seqlen_k") = 0);
  m.def("attention_bwd", features_last(&fastattn::attention_bwd), "FlashAttention-2 style backward (deterministic)",
        arg("dout"), arg("q"), arg("k"), arg("v"), arg("out"), arg("lse"), arg("dlse"), arg("key_padding_mask"),
        arg("causal"), arg("scale"), arg("dropout_p"), arg("seed"), arg("window_left") = -1, arg("window_right") = -1,
        arg("softcap") = 0.0, arg("alibi_slopes") = pybind11::none(), arg("sinks") = pybind11::none(),
        arg("cu_seqlens_q") = pybind11::none(), arg("cu_seqlens_k") = pybind11::none(), arg("max_seqlen_q") = 0,
        arg("max_seqlen_k") = 0);
  m.def("attention_decode", &fastattn::attention_decode, "split-KV attention against a KV cache", arg("q"),
        arg("k_cache"), arg("v_cache"), arg("cache_rows"), arg("block_table"), arg("cache_total"), arg("cache_first"),
        arg("longest"), arg("scale"), arg("causal"), arg("window_left"), arg("window_right"), arg("softcap"),
        arg("alibi_slopes"), arg("num_splits"), arg("split_size"));
  m.def("attention_shared_memory", &fastattn::attention_shared_memory,
        "(forward, backward, split-KV decode) shared memory per block of the attention kernels, in bytes", arg("dtype"),
        arg("head_dim"));
  m.def("capabilities", &capabilities, "what the kernels serve, per op: dtypes, features and limits");
  m.def("kernel_image_error", &fastattn::kernel_image_error,
        "empty when the extension can run on CUDA device `device`, else why not", arg("device"));
}
