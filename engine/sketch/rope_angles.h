// Rotation angles of risk's probes: cos and sin of age * freq[i] for every
// rotated pair, without a cos and sin per probe and pair (a compaction rotates
// up to 32 stored probes; their libm calls were ~10 % of a compaction where
// one runs per token).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

namespace kvsketch {

// The number of powers of two AgeAngles needs for ages up to `oldest`.
inline size_t AngleLevels(uint32_t oldest) {
  size_t levels = 0;
  while (levels < 32 && (oldest >> levels) != 0) ++levels;
  return levels;
}

// cos and sin of 2^j freq[i] for j < levels into pw[j][0][i] and pw[j][1][i]
// (rows `pairs` apart; 2 levels pairs doubles): one cos and sin per pair,
// then repeated squaring of the unit complex number, renormalised. Its phase
// error doubles with each squaring, as the rounding of 2^j freq[i] itself
// would in a direct cos: at 2^31 that is ~1e-7 rad, below what the f16
// probes resolve.
inline void AnglePowers(const double* freq, size_t pairs, size_t levels,
                        double* pw) {
  for (size_t j = 0; j < levels; ++j) {
    double* c = pw + 2 * j * pairs;
    double* s = c + pairs;
    if (j == 0) {
      for (size_t i = 0; i < pairs; ++i) {
        c[i] = std::cos(freq[i]);
        s[i] = std::sin(freq[i]);
      }
      continue;
    }
    const double* prev_c = c - 2 * pairs;  // level j - 1
    const double* prev_s = prev_c + pairs;
    for (size_t i = 0; i < pairs; ++i) {
      const double pc = prev_c[i], ps = prev_s[i];
      const double x = pc * pc - ps * ps, y = 2.0 * pc * ps;
      const double r = 1.0 / std::sqrt(x * x + y * y);
      c[i] = x * r;
      s[i] = y * r;
    }
  }
}

// cos and sin of age * freq[i] (ac, as [pairs]): the product of AnglePowers'
// entries over the set bits of age, which must be below 2^levels.
inline void AgeAngles(uint32_t age, const double* pw, size_t pairs, double* ac,
                      double* as) {
  for (size_t i = 0; i < pairs; ++i) ac[i] = 1.0, as[i] = 0.0;
  for (size_t j = 0; age != 0; ++j, age >>= 1) {
    if (!(age & 1u)) continue;
    const double* c = pw + 2 * j * pairs;
    const double* s = c + pairs;
    for (size_t i = 0; i < pairs; ++i) {
      const double x = ac[i] * c[i] - as[i] * s[i];
      as[i] = ac[i] * s[i] + as[i] * c[i];
      ac[i] = x;
    }
  }
}

}  // namespace kvsketch
