// Host emulation of the CUDA features the kernels of csrc/ use, so that their source runs unchanged on a
// CPU (the test rewrites each `kernel<<<grid, block, smem, stream>>>(args)` into `fake_launch(kernel,
// grid, block, smem, args)`, each `extern __shared__ T name[];` into a pointer to the launch's dynamic
// shared memory, and each `__shared__ T name[...];` into a reference from static_shared).
//
// Emulated:
//   - every CUDA thread of a block is a fiber (ucontext) on the calling OS thread; the fibers of a
//     block take turns, each running until it waits at a barrier or returns;
//   - __syncthreads: a barrier of the block's threads; threads that have returned drop out of it;
//   - __syncwarp: a barrier of the warp's threads;
//   - dynamic shared memory: one buffer of the launch's size, which the blocks reuse (a launch asking
//     for more than an H100 block may have, 227 KiB, fails as on the GPU); static __shared__ variables
//     live in one arena (static_shared);
//   - shared-memory races (racecheck.h): every access to shared memory is checked against the last
//     writer and readers of its bytes since the last barrier, whatever order the threads ran in;
//   - __shfl_xor_sync: a barrier of the warp's 32 lanes with an exchange of values (the mask is
//     ignored: the kernels only shuffle with every lane of the warp taking part);
//   - warp-wide instructions (warp_share: every lane gives a value and gets the warp's), on which
//     emulated_ptx.h builds mma.sync m16n8k16 and ldmatrix (.trans) for csrc/attention/mma.cuh;
//   - cp.async with commit and wait groups: a copy's bytes land in shared memory when a wait_group
//     retires its group, not before (a read before the wait sees the old bytes, and racecheck.h reports
//     it); a thread that returns with copies in flight fails;
//   - threadIdx / blockIdx / blockDim / gridDim, fp16 and bf16 conversions (round to nearest even),
//     the few intrinsics the kernels call.
// Not emulated:
//   - concurrency: the blocks of a grid run one after another and the threads of a block take turns
//     in a fixed order (shared memory keeps the previous block's values, where a GPU's would be
//     undefined); racecheck.h finds the shared-memory races this order hides, not races on global
//     memory (between blocks, or with atomics);
//   - device math: log, exp etc. are the host's libm (not bit for bit libdevice's); ex2.approx and
//     friends are not used by these kernels;
//   - launch limits other than the block size and the dynamic shared memory, streams (the launch is
//     synchronous); mma.sync sums in double (the hardware's fp32 accumulation order is not modelled);
//     timing, memory coalescing, bank conflicts, the real warp scheduler.
// A barrier that can never complete (threads waiting at different barriers) aborts with a message.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <array>
#include <type_traits>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <new>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

using std::max;
using std::min;

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
// The running fiber's coordinates: the scheduler sets them before it resumes a fiber.
inline dim3 threadIdx, blockIdx, blockDim, gridDim;

using cudaError_t = int;
using cudaStream_t = void*;
constexpr cudaError_t cudaSuccess = 0;
constexpr cudaError_t cudaErrorInvalidValue = 1;
constexpr cudaError_t cudaErrorInvalidConfiguration = 9;
inline cudaError_t g_last_error = cudaSuccess;
inline cudaError_t cudaGetLastError() { return std::exchange(g_last_error, cudaSuccess); }
constexpr size_t kMaxDynamicSharedBytes = 227 * 1024;  // an H100 block's opt-in limit
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };
template <class Kernel>
inline cudaError_t cudaFuncSetAttribute(Kernel, cudaFuncAttribute, int bytes) {
  return size_t(bytes) <= kMaxDynamicSharedBytes ? cudaSuccess : cudaErrorInvalidValue;
}

// attention_launch.cu's kernel_image_status: the emulator has one device and every kernel image.
struct cudaFuncAttributes { int maxThreadsPerBlock = 1024; };
inline cudaError_t cudaGetDevice(int* device) { return *device = 0, cudaSuccess; }
inline cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : cudaErrorInvalidValue; }
template <class Kernel>
inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attributes, Kernel) {
  return *attributes = {}, cudaSuccess;
}

// Declared for headers that define device functions the emulated kernels never call (shared-memory
// addresses: emulated_ptx.h takes pointers); a call would fail to link.
size_t __cvta_generic_to_shared(const void*);

struct float4 { float x, y, z, w; };
struct uint4 { unsigned x, y, z, w; };
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

// ------------------------------------------------------------------------------ fp16 / bf16 storage
struct __half { uint16_t bits; };
struct __nv_bfloat16 { uint16_t bits; };

inline float __half2float(__half h) {
  const uint32_t sign = uint32_t(h.bits & 0x8000u) << 16, exponent = (h.bits >> 10) & 0x1Fu, mantissa = h.bits & 0x3FFu;
  float magnitude;
  if (exponent == 0x1F) magnitude = mantissa != 0 ? NAN : INFINITY;
  else if (exponent == 0) magnitude = std::ldexp(float(mantissa), -24);  // subnormal
  else magnitude = std::ldexp(float(mantissa | 0x400u), int(exponent) - 25);
  return std::bit_cast<float>(std::bit_cast<uint32_t>(magnitude) | sign);
}
inline __half __float2half_rn(float v) {
  const uint16_t sign = uint16_t((std::bit_cast<uint32_t>(v) >> 16) & 0x8000u);
  const float magnitude = std::fabs(v);
  if (std::isnan(v)) return {uint16_t(sign | 0x7E00u)};
  if (magnitude >= 65520.0f) return {uint16_t(sign | 0x7C00u)};  // rounds to infinity
  if (magnitude < 0x1p-14f) return {uint16_t(sign | uint16_t(std::nearbyint(magnitude * 0x1p24f)))};  // subnormal
  const uint32_t bits = std::bit_cast<uint32_t>(magnitude);
  const uint32_t rounded = (bits + 0xFFFu + ((bits >> 13) & 1u)) >> 13;  // drop 13 mantissa bits, to nearest even
  return {uint16_t(sign | (rounded - ((127 - 15) << 10)))};              // rebias the exponent
}
inline float __bfloat162float(__nv_bfloat16 b) { return std::bit_cast<float>(uint32_t(b.bits) << 16); }
inline __nv_bfloat16 __float2bfloat16_rn(float v) {
  const uint32_t bits = std::bit_cast<uint32_t>(v);
  if (std::isnan(v)) return {uint16_t((bits >> 16) | 0x40)};  // stays a (quiet) NaN
  return {uint16_t((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16)};  // round to nearest even
}
struct __half2 { uint16_t x, y; };  // .x at the lower address
struct __nv_bfloat162 { uint16_t x, y; };
inline __half2 __floats2half2_rn(float lo, float hi) { return {__float2half_rn(lo).bits, __float2half_rn(hi).bits}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
  return {__float2bfloat16_rn(lo).bits, __float2bfloat16_rn(hi).bits};
}
inline __half __ushort_as_half(uint16_t bits) { return {bits}; }
inline __nv_bfloat16 __ushort_as_bfloat16(uint16_t bits) { return {bits}; }
inline uint16_t __half_as_ushort(__half h) { return h.bits; }
inline uint16_t __bfloat16_as_ushort(__nv_bfloat16 b) { return b.bits; }

inline int __float_as_int(float f) { return std::bit_cast<int>(f); }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline unsigned __umulhi(unsigned a, unsigned b) { return unsigned((uint64_t(a) * b) >> 32); }

namespace fakecuda {
[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "fakecuda: %s\n", what);
  std::abort();
}
inline unsigned linear_thread() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }
}  // namespace fakecuda

#include "racecheck.h"

// --------------------------------------------------------------------------------------- fibers
namespace fakecuda {

// Waiters spin by yielding to the scheduler until the generation moves on.
struct Barrier {
  int expected = 0, arrived = 0;
  uint64_t generation = 0;
  void arrive() {
    if (++arrived == expected) {
      arrived = 0;
      ++generation;
    }
  }
  void drop() {  // a thread returned: later barriers wait for one thread less
    --expected;
    if (arrived > 0 && arrived == expected) {
      arrived = 0;
      ++generation;
    }
  }
};

// A thread's cp.async copies: the bytes read at the issue, written to shared memory at the wait.
struct AsyncCopy {
  char* dst;
  std::array<char, 16> bytes;
  const void* code;  // the cp.async, for racecheck.h's report
};

struct Fiber {
  ucontext_t context;
  bool done = false;
  std::vector<AsyncCopy> open_group;                 // issued since the last commit_group
  std::deque<std::vector<AsyncCopy>> committed_groups;  // the oldest first
};

struct Block {
  std::vector<Fiber> fibers;
  Barrier block_barrier;
  std::vector<Barrier> warp_barriers;
  // Two exchange buffers per lane, used by alternate shuffles: a lane can only overwrite a buffer
  // after every lane of its warp has reached the next shuffle, that is, has read the buffer.
  std::vector<uint64_t> shuffle_slots[2];
  std::vector<std::array<uint64_t, 4>> exchange_slots[2];  // the same, for warp_share's up to 32 bytes
  ucontext_t scheduler;
  unsigned current = 0;
  bool progressed = false;  // some fiber got past a barrier or returned in this round
};
inline Block* g_block = nullptr;
inline void (*g_kernel_body)() = nullptr;

inline void wait(Barrier& barrier) {
  const uint64_t generation = barrier.generation;
  barrier.arrive();
  while (barrier.generation == generation)
    swapcontext(&g_block->fibers[g_block->current].context, &g_block->scheduler);
  g_block->progressed = true;
}

inline void fiber_main() {
  g_kernel_body();
  Block& block = *g_block;
  const unsigned t = block.current;
  if (!block.fibers[t].open_group.empty() || !block.fibers[t].committed_groups.empty())
    fail("a thread returned with cp.async copies in flight (no cp.async.wait_group for them)");
  block.fibers[t].done = true;
  block.progressed = true;
  block.block_barrier.drop();
  block.warp_barriers[t / 32].drop();
}  // returns to the scheduler through uc_link

// Runs one block: resumes the unfinished fibers in thread order until all have returned.
inline void run_block(Block& block, dim3 block_dim, std::vector<std::unique_ptr<char[]>>& stacks,
                      size_t stack_size) {
  const unsigned threads = block_dim.x * block_dim.y * block_dim.z;
  block.fibers = std::vector<Fiber>(threads);
  block.block_barrier = Barrier{int(threads)};
  block.warp_barriers.clear();
  for (unsigned w = 0; w < (threads + 31) / 32; ++w)
    block.warp_barriers.push_back(Barrier{int(min(32u, threads - 32 * w))});
  for (auto& slots : block.shuffle_slots) slots.assign(threads, 0);
  for (auto& slots : block.exchange_slots) slots.assign(threads, {});
  const unsigned dim[3] = {block_dim.x, block_dim.y, block_dim.z}, index[3] = {blockIdx.x, blockIdx.y, blockIdx.z};
  race::begin_block(threads, dim, index);
  for (unsigned t = 0; t < threads; ++t) {
    ucontext_t& context = block.fibers[t].context;
    getcontext(&context);
    context.uc_stack.ss_sp = stacks[t].get();
    context.uc_stack.ss_size = stack_size;
    context.uc_link = &block.scheduler;
    makecontext(&context, fiber_main, 0);
  }
  for (unsigned running = threads; running > 0;) {
    block.progressed = false;
    running = 0;
    for (unsigned t = 0; t < threads; ++t) {
      if (block.fibers[t].done) continue;
      block.current = t;
      threadIdx = dim3(t % block_dim.x, t / block_dim.x % block_dim.y, t / (block_dim.x * block_dim.y));
      swapcontext(&block.scheduler, &block.fibers[t].context);
      running += block.fibers[t].done ? 0 : 1;
    }
    if (running > 0 && !block.progressed) fail("deadlock: the threads of a block wait at different barriers");
  }
  race::end_block();
}

}  // namespace fakecuda

inline void __syncthreads() {
  fakecuda::wait(fakecuda::g_block->block_barrier);
  fakecuda::race::passed_syncthreads();
}
inline void __syncwarp(unsigned /*mask*/ = 0xFFFFFFFFu) {
  fakecuda::wait(fakecuda::g_block->warp_barriers[fakecuda::linear_thread() / 32]);
  fakecuda::race::passed_syncwarp();
}

template <class T>
inline T __shfl_xor_sync(unsigned /*mask*/, T value, int lane_mask) {
  static_assert(sizeof(T) <= sizeof(uint64_t));
  fakecuda::Block& block = *fakecuda::g_block;
  const unsigned t = fakecuda::linear_thread(), warp = t / 32, lane = t % 32;
  fakecuda::Barrier& barrier = block.warp_barriers[warp];
  std::vector<uint64_t>& slots = block.shuffle_slots[barrier.generation % 2];
  std::memcpy(&slots[t], &value, sizeof(T));
  fakecuda::wait(barrier);
  T result;
  std::memcpy(&result, &slots[warp * 32 + (lane ^ unsigned(lane_mask))], sizeof(T));
  return result;
}

namespace fakecuda {
// What the 32 lanes of a warp gave to warp_share, by lane (valid until the warp's next collective).
template <class T>
struct WarpValues {
  const std::array<uint64_t, 4>* lanes;
  T operator[](unsigned lane) const {
    T value;
    std::memcpy(&value, lanes[lane].data(), sizeof(T));
    return value;
  }
};

// Every lane of the calling thread's warp gives `mine` and gets all 32 lanes' values. The warp-wide
// instructions (mma.sync, ldmatrix) are built on it: each lane computes its own results from what the
// whole warp holds, as the hardware does.
template <class T>
inline WarpValues<T> warp_share(const T& mine) {
  static_assert(sizeof(T) <= sizeof(std::array<uint64_t, 4>) && std::is_trivially_copyable_v<T>);
  Block& block = *g_block;
  const unsigned t = linear_thread(), warp = t / 32;
  Barrier& barrier = block.warp_barriers[warp];
  if (barrier.expected != 32) fail("a warp-wide instruction needs all 32 lanes of the warp");
  std::vector<std::array<uint64_t, 4>>& slots = block.exchange_slots[barrier.generation % 2];
  std::memcpy(slots[t].data(), &mine, sizeof(T));
  wait(barrier);
  return {&slots[warp * 32]};
}
}  // namespace fakecuda

namespace fakecuda {
inline std::vector<std::max_align_t> g_dynamic_shared;  // the running launch's dynamic shared memory
inline void* dynamic_shared() { return g_dynamic_shared.data(); }

// The static __shared__ variables: `__shared__ T name;` is rewritten as `auto& name =
// fakecuda::static_shared<T>([] {});`, the lambda's type making each declaration (and each template
// instantiation of it) a variable of its own, allocated once in this arena.
constexpr size_t kStaticSharedBytes = 48 * 1024;  // a block's static shared memory limit
alignas(16) inline char g_static_shared[kStaticSharedBytes];
template <class T, class Declaration>
T& static_shared(Declaration) {
  static_assert(std::is_trivially_default_constructible_v<T>, "__shared__ variables have no constructor");
  static T* const variable = [] {
    const size_t at = (race::g_state.static_size + alignof(T) - 1) / alignof(T) * alignof(T);
    if (at + sizeof(T) > kStaticSharedBytes) fail("the __shared__ variables exceed 48 KiB");
    race::g_state.static_begin = g_static_shared;
    race::g_state.static_size = at + sizeof(T);
    race::g_state.static_shadow.resize(race::g_state.static_size);
    return std::launder(reinterpret_cast<T*>(g_static_shared + at));
  }();
  return *variable;
}

// cp.async (emulated_ptx.h): the copy is read now and lands at the wait_group that retires its group.
FAKECUDA_UNCHECKED inline void async_copy(void* dst, const void* src, int src_bytes, const void* code) {
  AsyncCopy copy{static_cast<char*>(dst), {}, code};
  std::memcpy(copy.bytes.data(), src, size_t(src_bytes));  // the bytes past src_bytes: zero
  race::async_issue(dst, copy.bytes.size(), code);
  g_block->fibers[linear_thread()].open_group.push_back(copy);
}
FAKECUDA_UNCHECKED inline void async_commit() {
  Fiber& fiber = g_block->fibers[linear_thread()];
  fiber.committed_groups.push_back(std::move(fiber.open_group));
  fiber.open_group.clear();
}
FAKECUDA_UNCHECKED inline void async_wait(size_t pending_groups) {
  Fiber& fiber = g_block->fibers[linear_thread()];
  for (; fiber.committed_groups.size() > pending_groups; fiber.committed_groups.pop_front())
    for (const AsyncCopy& copy : fiber.committed_groups.front()) {
      race::async_land(copy.dst, copy.bytes.size(), copy.code);
      std::memcpy(copy.dst, copy.bytes.data(), copy.bytes.size());
    }
}
}  // namespace fakecuda

// kernel<<<grid, block, smem>>>(params), run to completion before it returns.
template <class Params>
void fake_launch(void (*kernel)(Params), dim3 grid, dim3 block_dim, size_t smem, const Params& params) {
  const unsigned threads = block_dim.x * block_dim.y * block_dim.z;
  if (threads == 0 || threads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 ||
      grid.z > 65535 || smem > kMaxDynamicSharedBytes) {
    g_last_error = cudaErrorInvalidConfiguration;
    return;
  }
  // Poisoned with all-ones bytes (NaN in every float type): a read before the kernel's write shows.
  fakecuda::g_dynamic_shared.assign((smem + sizeof(std::max_align_t) - 1) / sizeof(std::max_align_t), {});
  std::memset(static_cast<void*>(fakecuda::g_dynamic_shared.data()), 0xFF,
              fakecuda::g_dynamic_shared.size() * sizeof(std::max_align_t));
  constexpr size_t kStackSize = 256 * 1024;  // the kernels' locals are a few KiB; libm needs little
  std::vector<std::unique_ptr<char[]>> stacks;
  for (unsigned t = 0; t < threads; ++t) stacks.emplace_back(new char[kStackSize]);
  static void (*s_kernel)(Params);
  static const Params* s_params;
  s_kernel = kernel;
  s_params = &params;
  fakecuda::g_kernel_body = [] { s_kernel(*s_params); };
  fakecuda::race::launch(reinterpret_cast<const void*>(kernel), fakecuda::g_dynamic_shared.data(), smem);
  fakecuda::Block block;
  fakecuda::g_block = &block;
  blockDim = block_dim;
  gridDim = grid;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = dim3(x, y, z);
        fakecuda::run_block(block, block_dim, stacks, kStackSize);
      }
  fakecuda::g_block = nullptr;
}
