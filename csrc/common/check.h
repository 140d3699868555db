// Host-side argument checks with readable messages ("q must be a CUDA tensor, got cpu"), and the
// mapping of torch dtypes to the kernels' DType. Only host .cpp files include this (it pulls in ATen).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <iterator>
#include <optional>
#include <string>

#include "common/types.h"

namespace fastattn {

inline void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.defined(), name, " must be a tensor, got None");
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got ", t.device().type());
}

// `t` is a CUDA tensor on the same device as `like` (named `like_name`).
inline void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& like, const char* like_name) {
  check_cuda(t, name);
  TORCH_CHECK(t.device() == like.device(), name, " must be on ", like_name, "'s device ", like.device(), ", got ",
              t.device());
}

// The dtypes of every kernel (DType); _C.capabilities() exports them to Python.
constexpr at::ScalarType kFloatDtypes[] = {at::kHalf, at::kBFloat16, at::kFloat};

inline void check_float_dtype(at::ScalarType dtype, const char* name) {
  TORCH_CHECK(std::find(std::begin(kFloatDtypes), std::end(kFloatDtypes), dtype) != std::end(kFloatDtypes), name,
              " must be float16, bfloat16 or float32, got ", dtype);
}

inline void check_float_dtype(const at::Tensor& t, const char* name) { check_float_dtype(t.scalar_type(), name); }

inline void check_dtype(const at::Tensor& t, const char* name, at::ScalarType expected) {
  TORCH_CHECK(t.scalar_type() == expected, name, " must be ", expected, ", got ", t.scalar_type());
}

inline void check_dim(const at::Tensor& t, const char* name, int64_t dim, const char* layout) {
  TORCH_CHECK(t.dim() == dim, name, " must be ", dim, "-D ", layout, ", got shape ", t.sizes());
}

inline void check_shape(const at::Tensor& t, const char* name, at::IntArrayRef expected) {
  TORCH_CHECK(t.sizes() == expected, name, " must have shape ", expected, ", got ", t.sizes());
}

// The kernels address rows through strides but read each row as one contiguous run.
inline void check_last_dim_contiguous(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 0 || t.size(-1) <= 1 || t.stride(-1) == 1, name,
              " must be contiguous in its last dimension, got strides ", t.strides());
}

inline DType to_dtype(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, "fastattn: unsupported dtype ", dtype);
  }
  return DType::kFloat32;  // unreachable
}

template <typename T>
inline const T* optional_ptr(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? static_cast<const T*>(t->data_ptr()) : nullptr;
}

inline bool present(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

}  // namespace fastattn

// Launch errors surface as Python exceptions (RuntimeError) with the CUDA error string.
#define FASTATTN_CHECK_LAUNCH(err) \
  TORCH_CHECK((err) == cudaSuccess, "fastattn: CUDA kernel launch failed: ", cudaGetErrorString(err))
