// Per-target helpers shared by the kernels in arch/ (included after
// hwy/highway.h inside HWY_NAMESPACE-compiled translation units).

// Per-target include guard (Highway's toggle idiom).
#if defined(KVSKETCH_ARCH_ROWS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef KVSKETCH_ARCH_ROWS_INL_H_
#undef KVSKETCH_ARCH_ROWS_INL_H_
#else
#define KVSKETCH_ARCH_ROWS_INL_H_
#endif

#include <cmath>

#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace kvsketch {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Calls f(tag) with the widest float tag (<= 16 lanes) whose lane count
// divides `stride`, so whole-vector loads of a padded row never leave it.
// kMultipleOf4: the caller guarantees stride % 4 == 0, so the 1-lane tag is
// never chosen and f is not instantiated for it.
template <bool kMultipleOf4 = false, class F>
HWY_INLINE void WithRowTag(size_t stride, const F& f) {
  const hn::CappedTag<float, 16> d16;
  const hn::CappedTag<float, 8> d8;
  const hn::CappedTag<float, 4> d4;
  HWY_DASSERT(!kMultipleOf4 || stride % 4 == 0);
  if (stride % hn::Lanes(d16) == 0) {
    f(d16);
  } else if (stride % hn::Lanes(d8) == 0) {
    f(d8);
  } else if (kMultipleOf4 || stride % hn::Lanes(d4) == 0) {
    f(d4);
  } else if constexpr (!kMultipleOf4) {
    f(hn::CappedTag<float, 1>());
  }
}

// Dot product over `n` floats where n is a multiple of Lanes(d).
template <class D>
HWY_INLINE float DotPadded(D d, const float* HWY_RESTRICT a,
                           const float* HWY_RESTRICT b, size_t n) {
  const size_t N = hn::Lanes(d);
  auto s0 = hn::Zero(d);
  auto s1 = hn::Zero(d);
  size_t i = 0;
  for (; i + 2 * N <= n; i += 2 * N) {
    s0 = hn::MulAdd(hn::LoadU(d, a + i), hn::LoadU(d, b + i), s0);
    s1 = hn::MulAdd(hn::LoadU(d, a + i + N), hn::LoadU(d, b + i + N), s1);
  }
  if (i < n) s0 = hn::MulAdd(hn::LoadU(d, a + i), hn::LoadU(d, b + i), s0);
  return hn::GetLane(hn::SumOfLanes(d, hn::Add(s0, s1)));
}

// Normalised Walsh-Hadamard transform of row[0, dim) in place (dim a power
// of two): butterflies of stride h (vectors when h >= lanes), then 1/sqrt(dim).
// Every target computes the same sums in the same order: bit-identical.
HWY_INLINE void HadamardInPlace(float* HWY_RESTRICT row, size_t dim) {
  const hn::CappedTag<float, 16> d;
  const size_t N = hn::Lanes(d);
  for (size_t h = 1; h < dim; h *= 2) {
    for (size_t i = 0; i < dim; i += 2 * h) {
      if (h >= N) {
        for (size_t j = i; j < i + h; j += N) {
          const auto a = hn::LoadU(d, row + j);
          const auto b = hn::LoadU(d, row + j + h);
          hn::StoreU(hn::Add(a, b), d, row + j);
          hn::StoreU(hn::Sub(a, b), d, row + j + h);
        }
      } else {
        for (size_t j = i; j < i + h; ++j) {
          const float a = row[j], b = row[j + h];
          row[j] = a + b;
          row[j + h] = a - b;
        }
      }
    }
  }
  const float norm = 1.0f / std::sqrt(float(dim));
  size_t c = 0;
  for (; c + N <= dim; c += N) {
    hn::StoreU(hn::Mul(hn::LoadU(d, row + c), hn::Set(d, norm)), d, row + c);
  }
  for (; c < dim; ++c) row[c] *= norm;
}

}  // namespace HWY_NAMESPACE
}  // namespace kvsketch
HWY_AFTER_NAMESPACE();

#endif  // per-target include guard
