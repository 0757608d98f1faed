#include "arch/attend.h"

#include <cmath>
#include <limits>

#include "arch/targets.h"  // RoundUp
#include "hwy/base.h"      // HWY_ASSERT, float16_t
#include "hwy/cache_control.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "arch/attend.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
// Must follow highway.h: per-target helpers.
#include "arch/load-inl.h"
#include "arch/rows-inl.h"
#include "hwy/contrib/math/math-inl.h"

HWY_BEFORE_NAMESPACE();
namespace kvsketch {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Rows per online-softmax tile: scores of a tile are computed, then its max,
// then exp of the whole tile with vector Exp, then the value accumulation.
constexpr size_t kTile = 16;
// Rows ahead to prefetch (a few tiles); sequential streams are also caught by
// the hardware prefetcher, this mainly helps when K and V are far apart.
constexpr size_t kPrefetchRows = 32;

template <class D, typename TK>
HWY_INLINE float DotRow(D d, const TK* HWY_RESTRICT k,
                        const float* HWY_RESTRICT q, size_t cols) {
  const size_t N = hn::Lanes(d);
  auto s0 = hn::Zero(d);
  auto s1 = hn::Zero(d);
  size_t i = 0;
  for (; i + 2 * N <= cols; i += 2 * N) {
    s0 = hn::MulAdd(LoadF32(d, k + i), hn::LoadU(d, q + i), s0);
    s1 = hn::MulAdd(LoadF32(d, k + i + N), hn::LoadU(d, q + i + N), s1);
  }
  if (i < cols) s0 = hn::MulAdd(LoadF32(d, k + i), hn::LoadU(d, q + i), s0);
  return hn::GetLane(hn::SumOfLanes(d, hn::Add(s0, s1)));
}

// Exp of `n` <= kTile floats in place (tile buffer padded to kTile).
HWY_INLINE float ExpTileSum(float* HWY_RESTRICT x, size_t n) {
  const hn::CappedTag<float, 16> d;
  const size_t N = hn::Lanes(d);
  auto sum = hn::Zero(d);
  for (size_t i = 0; i < kTile; i += N) {
    const auto e = hn::Exp(d, hn::LoadU(d, x + i));
    hn::StoreU(e, d, x + i);
  }
  for (size_t i = n; i < kTile; ++i) x[i] = 0.0f;  // unused rows weigh 0
  for (size_t i = 0; i < kTile; i += N) sum = hn::Add(sum, hn::LoadU(d, x + i));
  return hn::GetLane(hn::SumOfLanes(d, sum));
}

template <class DK, class DV, typename TK, typename TV>
void AttendT(DK dk, DV dv, const TK* HWY_RESTRICT K, size_t k_stride,
             size_t kcols, const TV* HWY_RESTRICT V, size_t v_stride,
             size_t vcols, size_t n, const float* HWY_RESTRICT logw,
             const float* HWY_RESTRICT qs, size_t G, float* HWY_RESTRICT m,
             float* HWY_RESTRICT z, float* HWY_RESTRICT acc,
             float* HWY_RESTRICT scores) {
  const size_t NV = hn::Lanes(dv);
  HWY_ALIGN float s[kMaxGroup][kTile];
  for (size_t r0 = 0; r0 < n; r0 += kTile) {
    const size_t rows = HWY_MIN(kTile, n - r0);
    // 1. Scores of the tile for every query of the group.
    for (size_t r = 0; r < rows; ++r) {
      const TK* krow = K + (r0 + r) * k_stride;
      if (r0 + r + kPrefetchRows < n) {
        hwy::Prefetch(krow + kPrefetchRows * k_stride);
        hwy::Prefetch(V + (r0 + r + kPrefetchRows) * v_stride);
      }
      const float bias = logw ? logw[r0 + r] : 0.0f;
      for (size_t g = 0; g < G; ++g) {
        s[g][r] = DotRow(dk, krow, qs + g * k_stride, kcols) + bias;
      }
    }
    // 2. Online softmax bookkeeping per query.
    for (size_t g = 0; g < G; ++g) {
      if (scores) {
        for (size_t r = 0; r < rows; ++r) scores[g * n + r0 + r] = s[g][r];
      }
      float mt = s[g][0];
      for (size_t r = 1; r < rows; ++r) mt = HWY_MAX(mt, s[g][r]);
      if (mt > m[g]) {
        const float f = std::exp(m[g] - mt);  // 0 on the first tile
        z[g] *= f;
        float* a = acc + g * v_stride;
        const auto vf = hn::Set(dv, f);
        for (size_t c = 0; c < vcols; c += NV) {
          hn::StoreU(hn::Mul(hn::LoadU(dv, a + c), vf), dv, a + c);
        }
        m[g] = mt;
      }
      for (size_t r = 0; r < rows; ++r) s[g][r] -= m[g];
      z[g] += ExpTileSum(s[g], rows);
    }
    // 3. Value accumulation: each V row is read once for all G queries.
    for (size_t r = 0; r < rows; ++r) {
      const TV* vrow = V + (r0 + r) * v_stride;
      for (size_t c = 0; c < vcols; c += NV) {
        const auto v = LoadF32(dv, vrow + c);
        for (size_t g = 0; g < G; ++g) {
          float* a = acc + g * v_stride + c;
          hn::StoreU(hn::MulAdd(hn::Set(dv, s[g][r]), v, hn::LoadU(dv, a)), dv,
                     a);
        }
      }
    }
  }
}

template <typename TK, typename TV>
void AttendTyped(const RowsView& K, const RowsView& V, const float* logw,
                 const float* q, size_t G, float scale, float* m, float* z,
                 float* N, float* scores) {
  // Scaled copies of the queries (stack; Attend never allocates).
  HWY_ALIGN float qs[kMaxGroup * kMaxHeadDim];
  for (size_t g = 0; g < G; ++g) {
    for (size_t c = 0; c < K.stride; ++c) {
      qs[g * K.stride + c] = q[g * K.stride + c] * scale;
    }
    m[g] = -std::numeric_limits<float>::infinity();
    z[g] = 0.0f;
    for (size_t c = 0; c < V.stride; ++c) N[g * V.stride + c] = 0.0f;
  }
  const TK* kp = static_cast<const TK*>(K.data);
  const TV* vp = static_cast<const TV*>(V.data);
  WithRowTag(K.stride, [&](auto dk) {
    WithRowTag(V.stride, [&](auto dv) {
      AttendT(dk, dv, kp, K.stride, RoundUp(K.cols, hn::Lanes(dk)), vp,
              V.stride, RoundUp(V.cols, hn::Lanes(dv)), K.rows, logw, qs, G, m,
              z, N, scores);
    });
  });
}

void AttendGroupImpl(const RowsView& K, const RowsView& V, const float* logw,
                     const float* q, size_t G, float scale, float* m, float* z,
                     float* N, float* scores) {
  using F16 = hwy::float16_t;
  using BF16 = hwy::bfloat16_t;
  // K and V share a storage type in the engine; mixed types are not needed.
  switch (K.type) {
    case Storage::kF32:
      return AttendTyped<float, float>(K, V, logw, q, G, scale, m, z, N,
                                       scores);
    case Storage::kF16:
      return AttendTyped<F16, F16>(K, V, logw, q, G, scale, m, z, N, scores);
    case Storage::kBF16:
      return AttendTyped<BF16, BF16>(K, V, logw, q, G, scale, m, z, N, scores);
  }
}

void ExpArrayImpl(const float* HWY_RESTRICT x, float* HWY_RESTRICT y,
                  size_t n) {
  const hn::CappedTag<float, 16> d;
  const size_t N = hn::Lanes(d);
  size_t i = 0;
  for (; i + N <= n; i += N)
    hn::StoreU(hn::Exp(d, hn::LoadU(d, x + i)), d, y + i);
  const hn::CappedTag<float, 1> d1;
  for (; i < n; ++i) hn::StoreU(hn::Exp(d1, hn::LoadU(d1, x + i)), d1, y + i);
}

}  // namespace HWY_NAMESPACE
}  // namespace kvsketch
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace kvsketch {
HWY_EXPORT(AttendGroupImpl);
HWY_EXPORT(ExpArrayImpl);

void AttendGroup(const RowsView& K, const RowsView& V, const float* logw,
                 const float* q, size_t G, float scale, float* m, float* z,
                 float* N, float* scores) {
  HWY_ASSERT(G >= 1 && G <= kMaxGroup);
  HWY_ASSERT(K.cols <= kMaxHeadDim && V.cols <= kMaxHeadDim);
  HWY_ASSERT(K.stride % kRowAlignFloats == 0 &&
             V.stride % kRowAlignFloats == 0);
  HWY_ASSERT(K.rows == V.rows && K.type == V.type);
  HWY_DYNAMIC_DISPATCH(AttendGroupImpl)
  (K, V, logw, q, G, scale, m, z, N, scores);
}

void ExpArray(const float* x, float* y, size_t n) {
  HWY_DYNAMIC_DISPATCH(ExpArrayImpl)(x, y, n);
}

void MergePartials(float* m1, float* z1, float* N1, float m2, float z2,
                   const float* N2, size_t dv) {
  if (z2 == 0.0f) return;
  if (*z1 == 0.0f) {
    *m1 = m2;
    *z1 = z2;
    for (size_t c = 0; c < dv; ++c) N1[c] = N2[c];
    return;
  }
  const float m = *m1 > m2 ? *m1 : m2;
  const float a = std::exp(*m1 - m), b = std::exp(m2 - m);
  *z1 = *z1 * a + z2 * b;
  for (size_t c = 0; c < dv; ++c) N1[c] = N1[c] * a + N2[c] * b;
  *m1 = m;
}

}  // namespace kvsketch
#endif  // HWY_ONCE
