#include "arch/hash.h"

#include <cmath>

#include "arch/targets.h"  // RoundUp
#include "hwy/base.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "arch/hash.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
// Must follow highway.h: per-target helpers.
#include "arch/rows-inl.h"

HWY_BEFORE_NAMESPACE();
namespace kvsketch {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

void SimHashImpl(const float* HWY_RESTRICT X, size_t n, size_t d, size_t stride,
                 const float* HWY_RESTRICT P, size_t bits,
                 uint64_t* HWY_RESTRICT codes) {
  const size_t words = (bits + 63) / 64;
  WithRowTag(stride, [&](auto tag) {
    const size_t cols = RoundUp(d, hn::Lanes(tag));
    for (size_t r = 0; r < n; ++r) {
      uint64_t* code = codes + r * words;
      for (size_t w = 0; w < words; ++w) code[w] = 0;
      for (size_t b = 0; b < bits; ++b) {
        const float s = DotPadded(tag, X + r * stride, P + b * stride, cols);
        if (s >= 0.0f) code[b / 64] |= uint64_t{1} << (b % 64);
      }
    }
  });
}

// Butterflies of stride h on vectors of exactly h lanes (h < full width) or
// of full vectors (h >= lanes): (a, b) <- (a + b, a - b).
template <class D>
HWY_INLINE void ButterflyPass(D d, float* HWY_RESTRICT x, size_t len,
                              size_t h) {
  const size_t N = hn::Lanes(d);
  for (size_t i = 0; i < len; i += 2 * h) {
    for (size_t j = i; j < i + h; j += N) {
      const auto a = hn::LoadU(d, x + j);
      const auto b = hn::LoadU(d, x + j + h);
      hn::StoreU(hn::Add(a, b), d, x + j);
      hn::StoreU(hn::Sub(a, b), d, x + j + h);
    }
  }
}

// Short strides use vectors capped at h lanes, so every butterfly stays in
// registers without cross-lane shuffles; long strides use full vectors.
void FwhtImpl(float* HWY_RESTRICT x, size_t len) {
  const hn::CappedTag<float, 16> d16;
  for (size_t h = 1; h < len; h *= 2) {
    if (h >= hn::Lanes(d16)) {
      ButterflyPass(d16, x, len, h);
    } else if (h >= 8) {
      ButterflyPass(hn::CappedTag<float, 8>(), x, len, h);
    } else if (h >= 4) {
      ButterflyPass(hn::CappedTag<float, 4>(), x, len, h);
    } else if (h >= 2) {
      ButterflyPass(hn::CappedTag<float, 2>(), x, len, h);
    } else {
      ButterflyPass(hn::CappedTag<float, 1>(), x, len, h);
    }
  }
  const float norm = 1.0f / std::sqrt(float(len));
  const size_t N = hn::Lanes(d16);
  size_t i = 0;
  for (; i + N <= len; i += N) {
    hn::StoreU(hn::Mul(hn::LoadU(d16, x + i), hn::Set(d16, norm)), d16, x + i);
  }
  for (; i < len; ++i) x[i] *= norm;
}

void CrossPolytopeHashImpl(const float* HWY_RESTRICT X, size_t n, size_t d,
                           size_t stride, const float* HWY_RESTRICT signs,
                           size_t rounds, size_t len, float* HWY_RESTRICT y,
                           uint32_t* HWY_RESTRICT buckets) {
  for (size_t r = 0; r < n; ++r) {
    for (size_t i = 0; i < len; ++i) y[i] = i < d ? X[r * stride + i] : 0.0f;
    for (size_t k = 0; k < rounds; ++k) {
      const float* s = signs + k * len;
      for (size_t i = 0; i < len; ++i) y[i] *= s[i];
      FwhtImpl(y, len);
    }
    size_t best = 0;
    float best_abs = -1.0f;
    for (size_t i = 0; i < len; ++i) {
      const float a = std::fabs(y[i]);
      if (a > best_abs) {
        best_abs = a;
        best = i;
      }
    }
    buckets[r] = uint32_t(2 * best + (y[best] < 0.0f ? 1 : 0));
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace kvsketch
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace kvsketch {
HWY_EXPORT(SimHashImpl);
HWY_EXPORT(FwhtImpl);
HWY_EXPORT(CrossPolytopeHashImpl);

static bool IsPow2(size_t x) { return x && !(x & (x - 1)); }

void SimHash(const float* X, size_t n, size_t d, size_t stride, const float* P,
             size_t bits, uint64_t* codes) {
  HWY_ASSERT(stride % kRowAlignFloats == 0 && stride >= d);
  HWY_DYNAMIC_DISPATCH(SimHashImpl)(X, n, d, stride, P, bits, codes);
}

void Fwht(float* x, size_t len) {
  HWY_ASSERT(IsPow2(len));
  HWY_DYNAMIC_DISPATCH(FwhtImpl)(x, len);
}

void CrossPolytopeHash(const float* X, size_t n, size_t d, size_t stride,
                       const float* signs, size_t rounds, size_t len,
                       float* scratch, uint32_t* buckets) {
  HWY_ASSERT(IsPow2(len) && len >= d);
  HWY_DYNAMIC_DISPATCH(CrossPolytopeHashImpl)
  (X, n, d, stride, signs, rounds, len, scratch, buckets);
}

}  // namespace kvsketch
#endif  // HWY_ONCE
