// The emulator's shared-memory race checker, as compute-sanitizer's racecheck: between two barriers, a
// byte of shared memory written by one thread and read or written by another is a race, whatever
// order the emulator happened to run the threads in.
//
// How: the drivers are compiled with GCC's -fsanitize=thread instrumentation but without its runtime;
// this header defines the __tsan_read* / __tsan_write* hooks the compiler calls on every load and store,
// and keeps, for each byte of the launch's shared memory (dynamic and static), a shadow of its last
// writer and its last two readers: the thread, the barrier epoch it was in and the code address. Each
// thread counts the __syncthreads and the __syncwarp it has passed; two accesses are ordered if they are
// by one thread, in different blocks, in different __syncthreads epochs, or by threads of one warp in
// different __syncwarp epochs. Warp shuffles and the warp-wide mma.sync / ldmatrix are not memory
// barriers (as on the GPU since Volta). An asynchronous copy (cp.async) writes its bytes when its group
// is waited for; until then they are "in flight", and any access to them is reported.
//
// A race aborts the driver with the kernel, the block, the two threads (threadIdx, warp, lane), what
// each did and the source line of each (addr2line on the code addresses; the drivers are linked with
// -no-pie -g1 for that).
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

// The checker's own code is not instrumented (its accesses would call back into it).
#define FAKECUDA_UNCHECKED __attribute__((no_sanitize_thread, noinline))

namespace fakecuda::race {

struct Access {
  const void* code = nullptr;  // the instruction's address
  uint32_t block = 0;          // the block's serial number (0: no access yet)
  uint32_t thread = 0;         // linear thread index in the block
  uint32_t syncs = 0;          // __syncthreads the thread had passed
  uint32_t warp_syncs = 0;     // __syncwarp the thread had passed
};

struct ByteShadow {
  Access writer, readers[2];  // readers[0]: the latest, readers[1]: the latest other thread before it
  Access in_flight;           // a cp.async that will write the byte (block 0: none)
};

// The shared memory of the running launch, and the state of the running block.
struct State {
  const char* dynamic_begin = nullptr;
  size_t dynamic_size = 0;
  std::vector<ByteShadow> dynamic_shadow;
  char* static_begin = nullptr;  // static_shared's arena (the kernels' __shared__ variables)
  size_t static_size = 0;
  std::vector<ByteShadow> static_shadow;
  const void* kernel = nullptr;
  uint32_t block_serial = 0;
  unsigned block_dim[3] = {1, 1, 1}, block_index[3] = {0, 0, 0};
  std::vector<uint32_t> syncs, warp_syncs;  // per thread
  bool running = false;                     // inside a block (the emulator's own set-up is not checked)
  bool busy = false;                        // inside the checker
};
inline State g_state;

FAKECUDA_UNCHECKED inline std::string source_of(const void* code) {
  char command[512];
  std::snprintf(command, sizeof command, "addr2line -C -f -i -p -e /proc/%d/exe %p 2>/dev/null", int(getpid()),
                code);
  std::string text;
  if (FILE* pipe = popen(command, "r")) {
    char line[1024];
    while (std::fgets(line, sizeof line, pipe)) text += std::string("      ") + line;
    pclose(pipe);
  }
  return text.empty() ? "      (no source line: build with -g1 -no-pie)\n" : text;
}

FAKECUDA_UNCHECKED inline std::string describe(const Access& a) {
  const unsigned x = a.thread % g_state.block_dim[0], y = a.thread / g_state.block_dim[0] % g_state.block_dim[1],
                 z = a.thread / (g_state.block_dim[0] * g_state.block_dim[1]);
  char text[160];
  std::snprintf(text, sizeof text, "thread (%u, %u, %u) (warp %u, lane %u), after %u __syncthreads and %u __syncwarp",
                x, y, z, a.thread / 32, a.thread % 32, a.syncs, a.warp_syncs);
  return text;
}

[[noreturn]] FAKECUDA_UNCHECKED inline void report(const char* hazard, const Access& first, const char* first_did,
                                                   const Access& second, const char* second_did, const char* unordered,
                                                   const void* byte, const char* memory, size_t offset) {
  g_state.busy = true;
  std::fprintf(stderr,
               "fakecuda racecheck: %s hazard on byte %zu of %s shared memory (%p)\n"
               "  kernel:\n%s"
               "  block (%u, %u, %u)\n"
               "  %s %s it at\n%s"
               "  %s %s it at\n%s"
               "  %s\n",
               hazard, offset, memory, byte, source_of(g_state.kernel).c_str(), g_state.block_index[0],
               g_state.block_index[1], g_state.block_index[2], describe(first).c_str(), first_did,
               source_of(first.code).c_str(), describe(second).c_str(), second_did, source_of(second.code).c_str(), unordered);
  std::fflush(stderr);
  std::abort();
}

FAKECUDA_UNCHECKED inline bool unordered(const Access& earlier, const Access& now) {
  return earlier.block == now.block && earlier.thread != now.thread && earlier.syncs == now.syncs &&
         (earlier.thread / 32 != now.thread / 32 || earlier.warp_syncs == now.warp_syncs);
}

FAKECUDA_UNCHECKED inline Access current(const void* code) {
  const unsigned t = linear_thread();
  return {code, g_state.block_serial, t, g_state.syncs[t], g_state.warp_syncs[t]};
}

// The shadow of `p`'s byte, or nullptr if it is not shared memory.
FAKECUDA_UNCHECKED inline ByteShadow* shadow_of(const void* p, const char** memory, size_t* offset) {
  const char* byte = static_cast<const char*>(p);
  if (size_t(byte - g_state.dynamic_begin) < g_state.dynamic_size) {
    *memory = "dynamic", *offset = size_t(byte - g_state.dynamic_begin);
    return &g_state.dynamic_shadow[*offset];
  }
  if (size_t(byte - g_state.static_begin) < g_state.static_size) {
    *memory = "static", *offset = size_t(byte - g_state.static_begin);
    return &g_state.static_shadow[*offset];
  }
  return nullptr;
}

FAKECUDA_UNCHECKED inline void check_byte(const void* p, const Access& now, bool write) {
  const char* memory;
  size_t offset;
  ByteShadow* s = shadow_of(p, &memory, &offset);
  if (s == nullptr) return;
  if (s->in_flight.block == now.block && s->in_flight.block != 0)
    report("cp.async in flight", s->in_flight, "issued a cp.async that writes", now, write ? "wrote" : "read",
           "before a cp.async.wait_group of the first thread retired the copy", p, memory, offset);
  constexpr const char* kNoBarrier = "with no barrier between them that orders the two threads";
  if (unordered(s->writer, now))
    report(write ? "write-after-write" : "read-after-write", s->writer, "wrote", now, write ? "wrote" : "read",
           kNoBarrier, p, memory, offset);
  if (write) {
    for (const Access& reader : s->readers)
      if (unordered(reader, now)) report("write-after-read", reader, "read", now, "wrote", kNoBarrier, p, memory, offset);
    s->writer = now;
  } else if (s->readers[0].thread == now.thread || s->readers[0].block != now.block) {
    s->readers[0] = now;
  } else {
    s->readers[1] = s->readers[0];
    s->readers[0] = now;
  }
}

FAKECUDA_UNCHECKED inline void access(const void* p, size_t size, bool write, const void* code) {
  if (!g_state.running || g_state.busy) return;
  const char* byte = static_cast<const char*>(p);
  const bool dynamic = size_t(byte - g_state.dynamic_begin) < g_state.dynamic_size;
  if (!dynamic && size_t(byte - g_state.static_begin) >= g_state.static_size) return;  // not shared memory
  g_state.busy = true;
  const Access now = current(code);
  for (size_t i = 0; i < size; ++i) check_byte(byte + i, now, write);
  g_state.busy = false;
}

// cp.async: its bytes are in flight from the issue (checked as a write then) to the wait.
FAKECUDA_UNCHECKED inline void async_issue(void* dst, size_t size, const void* code) {
  access(dst, size, true, code);
  const char* memory;
  size_t offset;
  const Access now = current(code);
  for (size_t i = 0; i < size; ++i)
    if (ByteShadow* s = shadow_of(static_cast<char*>(dst) + i, &memory, &offset)) s->in_flight = now;
}
FAKECUDA_UNCHECKED inline void async_land(void* dst, size_t size, const void* code) {
  const char* memory;
  size_t offset;
  for (size_t i = 0; i < size; ++i)
    if (ByteShadow* s = shadow_of(static_cast<char*>(dst) + i, &memory, &offset)) s->in_flight = Access{};
  access(dst, size, true, code);
}

// Called by the emulator: a launch's dynamic shared memory, a block's start and end, the barriers.
FAKECUDA_UNCHECKED inline void launch(const void* kernel, const void* dynamic, size_t dynamic_size) {
  g_state.kernel = kernel;
  g_state.dynamic_begin = static_cast<const char*>(dynamic);
  g_state.dynamic_size = dynamic_size;
  if (g_state.dynamic_shadow.size() < dynamic_size) g_state.dynamic_shadow.resize(dynamic_size);
}
FAKECUDA_UNCHECKED inline void begin_block(unsigned threads, const unsigned (&dim)[3], const unsigned (&index)[3]) {
  ++g_state.block_serial;  // older shadows belong to other blocks: no reset needed
  g_state.syncs.assign(threads, 0);
  g_state.warp_syncs.assign(threads, 0);
  for (int i = 0; i < 3; ++i) g_state.block_dim[i] = dim[i], g_state.block_index[i] = index[i];
  g_state.running = true;
}
FAKECUDA_UNCHECKED inline void end_block() { g_state.running = false; }
FAKECUDA_UNCHECKED inline void passed_syncthreads() { ++g_state.syncs[linear_thread()]; }
FAKECUDA_UNCHECKED inline void passed_syncwarp() { ++g_state.warp_syncs[linear_thread()]; }

}  // namespace fakecuda::race

// The hooks of GCC's -fsanitize=thread instrumentation (each driver is one translation unit: defined here).
#define FAKECUDA_HOOK(name, size, write)                                                          \
  extern "C" FAKECUDA_UNCHECKED void name(void* p) {                                        \
    fakecuda::race::access(p, size, write, __builtin_extract_return_addr(__builtin_return_address(0))); \
  }
FAKECUDA_HOOK(__tsan_read1, 1, false)
FAKECUDA_HOOK(__tsan_read2, 2, false)
FAKECUDA_HOOK(__tsan_read4, 4, false)
FAKECUDA_HOOK(__tsan_read8, 8, false)
FAKECUDA_HOOK(__tsan_read16, 16, false)
FAKECUDA_HOOK(__tsan_write1, 1, true)
FAKECUDA_HOOK(__tsan_write2, 2, true)
FAKECUDA_HOOK(__tsan_write4, 4, true)
FAKECUDA_HOOK(__tsan_write8, 8, true)
FAKECUDA_HOOK(__tsan_write16, 16, true)
FAKECUDA_HOOK(__tsan_unaligned_read2, 2, false)
FAKECUDA_HOOK(__tsan_unaligned_read4, 4, false)
FAKECUDA_HOOK(__tsan_unaligned_read8, 8, false)
FAKECUDA_HOOK(__tsan_unaligned_read16, 16, false)
FAKECUDA_HOOK(__tsan_unaligned_write2, 2, true)
FAKECUDA_HOOK(__tsan_unaligned_write4, 4, true)
FAKECUDA_HOOK(__tsan_unaligned_write8, 8, true)
FAKECUDA_HOOK(__tsan_unaligned_write16, 16, true)
#undef FAKECUDA_HOOK
extern "C" FAKECUDA_UNCHECKED void __tsan_read_range(void* p, unsigned long size) {
  fakecuda::race::access(p, size, false, __builtin_extract_return_addr(__builtin_return_address(0)));
}
extern "C" FAKECUDA_UNCHECKED void __tsan_write_range(void* p, unsigned long size) {
  fakecuda::race::access(p, size, true, __builtin_extract_return_addr(__builtin_return_address(0)));
}
extern "C" FAKECUDA_UNCHECKED void __tsan_init() {}
// The guard of a function-local static's initialization (static_shared's): one OS thread, no atomics.
extern "C" FAKECUDA_UNCHECKED char __tsan_atomic8_load(const volatile char* p, int /*order*/) { return *p; }
