// Runs a test body once per SIMD target that is both compiled and supported
// here (natively: AVX3/AVX2/SSE4/...; under QEMU: SVE2/SVE/NEON), naming each.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

#include "arch/targets.h"  // ChosenTargetName
#include "doctest/doctest.h"
#include "hwy/targets.h"

namespace kvsketch {
namespace test {

template <class F>
void ForEachTarget(const char* what, const F& body) {
  std::string names;
  for (int64_t t : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(t);
    const char* name = hwy::TargetName(t);
    names += names.empty() ? name : std::string(" ") + name;
    const std::string target_name = name;
    INFO("target " << target_name);
    body(name);
  }
  hwy::SetSupportedTargetsForTest(0);  // back to the real CPU
  if (names.empty()) {
    // Highway 1.0.3 cannot detect CPU features on armv7: no compiled target is
    // reported as supported and dispatch uses the static baseline target.
    // Run once on that target rather than testing nothing.
    names = std::string(ChosenTargetName()) + " (static baseline)";
    INFO("target " << names);  // std::string: printed by value
    body(ChosenTargetName());
  }
  std::printf("exercised targets [%s]: %s\n", what, names.c_str());
  std::fflush(stdout);
}

// Relative + absolute tolerance check: |got - want| <= atol + rtol * |want|.
inline bool Near(double got, double want, double rtol, double atol) {
  const double diff = got > want ? got - want : want - got;
  const double mag = want < 0 ? -want : want;
  return diff <= atol + rtol * mag;
}

}  // namespace test
}  // namespace kvsketch
