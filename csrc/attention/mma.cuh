// Warp-level tensor-core building blocks (sm80+): mma.sync m16n8k16 with fp32 accumulation, ldmatrix,
// cp.async, and shared-memory tiles. Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16"),
// with lane = 4 * g + t (g = lane / 4 in 0..7, t = lane % 4 in 0..3):
//
//   A (16 x 16, row-major)  a0: (g, 2t..2t+1)  a1: (g+8, 2t..2t+1)  a2: (g, 2t+8..2t+9)  a3: (g+8, 2t+8..2t+9)
//   B (16 x 8,  "col")      b0: (k = 2t..2t+1, n = g)               b1: (k = 2t+8..2t+9, n = g)
//   C (16 x 8,  fp32)       c0: (g, 2t)  c1: (g, 2t+1)  c2: (g+8, 2t)  c3: (g+8, 2t+1)
//
// ldmatrix.x4 loads four 8x8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i, and
// every lane receives, from matrix i, register i holding (row g, cols 2t..2t+1) (.trans: the
// transpose, i.e. (rows 2t..2t+1, col g)). Hence, for a 16-row tile in shared memory:
//   A fragment at (r0, k0):                 lane l reads row r0 + l%8 + 8*((l/8)%2), col k0 + 8*(l/16)
//   B fragments of C = A * Bt^T where Bt is stored as rows n, cols k (two n8 tiles at n0 and n0+8):
//                                           lane l reads row n0 + l%8 + 8*(l/16),   col k0 + 8*((l/8)%2)
//   B fragments of C = A * B where B is stored as rows k, cols n (ldmatrix.trans):
//                                           lane l reads row k0 + l%8 + 8*((l/8)%2), col n0 + 8*(l/16)
// The C fragments of two neighbouring n8 tiles are, once rounded to 16 bits, the A fragment of the
// next product (FlashAttention's register reuse of P): see c_to_a.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace fastattn {
namespace mma {

// ---------------------------------------------------------------------------------- packing, mma
template <typename T> __device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <> __device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);  // .x = lo (the lower address / column)
  return *reinterpret_cast<const uint32_t*>(&h);
}
template <> __device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

// c[0..4) += A (a[0..4)) * B (b[0..2)), 16x8x16, fp32 accumulation.
template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
#if defined(FASTATTN_EMULATED_PTX)
// The CPU emulator (tests/cuda_emulator/emulated_ptx.h) defines mma16816, ldmatrix and cp.async by the
// fragment layouts above, as warp-collective operations of its emulated threads. The GPU build never
// defines FASTATTN_EMULATED_PTX: it compiles the instructions below.
}  // namespace mma
}  // namespace fastattn
#include "emulated_ptx.h"
namespace fastattn {
namespace mma {
#else
template <>
__device__ __forceinline__ void mma16816<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                                        uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ----------------------------------------------------------------------------------- ldmatrix
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// ------------------------------------------------------------------------------------ cp.async
// 16 bytes from global to shared; only `src_bytes` (0..16) are read, the rest is zero-filled.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

#endif  // FASTATTN_EMULATED_PTX

// --------------------------------------------------------------------------------- smem tiles
// A ROWS x HD tile of 16-bit elements in shared memory, each row padded by 8 elements (16 bytes) so
// that the 8 rows an ldmatrix reads fall in different banks.
template <typename T, int ROWS, int HD>
struct Tile {
  static constexpr int kStride = HD + 8;  // elements
  static constexpr int kElems = ROWS * kStride;
  T* data;
  __device__ __forceinline__ T* at(int row, int col) const { return data + row * kStride + col; }
};

// ----------------------------------------------------------------------------- warp products
// C (16 x NCOLS) += A (16 x KDIM: rows a_row.. of tile a) * Bt^T (Bt: rows b_row..b_row+NCOLS of tile b,
// cols 0..KDIM), A and Bt both read from shared memory. acc[n][4]: the n-th 8-column tile of C.
template <typename T, int KDIM, int NCOLS, class TileA, class TileB>
__device__ __forceinline__ void gemm_nt(float (&acc)[NCOLS / 8][4], const TileA& a, int a_row, const TileB& b,
                                        int b_row, int lane) {
  static_assert(KDIM % 16 == 0 && NCOLS % 16 == 0, "tiles are multiples of 16");
#pragma unroll
  for (int kk = 0; kk < KDIM / 16; ++kk) {
    uint32_t af[4];
    ldmatrix_x4(af, a.at(a_row + lane % 8 + 8 * ((lane / 8) % 2), kk * 16 + 8 * (lane / 16)));
#pragma unroll
    for (int nn = 0; nn < NCOLS / 16; ++nn) {
      uint32_t bf[4];
      ldmatrix_x4(bf, b.at(b_row + nn * 16 + lane % 8 + 8 * (lane / 16), kk * 16 + 8 * ((lane / 8) % 2)));
      mma16816<T>(acc[2 * nn], af, bf[0], bf[1]);
      mma16816<T>(acc[2 * nn + 1], af, bf[2], bf[3]);
    }
  }
}

// C (16 x NCOLS) += A (16 x KDIM, fragments in registers) * B (rows b_row..b_row+KDIM of tile b,
// cols b_col..b_col+NCOLS), B read with ldmatrix.trans.
template <typename T, int KDIM, int NCOLS, class TileB>
__device__ __forceinline__ void gemm_rn(float (&acc)[NCOLS / 8][4], const uint32_t (&a)[KDIM / 16][4],
                                        const TileB& b, int b_row, int b_col, int lane) {
  static_assert(KDIM % 16 == 0 && NCOLS % 16 == 0, "tiles are multiples of 16");
#pragma unroll
  for (int kk = 0; kk < KDIM / 16; ++kk) {
#pragma unroll
    for (int nn = 0; nn < NCOLS / 16; ++nn) {
      uint32_t bf[4];
      ldmatrix_x4_trans(bf, b.at(b_row + kk * 16 + lane % 8 + 8 * ((lane / 8) % 2), b_col + nn * 16 + 8 * (lane / 16)));
      mma16816<T>(acc[2 * nn], a[kk], bf[0], bf[1]);
      mma16816<T>(acc[2 * nn + 1], a[kk], bf[2], bf[3]);
    }
  }
}

// The C fragments of a 16 x NCOLS fp32 tile as A fragments (16 x NCOLS, rounded to T).
template <typename T, int NCOLS>
__device__ __forceinline__ void c_to_a(uint32_t (&a)[NCOLS / 16][4], const float (&c)[NCOLS / 8][4]) {
#pragma unroll
  for (int kk = 0; kk < NCOLS / 16; ++kk) {
    a[kk][0] = pack2<T>(c[2 * kk][0], c[2 * kk][1]);          // (g,   2t..)     of cols 16kk..16kk+7
    a[kk][1] = pack2<T>(c[2 * kk][2], c[2 * kk][3]);          // (g+8, 2t..)
    a[kk][2] = pack2<T>(c[2 * kk + 1][0], c[2 * kk + 1][1]);  // (g,   2t+8..)   of cols 16kk+8..16kk+15
    a[kk][3] = pack2<T>(c[2 * kk + 1][2], c[2 * kk + 1][3]);  // (g+8, 2t+8..)
  }
}

template <int N>
__device__ __forceinline__ void zero(float (&acc)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
}

}  // namespace mma
}  // namespace fastattn
