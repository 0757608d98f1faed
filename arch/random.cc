#include "arch/random.h"

#include <cmath>

namespace kvsketch {

double CounterNormal(uint64_t seed, uint64_t stream, uint64_t counter) {
  const uint64_t h1 = CounterHash(seed, stream, 2 * counter);
  const uint64_t h2 = CounterHash(seed, stream, 2 * counter + 1);
  const double u1 = (double(h1 >> 11) + 0.5) * (1.0 / 9007199254740992.0);
  const double u2 = double(h2 >> 11) * (1.0 / 9007199254740992.0);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

}  // namespace kvsketch
