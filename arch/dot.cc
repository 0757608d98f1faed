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

// C[i][j] = sum_x A[i][x] Bt[x][j]: rows of A broadcast, rows of Bt loaded
// as vectors (4 rows x 2 vectors per step, no horizontal sums).
void MatMulTransposedImpl(const float* HWY_RESTRICT A, size_t m, size_t k,
                          size_t astride, const float* HWY_RESTRICT Bt,
                          size_t n, size_t bstride, float* HWY_RESTRICT C,
                          size_t cstride) {
  const hn::CappedTag<float, 16> d;
  const size_t N = hn::Lanes(d);
  const size_t nn = RoundUp(n, 16);
  size_t i = 0;
  for (; i + 4 <= m; i += 4) {
    const float* a0 = A + i * astride;
    const float* a1 = a0 + astride;
    const float* a2 = a1 + astride;
    const float* a3 = a2 + astride;
    float* c = C + i * cstride;
    size_t j = 0;
    for (; j + 2 * N <= nn; j += 2 * N) {
      auto c00 = hn::Zero(d), c01 = hn::Zero(d), c10 = hn::Zero(d),
           c11 = hn::Zero(d), c20 = hn::Zero(d), c21 = hn::Zero(d),
           c30 = hn::Zero(d), c31 = hn::Zero(d);
      const float* b = Bt + j;
      for (size_t x = 0; x < k; ++x, b += bstride) {
        const auto b0 = hn::LoadU(d, b);
        const auto b1 = hn::LoadU(d, b + N);
        auto s = hn::Set(d, a0[x]);
        c00 = hn::MulAdd(s, b0, c00);
        c01 = hn::MulAdd(s, b1, c01);
        s = hn::Set(d, a1[x]);
        c10 = hn::MulAdd(s, b0, c10);
        c11 = hn::MulAdd(s, b1, c11);
        s = hn::Set(d, a2[x]);
        c20 = hn::MulAdd(s, b0, c20);
        c21 = hn::MulAdd(s, b1, c21);
        s = hn::Set(d, a3[x]);
        c30 = hn::MulAdd(s, b0, c30);
        c31 = hn::MulAdd(s, b1, c31);
      }
      hn::StoreU(c00, d, c + j);
      hn::StoreU(c01, d, c + j + N);
      hn::StoreU(c10, d, c + cstride + j);
      hn::StoreU(c11, d, c + cstride + j + N);
      hn::StoreU(c20, d, c + 2 * cstride + j);
      hn::StoreU(c21, d, c + 2 * cstride + j + N);
      hn::StoreU(c30, d, c + 3 * cstride + j);
      hn::StoreU(c31, d, c + 3 * cstride + j + N);
    }
    for (; j < nn; j += N) {
      auto c0 = hn::Zero(d), c1 = hn::Zero(d), c2 = hn::Zero(d),
           c3 = hn::Zero(d);
      const float* b = Bt + j;
      for (size_t x = 0; x < k; ++x, b += bstride) {
        const auto b0 = hn::LoadU(d, b);
        c0 = hn::MulAdd(hn::Set(d, a0[x]), b0, c0);
        c1 = hn::MulAdd(hn::Set(d, a1[x]), b0, c1);
        c2 = hn::MulAdd(hn::Set(d, a2[x]), b0, c2);
        c3 = hn::MulAdd(hn::Set(d, a3[x]), b0, c3);
      }
      hn::StoreU(c0, d, c + j);
      hn::StoreU(c1, d, c + cstride + j);
      hn::StoreU(c2, d, c + 2 * cstride + j);
      hn::StoreU(c3, d, c + 3 * cstride + j);
    }
  }
  for (; i < m; ++i) {
    const float* a0 = A + i * astride;
    for (size_t j = 0; j < nn; j += N) {
      auto c0 = hn::Zero(d);
      const float* b = Bt + j;
      for (size_t x = 0; x < k; ++x, b += bstride)
        c0 = hn::MulAdd(hn::Set(d, a0[x]), hn::LoadU(d, b), c0);
      hn::StoreU(c0, d, C + i * cstride + j);
    }
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace kvsketch
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace kvsketch {
HWY_EXPORT(DotImpl);
HWY_EXPORT(MatVecImpl);
HWY_EXPORT(MatMulTransposedImpl);

float Dot(const float* a, const float* b, size_t n) {
  return HWY_DYNAMIC_DISPATCH(DotImpl)(a, b, n);
}

void MatVec(const float* K, size_t rows, size_t d, size_t stride,
            const float* q, float* y) {
  HWY_DYNAMIC_DISPATCH(MatVecImpl)(K, rows, d, stride, q, y);
}

void MatMulTransposed(const float* A, size_t m, size_t k, size_t astride,
                      const float* Bt, size_t n, size_t bstride, float* C,
                      size_t cstride) {
  HWY_DYNAMIC_DISPATCH(MatMulTransposedImpl)
  (A, m, k, astride, Bt, n, bstride, C, cstride);
}

}  // namespace kvsketch
#endif  // HWY_ONCE
