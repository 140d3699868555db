// Kernels with and without shared-memory races, for test_cuda_emulated.py's test of the race checker
// (racecheck.h): `race_driver NAME` runs kernel NAME in one block of 64 threads and exits with 0, or the
// checker aborts it with its report.
#include <cstdio>
#include <cstring>

#include "fakecuda.h"
#include "attention/mma.cuh"  // with FASTATTN_EMULATED_PTX: cp.async from emulated_ptx.h

namespace {

constexpr unsigned kThreads = 64;

struct Params {
  float* out;
  const float* in;
};

// Each thread writes its slot and reads its neighbour's, which is another warp's for thread 31.
__global__ void neighbour_without_barrier(Params p) {
  float* slots = static_cast<float*>(fakecuda::dynamic_shared());
  const unsigned t = threadIdx.x;
  slots[t] = float(t);
  p.out[t] = slots[(t + 1) % kThreads];
}

__global__ void neighbour_after_syncthreads(Params p) {
  float* slots = static_cast<float*>(fakecuda::dynamic_shared());
  const unsigned t = threadIdx.x;
  slots[t] = float(t);
  __syncthreads();
  p.out[t] = slots[(t + 1) % kThreads];
}

// A read of the neighbour's slot, then a write of one's own slot, with no barrier between.
__global__ void write_after_read(Params p) {
  float* slots = static_cast<float*>(fakecuda::dynamic_shared());
  const unsigned t = threadIdx.x;
  slots[t] = 0.0f;
  __syncthreads();
  p.out[t] = slots[(t + 1) % kThreads];
  slots[t] = float(t);
}

// Lanes exchange through shared memory within their warp: __syncwarp orders them, a shuffle does not.
__global__ void in_warp_after_syncwarp(Params p) {
  float* slots = static_cast<float*>(fakecuda::dynamic_shared());
  const unsigned t = threadIdx.x;
  slots[t] = float(t);
  __syncwarp();
  p.out[t] = slots[(t ^ 1u)];
}
__global__ void in_warp_after_shuffle(Params p) {
  float* slots = static_cast<float*>(fakecuda::dynamic_shared());
  const unsigned t = threadIdx.x;
  slots[t] = float(t);
  p.out[t] = __shfl_xor_sync(0xFFFFFFFFu, slots[t], 1) + slots[t ^ 1u];
}
// __syncwarp does not order two warps.
__global__ void across_warps_after_syncwarp(Params p) {
  float* slots = static_cast<float*>(fakecuda::dynamic_shared());
  const unsigned t = threadIdx.x;
  slots[t] = float(t);
  __syncwarp();
  p.out[t] = slots[(t + 32) % kThreads];
}

// Two threads write one static __shared__ variable in the same epoch.
__global__ void static_shared_write_write(Params p) {
  auto& total = fakecuda::static_shared<float>([] {});
  if (threadIdx.x == 0) total = 1.0f;
  if (threadIdx.x == 40) total = 2.0f;
  __syncthreads();
  p.out[threadIdx.x] = total;
}

// cp.async: reading the copied bytes before cp.async.wait_group, and after it (and a barrier).
__global__ void cp_async_read_before_wait(Params p) {
  float* slots = static_cast<float*>(fakecuda::dynamic_shared());
  const unsigned t = threadIdx.x;
  if (t < 16) fastattn::mma::cp_async_16(slots + 4 * t, p.in + 4 * t, 16);
  fastattn::mma::cp_async_commit();
  p.out[t] = slots[t];
  fastattn::mma::cp_async_wait<0>();
}
__global__ void cp_async_read_after_wait(Params p) {
  float* slots = static_cast<float*>(fakecuda::dynamic_shared());
  const unsigned t = threadIdx.x;
  if (t < 16) fastattn::mma::cp_async_16(slots + 4 * t, p.in + 4 * t, 16);
  fastattn::mma::cp_async_commit();
  fastattn::mma::cp_async_wait<0>();
  __syncthreads();
  p.out[t] = slots[(t + 5) % kThreads];
}
// cp.async.wait_group 1 leaves the newest group in flight.
__global__ void cp_async_wait_leaves_newest(Params p) {
  float* slots = static_cast<float*>(fakecuda::dynamic_shared());
  const unsigned t = threadIdx.x;
  if (t < 16) fastattn::mma::cp_async_16(slots + 4 * t, p.in + 4 * t, 16);
  fastattn::mma::cp_async_commit();
  if (t < 16) fastattn::mma::cp_async_16(slots + 64 + 4 * t, p.in + 4 * t, 16);
  fastattn::mma::cp_async_commit();
  fastattn::mma::cp_async_wait<1>();
  __syncthreads();
  p.out[t] = slots[64 + t];
  fastattn::mma::cp_async_wait<0>();
}

struct Kernel {
  const char* name;
  void (*kernel)(Params);
};
constexpr Kernel kKernels[] = {
    {"neighbour_without_barrier", neighbour_without_barrier},
    {"neighbour_after_syncthreads", neighbour_after_syncthreads},
    {"write_after_read", write_after_read},
    {"in_warp_after_syncwarp", in_warp_after_syncwarp},
    {"in_warp_after_shuffle", in_warp_after_shuffle},
    {"across_warps_after_syncwarp", across_warps_after_syncwarp},
    {"static_shared_write_write", static_shared_write_write},
    {"cp_async_read_before_wait", cp_async_read_before_wait},
    {"cp_async_read_after_wait", cp_async_read_after_wait},
    {"cp_async_wait_leaves_newest", cp_async_wait_leaves_newest},
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) fakecuda::fail("usage: race_driver KERNEL");
  float in[kThreads], out[kThreads];
  for (unsigned i = 0; i < kThreads; ++i) in[i] = float(i);
  for (const Kernel& k : kKernels)
    if (std::strcmp(k.name, argv[1]) == 0) {
      fake_launch(k.kernel, dim3(1), dim3(kThreads), 2 * kThreads * sizeof(float), Params{out, in});
      return cudaGetLastError() == cudaSuccess ? 0 : 1;
    }
  fakecuda::fail("no such kernel");
}
