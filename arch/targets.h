// SIMD target introspection for `kvsketch targets` and the tests.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "arch/types.h"  // kRowAlignFloats, RoundUp, PaddedCols

namespace kvsketch {

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
