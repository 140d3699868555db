// The limits of what the kernels serve, stated once: the host checks use them, and _C.capabilities()
// (api.cpp) exports them to Python, so that no Python file restates a constant of the C++ code.
#pragma once

#include <cstdint>

namespace fastattn {

// The largest head dim of the attention and decode kernels: the last head-dim bucket of their
// dispatch (attention_launch.cu, attention_decode.cu).
constexpr int kMaxHeadDim = 256;

// The largest vocabulary of the sampling kernels: token indices and counts are int32.
constexpr int64_t kMaxVocab = INT32_MAX;

}  // namespace fastattn
