#include "arch/probe.h"

#include "hwy/base.h"
#include "hwy/cache_control.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "arch/probe.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace kvsketch {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

float ReadSumImpl(const float* HWY_RESTRICT x, size_t n, size_t prefetch) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  auto a0 = hn::Zero(d), a1 = hn::Zero(d), a2 = hn::Zero(d), a3 = hn::Zero(d);
  size_t i = 0;
  for (; i + 4 * N <= n; i += 4 * N) {
    if (prefetch) {
      // Every line of the block `prefetch` floats ahead (harmless past the
      // end: prefetches do not fault).
      for (size_t l = 0; l < 4 * N; l += 16)
        hwy::Prefetch(x + i + prefetch + l);
    }
    a0 = hn::Add(a0, hn::LoadU(d, x + i));
    a1 = hn::Add(a1, hn::LoadU(d, x + i + N));
    a2 = hn::Add(a2, hn::LoadU(d, x + i + 2 * N));
    a3 = hn::Add(a3, hn::LoadU(d, x + i + 3 * N));
  }
  float s =
      hn::GetLane(hn::SumOfLanes(d, hn::Add(hn::Add(a0, a1), hn::Add(a2, a3))));
  for (; i < n; ++i) s += x[i];
  return s;
}

// 10 independent accumulators hide the FMA latency (4-5 cycles) on two pipes.
double FmaProbeImpl(size_t iters, float* sink) {
  const hn::ScalableTag<float> d;
  const auto m = hn::Set(d, 0.999999f);
  const auto c = hn::Set(d, 1e-7f);
  auto a0 = hn::Set(d, 1.0f), a1 = hn::Set(d, 1.1f), a2 = hn::Set(d, 1.2f),
       a3 = hn::Set(d, 1.3f), a4 = hn::Set(d, 1.4f), a5 = hn::Set(d, 1.5f),
       a6 = hn::Set(d, 1.6f), a7 = hn::Set(d, 1.7f), a8 = hn::Set(d, 1.8f),
       a9 = hn::Set(d, 1.9f);
  for (size_t i = 0; i < iters; ++i) {
    a0 = hn::MulAdd(a0, m, c);
    a1 = hn::MulAdd(a1, m, c);
    a2 = hn::MulAdd(a2, m, c);
    a3 = hn::MulAdd(a3, m, c);
    a4 = hn::MulAdd(a4, m, c);
    a5 = hn::MulAdd(a5, m, c);
    a6 = hn::MulAdd(a6, m, c);
    a7 = hn::MulAdd(a7, m, c);
    a8 = hn::MulAdd(a8, m, c);
    a9 = hn::MulAdd(a9, m, c);
  }
  const auto s = hn::Add(hn::Add(hn::Add(hn::Add(a0, a1), hn::Add(a2, a3)),
                                 hn::Add(hn::Add(a4, a5), hn::Add(a6, a7))),
                         hn::Add(a8, a9));
  *sink = hn::GetLane(hn::SumOfLanes(d, s));
  return double(iters) * 10.0 * 2.0 * double(hn::Lanes(d));
}

}  // namespace HWY_NAMESPACE
}  // namespace kvsketch
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace kvsketch {
HWY_EXPORT(ReadSumImpl);
HWY_EXPORT(FmaProbeImpl);

float ReadSum(const float* x, size_t n, size_t prefetch_bytes) {
  return HWY_DYNAMIC_DISPATCH(ReadSumImpl)(x, n, prefetch_bytes / 4);
}

double FmaProbe(size_t iters, float* sink) {
  return HWY_DYNAMIC_DISPATCH(FmaProbeImpl)(iters, sink);
}

}  // namespace kvsketch
#endif  // HWY_ONCE
