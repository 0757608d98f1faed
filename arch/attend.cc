#include "arch/attend.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "arch/targets.h"  // RoundUp
#include "hwy/base.h"      // HWY_ASSERT, float16_t

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
// Must follow the helpers above.
#include "arch/attend-inl.h"

HWY_BEFORE_NAMESPACE();
namespace kvsketch {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Float rows (K and V of one type); rows with a quantized side are in
// arch/attend_quant.cc.
template <typename T>
FloatRows<T> MakeFloatRows(const RowsView& v) {
  return FloatRows<T>{static_cast<const T*>(v.data), v.stride, v.cols};
}

// Calls f(keys, values) with the row sources of a float pair (one type).
template <class F>
void WithFloatPair(const RowsView& K, const RowsView& V, const F& f) {
  switch (K.type) {
    case Storage::kF16:
      return f(MakeFloatRows<hwy::float16_t>(K),
               MakeFloatRows<hwy::float16_t>(V));
    case Storage::kBF16:
      return f(MakeFloatRows<hwy::bfloat16_t>(K),
               MakeFloatRows<hwy::bfloat16_t>(V));
    default:
      return f(MakeFloatRows<float>(K), MakeFloatRows<float>(V));
  }
}

void ResidualAccumulateImpl(const RowsView& K, const RowsView& V,
                            const float* logw, const float* q, float scale,
                            float shift, const float* shifts, float ref,
                            int degree, float* N, float* Z) {
  WithFloatPair(K, V, [&](const auto& kr, const auto& vr) {
    ResidualRows(kr, vr, K, V, logw, q, scale, shift, shifts, ref, degree, N,
                 Z);
  });
}

void AttendGroupImpl(const RowsView& K, const RowsView& V, const float* logw,
                     const float* q, size_t G, float scale, float* m, float* z,
                     float* N, float* scores) {
  WithFloatPair(K, V, [&](const auto& kr, const auto& vr) {
    AttendRows(kr, vr, K, V, logw, q, G, scale, m, z, N, scores);
  });
}

void AttendManyImpl(const RowsView& K, const RowsView& V, const float* logw,
                    const float* q, size_t P, float scale, float* m, float* z,
                    float* N, float* ws) {
  WithFloatPair(K, V, [&](const auto& kr, const auto& vr) {
    AttendManyRows(kr, vr, K, V, logw, q, P, scale, m, z, N, ws);
  });
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
HWY_EXPORT(AttendManyImpl);
HWY_EXPORT(ResidualAccumulateImpl);

bool SupportedViewPair(Storage k, Storage v) {
  if (k == v) return true;
  const auto ok = [](Storage s) {
    return s == Storage::kF16 || IsQuantized(s);
  };
  return ok(k) && ok(v);
}

namespace {
bool HasQuantizedSide(const RowsView& K, const RowsView& V) {
  return IsQuantized(K.type) || IsQuantized(V.type);
}
void CheckViews(const RowsView& K, const RowsView& V) {
  HWY_ASSERT(K.cols <= kMaxHeadDim && V.cols <= kMaxHeadDim);
  HWY_ASSERT(K.stride % kRowAlignFloats == 0 &&
             V.stride % kRowAlignFloats == 0);
  HWY_ASSERT(K.rows == V.rows && SupportedViewPair(K.type, V.type));
  // Rotation belongs to quantized rows of a power-of-two width.
  HWY_ASSERT(!K.rotated || (IsQuantized(K.type) && IsPowerOfTwo(K.cols)));
  HWY_ASSERT(!V.rotated || (IsQuantized(V.type) && IsPowerOfTwo(V.cols)));
}
}  // namespace

void ResidualAccumulate(const RowsView& K, const RowsView& V, const float* logw,
                        const float* q, float scale, float shift,
                        const float* shifts, float ref, int degree, float* N,
                        float* Z) {
  HWY_ASSERT(degree >= -1 && degree <= 2);
  CheckViews(K, V);
  if (HasQuantizedSide(K, V)) {
    return ResidualAccumulateQuant(K, V, logw, q, scale, shift, shifts, ref,
                                   degree, N, Z);
  }
  HWY_DYNAMIC_DISPATCH(ResidualAccumulateImpl)
  (K, V, logw, q, scale, shift, shifts, ref, degree, N, Z);
}

void AttendGroup(const RowsView& K, const RowsView& V, const float* logw,
                 const float* q, size_t G, float scale, float* m, float* z,
                 float* N, float* scores) {
  HWY_ASSERT(G >= 1 && G <= kMaxGroup);
  CheckViews(K, V);
  if (HasQuantizedSide(K, V)) {
    return AttendGroupQuant(K, V, logw, q, G, scale, m, z, N, scores);
  }
  HWY_DYNAMIC_DISPATCH(AttendGroupImpl)
  (K, V, logw, q, G, scale, m, z, N, scores);
}

size_t AttendManyScratchFloats(size_t P, size_t dk, size_t dv, size_t kstride,
                               size_t vstride) {
  // As AttendManyRows carves it: qt, the accumulators, the scores, m, z,
  // alpha, the key and value tiles.
  const size_t Pp = RoundUp(P, size_t{16});
  const auto tile = [](size_t cols, size_t stride) {
    return 16 * RoundUp(std::max(stride, QuantCols(cols)), size_t{16});
  };
  return RoundUp(dk * Pp, size_t{16}) + RoundUp(dv * Pp, size_t{16}) + 16 * Pp +
         3 * Pp + tile(dk, kstride) + tile(dv, vstride);
}

void AttendMany(const RowsView& K, const RowsView& V, const float* logw,
                const float* q, size_t P, float scale, float* m, float* z,
                float* N, float* ws) {
  CheckViews(K, V);
  if (P == 0) return;
  if (HasQuantizedSide(K, V)) {
    return AttendManyQuant(K, V, logw, q, P, scale, m, z, N, ws);
  }
  HWY_DYNAMIC_DISPATCH(AttendManyImpl)(K, V, logw, q, P, scale, m, z, N, ws);
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
