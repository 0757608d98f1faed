// Repetition counts of the heaviest stress tests: all of them natively and
// under the sanitizers, fewer under QEMU (cross builds), where the point is
// the platform's code paths, not the count.
#pragma once

#include <cstddef>

namespace kvsketch {
namespace test {
#ifdef KVSKETCH_TEST_EMULATED
inline constexpr bool kEmulated = true;
#else
inline constexpr bool kEmulated = false;
#endif
// n natively, n / div (at least 1) under emulation.
inline constexpr size_t Reps(size_t n, size_t div) {
  return kEmulated ? (n / div > 0 ? n / div : 1) : n;
}
}  // namespace test
}  // namespace kvsketch
