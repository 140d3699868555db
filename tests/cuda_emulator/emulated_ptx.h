// The warp-wide PTX instructions of csrc/attention/mma.cuh, for the CPU emulator (fakecuda.h): included
// by mma.cuh in place of its inline assembly when FASTATTN_EMULATED_PTX is defined (the emulator's build
// only). Each follows the PTX ISA's fragment layouts, restated at the top of mma.cuh (lane = 4g + t):
//
//   mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}: the lanes share their A and B fragments, and each
//     lane computes its four C elements; the products are summed in double and rounded once (the
//     hardware's fp32 accumulation order is not modelled: results may differ in the last bits);
//   ldmatrix.sync.aligned.m8n8.x4(.trans).shared.b16: lanes 8i..8i+7 give the row addresses of matrix i;
//     lane l receives from each matrix the pair (row g, cols 2t, 2t+1), or with .trans (rows 2t, 2t+1,
//     col g), the first element in the low 16 bits;
//   cp.async.cg.shared.global 16 bytes, the bytes past src_bytes zero-filled; commit_group,
//     wait_group: fakecuda.h's async_copy, async_commit, async_wait (the bytes land at the wait).
// mma16816 touches no memory: it is left out of the race checker's instrumentation (FAKECUDA_UNCHECKED),
// which would otherwise see its 16x16 operand arrays' every access. ldmatrix's reads of shared memory
// are checked, each lane's as the lane's own.
#pragma once

#include <cstdint>
#include <cstring>

#include "fakecuda.h"

namespace fastattn {
namespace mma {
namespace emulated {

inline float low_half(uint32_t pair, bool bf16) {
  const uint16_t bits = uint16_t(pair & 0xFFFFu);
  return bf16 ? __bfloat162float(__ushort_as_bfloat16(bits)) : __half2float(__ushort_as_half(bits));
}
inline float high_half(uint32_t pair, bool bf16) {
  const uint16_t bits = uint16_t(pair >> 16);
  return bf16 ? __bfloat162float(__ushort_as_bfloat16(bits)) : __half2float(__ushort_as_half(bits));
}

struct MmaOperands {
  uint32_t a[4], b[2];
};

FAKECUDA_UNCHECKED inline void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, bool bf16) {
  const auto warp = fakecuda::warp_share(MmaOperands{{a[0], a[1], a[2], a[3]}, {b0, b1}});
  float A[16][16], B[16][8];
  for (unsigned lane = 0; lane < 32; ++lane) {
    const MmaOperands o = warp[lane];
    const unsigned g = lane / 4, t = lane % 4;
    // a0: (g, 2t..)  a1: (g+8, 2t..)  a2: (g, 2t+8..)  a3: (g+8, 2t+8..)
    const unsigned rows[4] = {g, g + 8, g, g + 8}, cols[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
    for (int i = 0; i < 4; ++i) {
      A[rows[i]][cols[i]] = low_half(o.a[i], bf16);
      A[rows[i]][cols[i] + 1] = high_half(o.a[i], bf16);
    }
    for (int i = 0; i < 2; ++i) {  // b0: (k = 2t, 2t+1; n = g)  b1: (k = 2t+8, 2t+9; n = g)
      B[2 * t + 8 * i][g] = low_half(o.b[i], bf16);
      B[2 * t + 8 * i + 1][g] = high_half(o.b[i], bf16);
    }
  }
  const unsigned lane = fakecuda::linear_thread() % 32, g = lane / 4, t = lane % 4;
  const unsigned rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
  for (int i = 0; i < 4; ++i) {
    double sum = c[i];
    for (int k = 0; k < 16; ++k) sum += double(A[rows[i]][k]) * double(B[k][cols[i]]);
    c[i] = float(sum);
  }
}

inline void ldmatrix_x4(uint32_t (&r)[4], const void* p, bool transpose) {
  const auto rows = fakecuda::warp_share(static_cast<const uint16_t*>(p));  // lanes 8i..8i+7: matrix i's rows
  const unsigned lane = fakecuda::linear_thread() % 32, g = lane / 4, t = lane % 4;
  for (unsigned i = 0; i < 4; ++i) {
    uint16_t lo, hi;
    if (transpose) {  // (rows 2t, 2t+1; col g)
      lo = rows[8 * i + 2 * t][g];
      hi = rows[8 * i + 2 * t + 1][g];
    } else {  // (row g; cols 2t, 2t+1)
      lo = rows[8 * i + g][2 * t];
      hi = rows[8 * i + g][2 * t + 1];
    }
    r[i] = uint32_t(lo) | (uint32_t(hi) << 16);
  }
}

}  // namespace emulated

template <>
inline void mma16816<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  emulated::mma16816(c, a, b0, b1, false);
}
template <>
inline void mma16816<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  emulated::mma16816(c, a, b0, b1, true);
}

inline void ldmatrix_x4(uint32_t (&r)[4], const void* p) { emulated::ldmatrix_x4(r, p, false); }
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) { emulated::ldmatrix_x4(r, p, true); }

FAKECUDA_UNCHECKED inline void cp_async_16(void* dst, const void* src, int src_bytes) {
  fakecuda::async_copy(dst, src, src_bytes, __builtin_extract_return_addr(__builtin_return_address(0)));
}
inline void cp_async_commit() { fakecuda::async_commit(); }
template <int N>
inline void cp_async_wait() {
  fakecuda::async_wait(N);
}

}  // namespace mma
}  // namespace fastattn
