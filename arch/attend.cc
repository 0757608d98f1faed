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
// Must follow math-inl.h.
#include "arch/taylor-inl.h"

HWY_BEFORE_NAMESPACE();
namespace kvsketch {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Rows per online-softmax tile: scores of a tile are computed, then its max,
// then exp of the whole tile with vector Exp, then the value accumulation.
constexpr size_t kTile = 16;
// Software prefetch distance per stream (K and V), in bytes. The hardware
// prefetcher alone left cold attend at ~0.75 of the read bandwidth on the
// development machine (AMD EPYC, AVX3); prefetching every line of the tile
// ~2 KiB ahead brought it to 0.75-1.0 (noisy VM) (see `kvsketch speed`).
constexpr size_t kPrefetchBytes = 2048;

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

// Scores of `rows` rows against one query. For the usual head dimensions
// (kcols <= 8 vectors) the query stays in registers, so each row costs only
// its own loads; otherwise a generic loop.
template <class D, typename TK>
HWY_INLINE void ScoreTile(D d, const TK* HWY_RESTRICT K, size_t k_stride,
                          size_t kcols, const float* HWY_RESTRICT q,
                          const float* HWY_RESTRICT bias, size_t rows,
                          float* HWY_RESTRICT s) {
  const size_t N = hn::Lanes(d);
  if (kcols > 8 * N) {
    for (size_t r = 0; r < rows; ++r) {
      s[r] = DotRow(d, K + r * k_stride, q, kcols) + (bias ? bias[r] : 0.0f);
    }
    return;
  }
  const auto z = hn::Zero(d);
  const auto q0 = hn::LoadU(d, q);
  const auto q1 = kcols > 1 * N ? hn::LoadU(d, q + 1 * N) : z;
  const auto q2 = kcols > 2 * N ? hn::LoadU(d, q + 2 * N) : z;
  const auto q3 = kcols > 3 * N ? hn::LoadU(d, q + 3 * N) : z;
  const auto q4 = kcols > 4 * N ? hn::LoadU(d, q + 4 * N) : z;
  const auto q5 = kcols > 5 * N ? hn::LoadU(d, q + 5 * N) : z;
  const auto q6 = kcols > 6 * N ? hn::LoadU(d, q + 6 * N) : z;
  const auto q7 = kcols > 7 * N ? hn::LoadU(d, q + 7 * N) : z;
  for (size_t r = 0; r < rows; ++r) {
    const TK* HWY_RESTRICT k = K + r * k_stride;
    auto a0 = hn::Mul(LoadF32(d, k), q0);
    auto a1 = z;
    if (kcols > 1 * N) a1 = hn::Mul(LoadF32(d, k + 1 * N), q1);
    if (kcols > 2 * N) a0 = hn::MulAdd(LoadF32(d, k + 2 * N), q2, a0);
    if (kcols > 3 * N) a1 = hn::MulAdd(LoadF32(d, k + 3 * N), q3, a1);
    if (kcols > 4 * N) a0 = hn::MulAdd(LoadF32(d, k + 4 * N), q4, a0);
    if (kcols > 5 * N) a1 = hn::MulAdd(LoadF32(d, k + 5 * N), q5, a1);
    if (kcols > 6 * N) a0 = hn::MulAdd(LoadF32(d, k + 6 * N), q6, a0);
    if (kcols > 7 * N) a1 = hn::MulAdd(LoadF32(d, k + 7 * N), q7, a1);
    s[r] = hn::GetLane(hn::SumOfLanes(d, hn::Add(a0, a1))) +
           (bias ? bias[r] : 0.0f);
  }
}

// acc[0, vcols) += sum_r p[r] * V[r]: the accumulator stays in registers for
// the whole tile (two vectors at a time), V rows come from L1.
template <class D, typename TV>
HWY_INLINE void AccumulateTile(D d, const TV* HWY_RESTRICT V, size_t v_stride,
                               size_t vcols, const float* HWY_RESTRICT p,
                               size_t rows, float* HWY_RESTRICT acc) {
  const size_t N = hn::Lanes(d);
  size_t c = 0;
  for (; c + 2 * N <= vcols; c += 2 * N) {
    auto a0 = hn::LoadU(d, acc + c);
    auto a1 = hn::LoadU(d, acc + c + N);
    for (size_t r = 0; r < rows; ++r) {
      const auto pr = hn::Set(d, p[r]);
      a0 = hn::MulAdd(pr, LoadF32(d, V + r * v_stride + c), a0);
      a1 = hn::MulAdd(pr, LoadF32(d, V + r * v_stride + c + N), a1);
    }
    hn::StoreU(a0, d, acc + c);
    hn::StoreU(a1, d, acc + c + N);
  }
  if (c < vcols) {
    auto a0 = hn::LoadU(d, acc + c);
    for (size_t r = 0; r < rows; ++r) {
      a0 = hn::MulAdd(hn::Set(d, p[r]), LoadF32(d, V + r * v_stride + c), a0);
    }
    hn::StoreU(a0, d, acc + c);
  }
}

template <class DK, class DV, typename TK, typename TV>
void AttendT(DK dk, DV dv, const TK* HWY_RESTRICT K, size_t k_stride,
             size_t kcols, const TV* HWY_RESTRICT V, size_t v_stride,
             size_t vcols, size_t n, const float* HWY_RESTRICT logw,
             const float* HWY_RESTRICT qs, size_t G, float* HWY_RESTRICT m,
             float* HWY_RESTRICT z, float* HWY_RESTRICT acc,
             float* HWY_RESTRICT scores) {
  const size_t NV = hn::Lanes(dv);
  HWY_ALIGN float s[kTile];
  const size_t pf_rows = RoundUp(
      HWY_MAX(size_t{1}, kPrefetchBytes / (k_stride * sizeof(TK))), kTile);
  for (size_t r0 = 0; r0 < n; r0 += kTile) {
    const size_t rows = HWY_MIN(kTile, n - r0);
    const TK* kt = K + r0 * k_stride;
    const TV* vt = V + r0 * v_stride;
    if (r0 + kTile + pf_rows <= n) {
      // Every cache line of the tile kPrefetchRows ahead (K and V).
      const char* kp = reinterpret_cast<const char*>(kt + pf_rows * k_stride);
      const char* vp = reinterpret_cast<const char*>(vt + pf_rows * v_stride);
      const size_t kb = kTile * k_stride * sizeof(TK);
      const size_t vb = kTile * v_stride * sizeof(TV);
      for (size_t off = 0; off < kb; off += 64) hwy::Prefetch(kp + off);
      for (size_t off = 0; off < vb; off += 64) hwy::Prefetch(vp + off);
    }
    // The tile's K and V rows are read from memory once; the G queries of
    // the group re-read them from L1.
    for (size_t g = 0; g < G; ++g) {
      ScoreTile(dk, kt, k_stride, kcols, qs + g * k_stride,
                logw ? logw + r0 : nullptr, rows, s);
      if (scores) {
        for (size_t r = 0; r < rows; ++r) scores[g * n + r0 + r] = s[r];
      }
      // Online softmax: rescale what was accumulated when the max grows.
      float mt = s[0];
      for (size_t r = 1; r < rows; ++r) mt = HWY_MAX(mt, s[r]);
      float* a = acc + g * v_stride;
      if (mt > m[g]) {
        const float f = std::exp(m[g] - mt);  // 0 on the first tile
        z[g] *= f;
        const auto vf = hn::Set(dv, f);
        for (size_t c = 0; c < vcols; c += NV) {
          hn::StoreU(hn::Mul(hn::LoadU(dv, a + c), vf), dv, a + c);
        }
        m[g] = mt;
      }
      for (size_t r = 0; r < rows; ++r) s[r] -= m[g];
      z[g] += ExpTileSum(s, rows);
      AccumulateTile(dv, vt, v_stride, vcols, s, rows, a);
    }
  }
}

// Residual sums of a Taylor-split attention (see ResidualAccumulate).
template <class DK, class DV, typename TK, typename TV>
void ResidualT(DK dk, DV dv, const TK* HWY_RESTRICT K, size_t k_stride,
               size_t kcols, const TV* HWY_RESTRICT V, size_t v_stride,
               size_t vcols, size_t n, const float* HWY_RESTRICT logw,
               const float* HWY_RESTRICT qs, float shift,
               const float* HWY_RESTRICT shifts, float ref, int degree,
               float* HWY_RESTRICT N, float* HWY_RESTRICT Z) {
  const hn::CappedTag<float, 16> d;
  const size_t L = hn::Lanes(d);
  HWY_ALIGN float s[kTile];
  HWY_ALIGN float bias[kTile];
  float zsum = 0.0f;
  for (size_t r0 = 0; r0 < n; r0 += kTile) {
    const size_t rows = HWY_MIN(kTile, n - r0);
    ScoreTile(dk, K + r0 * k_stride, k_stride, kcols, qs, nullptr, rows, s);
    for (size_t r = 0; r < rows; ++r) {
      const float sh = shifts ? shifts[r0 + r] : shift;
      s[r] -= sh;                                         // x_j
      bias[r] = (logw ? logw[r0 + r] : 0.0f) + sh - ref;  // log factor
    }
    for (size_t r = rows; r < kTile; ++r) {
      s[r] = 0.0f;
      bias[r] = -INFINITY;
    }
    for (size_t i = 0; i < kTile; i += L) {
      const auto fac = hn::Exp(d, hn::LoadU(d, bias + i));
      const auto res = TaylorResidual(d, hn::LoadU(d, s + i), degree);
      // A zero factor (skipped rows, padding) must not meet an infinite
      // residual: 0 * inf would be NaN.
      const auto w =
          hn::IfThenZeroElse(hn::Eq(fac, hn::Zero(d)), hn::Mul(fac, res));
      hn::StoreU(w, d, s + i);
    }
    for (size_t r = 0; r < rows; ++r) zsum += s[r];
    AccumulateTile(dv, V + r0 * v_stride, v_stride, vcols, s, rows, N);
  }
  *Z += zsum;
}

template <typename TK, typename TV>
void ResidualTyped(const RowsView& K, const RowsView& V, const float* logw,
                   const float* q, float scale, float shift,
                   const float* shifts, float ref, int degree, float* N,
                   float* Z) {
  HWY_ALIGN float qs[kMaxHeadDim];
  for (size_t c = 0; c < K.stride; ++c) qs[c] = q[c] * scale;
  const TK* kp = static_cast<const TK*>(K.data);
  const TV* vp = static_cast<const TV*>(V.data);
  WithRowTag(K.stride, [&](auto dk) {
    WithRowTag(V.stride, [&](auto dv) {
      ResidualT(dk, dv, kp, K.stride, RoundUp(K.cols, hn::Lanes(dk)), vp,
                V.stride, RoundUp(V.cols, hn::Lanes(dv)), K.rows, logw, qs,
                shift, shifts, ref, degree, N, Z);
    });
  });
}

void ResidualAccumulateImpl(const RowsView& K, const RowsView& V,
                            const float* logw, const float* q, float scale,
                            float shift, const float* shifts, float ref,
                            int degree, float* N, float* Z) {
  switch (K.type) {
    case Storage::kF32:
      return ResidualTyped<float, float>(K, V, logw, q, scale, shift, shifts,
                                         ref, degree, N, Z);
    case Storage::kF16:
      return ResidualTyped<hwy::float16_t, hwy::float16_t>(
          K, V, logw, q, scale, shift, shifts, ref, degree, N, Z);
    case Storage::kBF16:
      return ResidualTyped<hwy::bfloat16_t, hwy::bfloat16_t>(
          K, V, logw, q, scale, shift, shifts, ref, degree, N, Z);
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
HWY_EXPORT(ResidualAccumulateImpl);

void ResidualAccumulate(const RowsView& K, const RowsView& V, const float* logw,
                        const float* q, float scale, float shift,
                        const float* shifts, float ref, int degree, float* N,
                        float* Z) {
  HWY_ASSERT(K.cols <= kMaxHeadDim && V.cols <= kMaxHeadDim);
  HWY_ASSERT(K.rows == V.rows && K.type == V.type);
  HWY_ASSERT(degree >= -1 && degree <= 2);
  HWY_DYNAMIC_DISPATCH(ResidualAccumulateImpl)
  (K, V, logw, q, scale, shift, shifts, ref, degree, N, Z);
}

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
