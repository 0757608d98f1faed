#include "arch/targets.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "arch/targets.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace kvsketch {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

int64_t ThisTarget() { return HWY_TARGET; }

size_t FloatLanes() {
  const hn::CappedTag<float, 16> d;
  return hn::Lanes(d);
}

}  // namespace HWY_NAMESPACE
}  // namespace kvsketch
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace kvsketch {
HWY_EXPORT(ThisTarget);
HWY_EXPORT(FloatLanes);

const char* ChosenTargetName() {
  return hwy::TargetName(HWY_DYNAMIC_DISPATCH(ThisTarget)());
}

size_t ChosenFloatLanes() { return HWY_DYNAMIC_DISPATCH(FloatLanes)(); }

TargetInfo GetTargetInfo() {
  TargetInfo info;
  const int64_t supported = hwy::SupportedTargets();
  // Target bits: lower value = better target; iterate from best to worst.
  for (int64_t targets = HWY_TARGETS; targets != 0; targets &= targets - 1) {
    const int64_t t = targets & (~targets + 1);
    info.compiled.push_back(hwy::TargetName(t));
    if (supported & t) info.supported.push_back(hwy::TargetName(t));
  }
  info.chosen = ChosenTargetName();
  return info;
}

}  // namespace kvsketch
#endif  // HWY_ONCE
