// Element types as the kernels see them: a plain enum, so that params structs carry no torch types.
#pragma once

#include <cstdint>

namespace fastattn {

enum class DType : int32_t {
  kFloat32 = 0,
  kFloat16 = 1,
  kBFloat16 = 2,
};

inline int dtype_size(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

}  // namespace fastattn
