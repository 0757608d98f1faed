// SIMD target introspection for `kvsketch targets` and the tests.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace kvsketch {

// Rows of K/V matrices are stored with a stride that is a multiple of this many
// floats; padding lanes are zero. Kernels use the widest vector (at most 16
// lanes) whose length divides the stride, so they never read past a row.
inline constexpr size_t kRowAlignFloats = 4;

inline constexpr size_t RoundUp(size_t n, size_t a) {
  return (n + a - 1) / a * a;
}
inline constexpr size_t PaddedCols(size_t d) {
  return RoundUp(d, kRowAlignFloats);
}

struct TargetInfo {
  std::vector<std::string> compiled;   // HWY_TARGETS, best first
  std::vector<std::string> supported;  // compiled and supported by this CPU
  std::string chosen;                  // what HWY_DYNAMIC_DISPATCH selects now
};

TargetInfo GetTargetInfo();

// Name of the target that dynamic dispatch currently selects.
const char* ChosenTargetName();

// Lanes of a float vector of the chosen target (capped at 16 by our kernels).
size_t ChosenFloatLanes();

}  // namespace kvsketch
