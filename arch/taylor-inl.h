// Per-target Taylor residual exp(y) - sum_{l<=t} y^l / l! (include after
// hwy/highway.h and hwy/contrib/math/math-inl.h).

#if defined(KVSKETCH_ARCH_TAYLOR_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef KVSKETCH_ARCH_TAYLOR_INL_H_
#undef KVSKETCH_ARCH_TAYLOR_INL_H_
#else
#define KVSKETCH_ARCH_TAYLOR_INL_H_
#endif

#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace kvsketch {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// exp(y) - sum_{l<=t} y^l/l!: for |y| < 1 by the tail of the series (no
// cancellation), otherwise directly.
// t < 0 means the plain exponential (nothing subtracted).
template <class D, class V>
HWY_INLINE V TaylorResidual(D d, V y, int t) {
  if (t < 0) return hn::Exp(d, hn::Min(y, hn::Set(d, 80.0f)));
  // Tail: y^(t+1)/(t+1)! * (1 + y/(t+2) + y^2/((t+2)(t+3)) + ...), 12 terms.
  auto tail = hn::Set(d, 1.0f);
  for (int l = t + 13; l >= t + 2; --l) {
    tail = hn::MulAdd(hn::Mul(y, hn::Set(d, 1.0f / float(l))), tail,
                      hn::Set(d, 1.0f));
  }
  auto lead = hn::Set(d, 1.0f);
  float fact = 1.0f;
  for (int l = 1; l <= t + 1; ++l) {
    lead = hn::Mul(lead, y);
    fact *= float(l);
  }
  const auto small = hn::Mul(hn::Mul(lead, hn::Set(d, 1.0f / fact)), tail);
  // Direct: exp(y) - polynomial (Horner).
  auto poly = hn::Set(d, 1.0f);
  for (int l = t; l >= 1; --l) {
    poly = hn::MulAdd(hn::Mul(y, hn::Set(d, 1.0f / float(l))), poly,
                      hn::Set(d, 1.0f));
  }
  const auto big = hn::Sub(hn::Exp(d, hn::Min(y, hn::Set(d, 80.0f))), poly);
  return hn::IfThenElse(hn::Lt(hn::Abs(y), hn::Set(d, 1.0f)), small, big);
}

}  // namespace HWY_NAMESPACE
}  // namespace kvsketch
HWY_AFTER_NAMESPACE();

#endif  // per-target include guard
