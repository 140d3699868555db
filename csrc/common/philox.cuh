// Philox4x32-10 (Salmon et al., Random123's philox4x32), written to give exactly the words of
// triton.language.philox / randint4x: same constants, same round function, key (k0, k1) = (seed mod
// 2^32, seed >> 32 mod 2^32) of the int64 seed, counter (c0, c1, c2, c3).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace fastattn {

constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u;    // key bump, word 0 (golden ratio)
constexpr uint32_t kPhiloxKeyB = 0xBB67AE85u;    // key bump, word 1 (sqrt(3) - 1)
constexpr uint32_t kPhiloxRoundA = 0xD2511F53u;  // multiplier of counter word 0
constexpr uint32_t kPhiloxRoundB = 0xCD9E8D57u;  // multiplier of counter word 2
constexpr int kPhiloxRounds = 10;

struct Philox4 {
  uint32_t x, y, z, w;
};

__device__ __forceinline__ Philox4 philox4x32_10(uint64_t seed, uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3) {
  uint32_t k0 = static_cast<uint32_t>(seed & 0xffffffffull);
  uint32_t k1 = static_cast<uint32_t>((seed >> 32) & 0xffffffffull);
#pragma unroll
  for (int round = 0; round < kPhiloxRounds; ++round) {
    const uint32_t old0 = c0, old2 = c2;
    c0 = __umulhi(kPhiloxRoundB, old2) ^ c1 ^ k0;
    c2 = __umulhi(kPhiloxRoundA, old0) ^ c3 ^ k1;
    c1 = kPhiloxRoundB * old2;
    c3 = kPhiloxRoundA * old0;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  return {c0, c1, c2, c3};
}

// triton.language.uint_to_uniform_float of a uint32 word: [0, 1) as float32.
__device__ __forceinline__ float uint_to_uniform_float(uint32_t word) {
  int32_t v = static_cast<int32_t>(word);
  if (v < 0) v = ~v;
  return static_cast<float>(v) * 4.6566127342e-10f;  // (2^23 - 1) / 2^23 * 2^-31: max(v) maps below 1
}

}  // namespace fastattn
