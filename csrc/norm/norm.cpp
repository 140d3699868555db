// Host side of LayerNorm / RMSNorm: checks the tensors, allocates the outputs, fills the params,
// launches on the current stream of the input's device.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "common/check.h"
#include "common/device.h"
#include "norm/norm_params.h"
#include "ops.h"

namespace fastattn {

namespace {

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// The row stride the kernels use (any value serves a single row).
void check_x(const at::Tensor& x) {
  TORCH_CHECK(x.defined(), "x must be a tensor, got None");
  check_float_dtype(x, "x");
  check_dim(x, "x", 2, "(rows, normalized size)");
  check_last_dim_contiguous(x, "x");
  TORCH_CHECK(x.size(1) >= 1, "x must have a normalized size of at least 1, got shape ", x.sizes());
}

int64_t row_stride(const at::Tensor& t) { return t.size(0) > 1 ? t.stride(0) : t.size(1); }

// A (rows, cols) or (cols,) tensor whose rows can all be read with 16-byte accesses.
bool rows_vectorizable(const at::Tensor& t) {
  const int64_t stride = t.dim() == 2 ? row_stride(t) : 0;
  return aligned16(t.data_ptr()) && (stride * t.element_size()) % 16 == 0;
}

// Dtypes and shapes are checked before devices, so that these errors show on any machine.
void check_rows(const at::Tensor& t, const char* name, const at::Tensor& x) {
  check_float_dtype(t, name);
  check_shape(t, name, x.sizes());
  check_last_dim_contiguous(t, name);
}

void check_param(const at::Tensor& t, const char* name, const at::Tensor& x) {
  check_float_dtype(t, name);
  check_shape(t, name, {x.size(1)});
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous, got strides ", t.strides());
}

}  // namespace

std::vector<at::Tensor> norm_fwd(const at::Tensor& x, const std::optional<at::Tensor>& residual,
                                 const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                                 double eps, bool rms, bool residual_in_fp32) {
  check_x(x);
  if (present(residual)) check_rows(*residual, "residual", x);
  if (present(weight)) check_param(*weight, "weight", x);
  if (present(bias)) check_param(*bias, "bias", x);
  TORCH_CHECK(!(rms && present(bias)), "rms_norm takes no bias");
  check_cuda(x, "x");
  for (const auto& [t, name] : {std::pair{&residual, "residual"}, {&weight, "weight"}, {&bias, "bias"}})
    if (present(*t)) check_same_device(**t, name, x, "x");

  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t rows = x.size(0), cols = x.size(1);
  at::Tensor y = at::empty({rows, cols}, x.options());
  at::Tensor residual_out;
  if (present(residual)) {
    const auto stored = residual_in_fp32 ? at::kFloat : x.scalar_type();
    residual_out = at::empty({rows, cols}, x.options().dtype(stored));
  }
  const auto stats = x.options().dtype(at::kFloat);
  at::Tensor mean = rms ? at::Tensor() : at::empty({rows}, stats);
  at::Tensor rstd = at::empty({rows}, stats);
  if (rows == 0) return {y, residual_out, mean, rstd};

  NormFwdParams p{};
  p.x = x.data_ptr();
  p.residual = optional_ptr<void>(residual);
  p.weight = optional_ptr<void>(weight);
  p.bias = optional_ptr<void>(bias);
  p.y = y.data_ptr();
  p.residual_out = residual_out.defined() ? residual_out.data_ptr() : nullptr;
  p.mean = mean.defined() ? mean.data_ptr<float>() : nullptr;
  p.rstd = rstd.data_ptr<float>();
  p.rows = rows;
  p.cols = cols;
  p.x_row_stride = row_stride(x);
  p.residual_row_stride = present(residual) ? row_stride(*residual) : 0;
  p.x_dtype = to_dtype(x.scalar_type());
  p.residual_dtype = present(residual) ? to_dtype(residual->scalar_type()) : p.x_dtype;
  p.residual_out_dtype = residual_out.defined() ? to_dtype(residual_out.scalar_type()) : p.x_dtype;
  p.weight_dtype = present(weight) ? to_dtype(weight->scalar_type()) : p.x_dtype;
  p.bias_dtype = present(bias) ? to_dtype(bias->scalar_type()) : p.x_dtype;
  p.eps = static_cast<float>(eps);
  p.rms = rms;
  bool vec = cols % 8 == 0 && rows_vectorizable(x) && rows_vectorizable(y);
  for (const auto* t : {&residual, &weight, &bias})
    if (present(*t)) vec = vec && rows_vectorizable(**t);
  if (residual_out.defined()) vec = vec && rows_vectorizable(residual_out);
  p.vec = vec;
  FASTATTN_CHECK_LAUNCH(launch_norm_fwd(p, c10::cuda::getCurrentCUDAStream(x.get_device()).stream()));
  return {y, residual_out, mean, rstd};
}

std::vector<at::Tensor> norm_bwd(const at::Tensor& dy, const at::Tensor& x, const std::optional<at::Tensor>& residual,
                                 const std::optional<at::Tensor>& weight, std::optional<at::ScalarType> bias_dtype,
                                 const std::optional<at::Tensor>& mean, const at::Tensor& rstd,
                                 const std::optional<at::Tensor>& dresidual_out, bool rms,
                                 bool store_dresidual) {
  check_x(x);
  check_rows(dy, "dy", x);
  if (present(residual)) check_rows(*residual, "residual", x);
  if (present(dresidual_out)) check_rows(*dresidual_out, "dresidual_out", x);
  if (present(weight)) check_param(*weight, "weight", x);
  const int64_t rows = x.size(0), cols = x.size(1);
  for (const auto& [t, name] : {std::pair<const at::Tensor*, const char*>{&rstd, "rstd"},
                                {present(mean) ? &*mean : nullptr, "mean"}}) {
    if (t == nullptr) continue;
    check_dtype(*t, name, at::kFloat);
    check_shape(*t, name, {rows});
    TORCH_CHECK(t->is_contiguous(), name, " must be contiguous");
  }
  TORCH_CHECK(rms || present(mean), "layer_norm's backward needs the forward's mean");
  check_cuda(x, "x");
  check_same_device(dy, "dy", x, "x");
  check_same_device(rstd, "rstd", x, "x");
  for (const auto& [t, name] : {std::pair{&residual, "residual"}, {&weight, "weight"}, {&mean, "mean"},
                                {&dresidual_out, "dresidual_out"}})
    if (present(*t)) check_same_device(**t, name, x, "x");

  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor dx = at::empty({rows, cols}, x.options());
  at::Tensor dresidual;
  if (present(residual) && store_dresidual) dresidual = at::empty({rows, cols}, residual->options());
  at::Tensor dweight = present(weight) ? at::empty({cols}, weight->options()) : at::Tensor();
  at::Tensor dbias;
  if (bias_dtype.has_value()) {
    TORCH_CHECK(*bias_dtype == at::kFloat || *bias_dtype == at::kHalf || *bias_dtype == at::kBFloat16,
                "bias_dtype must be float16, bfloat16 or float32, got ", *bias_dtype);
    dbias = at::empty({cols}, x.options().dtype(*bias_dtype));
  }
  if (rows == 0) {
    if (dweight.defined()) dweight.zero_();
    if (dbias.defined()) dbias.zero_();
    return {dx, dresidual, dweight, dbias};
  }

  NormBwdParams p{};
  p.dy = dy.data_ptr();
  p.x = x.data_ptr();
  p.residual = optional_ptr<void>(residual);
  p.weight = optional_ptr<void>(weight);
  p.mean = present(mean) ? mean->data_ptr<float>() : nullptr;
  p.rstd = rstd.data_ptr<float>();
  p.dresidual_out = optional_ptr<void>(dresidual_out);
  p.dx = dx.data_ptr();
  p.dresidual = dresidual.defined() ? dresidual.data_ptr() : nullptr;
  p.dweight = dweight.defined() ? dweight.data_ptr() : nullptr;
  p.dbias = dbias.defined() ? dbias.data_ptr() : nullptr;
  p.rows = rows;
  p.cols = cols;
  p.dy_row_stride = row_stride(dy);
  p.x_row_stride = row_stride(x);
  p.residual_row_stride = present(residual) ? row_stride(*residual) : 0;
  p.dresidual_out_row_stride = present(dresidual_out) ? row_stride(*dresidual_out) : 0;
  p.dy_dtype = to_dtype(dy.scalar_type());
  p.x_dtype = to_dtype(x.scalar_type());
  p.residual_dtype = present(residual) ? to_dtype(residual->scalar_type()) : p.x_dtype;
  p.weight_dtype = present(weight) ? to_dtype(weight->scalar_type()) : p.x_dtype;
  p.bias_dtype = dbias.defined() ? to_dtype(dbias.scalar_type()) : p.x_dtype;
  p.dresidual_out_dtype = present(dresidual_out) ? to_dtype(dresidual_out->scalar_type()) : p.x_dtype;
  p.dx_dtype = p.x_dtype;
  p.rms = rms;
  bool vec = cols % 8 == 0 && rows_vectorizable(dy) && rows_vectorizable(x) && rows_vectorizable(dx);
  for (const auto* t : {&residual, &weight, &dresidual_out})
    if (present(*t)) vec = vec && rows_vectorizable(**t);
  if (dresidual.defined()) vec = vec && rows_vectorizable(dresidual);
  p.vec = vec;

  at::Tensor partial_dweight, partial_dbias;
  if (dweight.defined() || dbias.defined()) {
    p.splits = norm_bwd_splits(rows, cols, sm_count(x.get_device()));
    p.rows_per_split = (rows + p.splits - 1) / p.splits;
    const auto scratch = x.options().dtype(at::kFloat);
    if (dweight.defined()) {
      partial_dweight = at::empty({p.splits, cols}, scratch);
      p.partial_dweight = partial_dweight.data_ptr<float>();
    }
    if (dbias.defined()) {
      partial_dbias = at::empty({p.splits, cols}, scratch);
      p.partial_dbias = partial_dbias.data_ptr<float>();
    }
  }
  FASTATTN_CHECK_LAUNCH(launch_norm_bwd(p, c10::cuda::getCurrentCUDAStream(x.get_device()).stream()));
  return {dx, dresidual, dweight, dbias};
}

}  // namespace fastattn
