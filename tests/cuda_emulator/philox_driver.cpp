// Host build of csrc/common/philox.cuh, for test_cuda_emulated.py: reads "seed counter" lines (int64
// decimal) and prints the four words of philox4x32_10(seed, (counter mod 2^32, counter >> 32, 0, 0)) in
// hex, the counter of the sampling kernel's Gumbel noise.
#include <cinttypes>
#include <cstdio>

#include "common/philox.cuh"

int main() {
  int64_t seed, counter;
  while (std::scanf("%" SCNd64 " %" SCNd64, &seed, &counter) == 2) {
    const auto c = static_cast<uint64_t>(counter);
    const fastattn::Philox4 r =
        fastattn::philox4x32_10(static_cast<uint64_t>(seed), uint32_t(c), uint32_t(c >> 32), 0u, 0u);
    std::printf("%08" PRIx32 " %08" PRIx32 " %08" PRIx32 " %08" PRIx32 "\n", r.x, r.y, r.z, r.w);
  }
  return 0;
}
