// Counter-based random numbers: a pure function of (seed, stream, counter), so
// results do not depend on call order or thread count.
#pragma once

#include <cstdint>

namespace kvsketch {

// SplitMix64 finaliser (Stafford variant 13): a bijective 64-bit mixer.
inline uint64_t Mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 31;
  return x;
}

inline uint64_t CounterHash(uint64_t seed, uint64_t stream, uint64_t counter) {
  return Mix64(Mix64(Mix64(seed ^ 0x9E3779B97F4A7C15ull) ^ stream) + counter);
}

// Uniform in [0, 1) with 24 random bits.
inline float CounterUniform(uint64_t seed, uint64_t stream, uint64_t counter) {
  return float(CounterHash(seed, stream, counter) >> 40) * (1.0f / 16777216.0f);
}

// Standard normal via Box-Muller on two counter draws.
double CounterNormal(uint64_t seed, uint64_t stream, uint64_t counter);

}  // namespace kvsketch
