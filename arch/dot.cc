#include "arch/dot.h"

#include "arch/targets.h"  // RoundUp

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "arch/dot.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
// Must follow highway.h: per-target helpers.
#include "arch/rows-inl.h"

HWY_BEFORE_NAMESPACE();
namespace kvsketch {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

float DotImpl(const float* HWY_RESTRICT a, const float* HWY_RESTRICT b,
              size_t n) {
  const hn::CappedTag<float, 16> d;
  const size_t N = hn::Lanes(d);
  const size_t whole = n / N * N;
  float s = whole ? DotPadded(d, a, b, whole) : 0.0f;
  for (size_t i = whole; i < n; ++i) s += a[i] * b[i];  // remainder < N
  return s;
}

void MatVecImpl(const float* HWY_RESTRICT K, size_t rows, size_t d,
                size_t stride, const float* HWY_RESTRICT q,
                float* HWY_RESTRICT y) {
  WithRowTag(stride, [&](auto tag) {
    // Padding lanes are zero, so reading up to RoundUp(d, N) is exact.
    const size_t cols = RoundUp(d, hn::Lanes(tag));
    for (size_t r = 0; r < rows; ++r) {
      y[r] = DotPadded(tag, K + r * stride, q, cols);
    }
  });
}

}  // namespace HWY_NAMESPACE
}  // namespace kvsketch
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace kvsketch {
HWY_EXPORT(DotImpl);
HWY_EXPORT(MatVecImpl);

float Dot(const float* a, const float* b, size_t n) {
  return HWY_DYNAMIC_DISPATCH(DotImpl)(a, b, n);
}

void MatVec(const float* K, size_t rows, size_t d, size_t stride,
            const float* q, float* y) {
  HWY_DYNAMIC_DISPATCH(MatVecImpl)(K, rows, d, stride, q, y);
}

}  // namespace kvsketch
#endif  // HWY_ONCE
