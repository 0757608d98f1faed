// Attention over rows with a quantized side (q8 / q4 / q4a keys or values,
// the other side quantized or f16): codes are widened in registers, scores
// and numerators accumulate in f32 (see arch/attend-inl.h). A separate
// translation unit from the float kernels so the two compile in parallel.
#include <cmath>
#include <limits>

#include "arch/attend.h"
#include "arch/targets.h"  // RoundUp
#include "hwy/base.h"      // HWY_ASSERT, float16_t

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "arch/attend_quant.cc"
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

inline FloatRows<hwy::float16_t> MakeHalfRows(const RowsView& v) {
  return FloatRows<hwy::float16_t>{static_cast<const hwy::float16_t*>(v.data),
                                   v.stride, v.cols};
}

// Calls f(keys, values) with the row sources of a supported quantized pair.
template <class F>
void WithQuantPair(const RowsView& K, const RowsView& V, const F& f) {
  const bool qk = IsQuantized(K.type), qv = IsQuantized(V.type);
  if (qk && qv) return f(MakeQuantRows(K), MakeQuantRows(V));
  if (qk) return f(MakeQuantRows(K), MakeHalfRows(V));
  return f(MakeHalfRows(K), MakeQuantRows(V));
}

void AttendGroupQuantImpl(const RowsView& K, const RowsView& V,
                          const float* logw, const float* q, size_t G,
                          float scale, float* m, float* z, float* N,
                          float* scores) {
  WithQuantPair(K, V, [&](const auto& kr, const auto& vr) {
    AttendRows(kr, vr, K, V, logw, q, G, scale, m, z, N, scores);
  });
}

void AttendManyQuantImpl(const RowsView& K, const RowsView& V,
                         const float* logw, const float* q, size_t P,
                         float scale, float* m, float* z, float* N, float* ws) {
  WithQuantPair(K, V, [&](const auto& kr, const auto& vr) {
    AttendManyRows(kr, vr, K, V, logw, q, P, scale, m, z, N, ws);
  });
}

void ResidualAccumulateQuantImpl(const RowsView& K, const RowsView& V,
                                 const float* logw, const float* q, float scale,
                                 float shift, const float* shifts, float ref,
                                 int degree, float* N, float* Z) {
  WithQuantPair(K, V, [&](const auto& kr, const auto& vr) {
    ResidualRows(kr, vr, K, V, logw, q, scale, shift, shifts, ref, degree, N,
                 Z);
  });
}

}  // namespace HWY_NAMESPACE
}  // namespace kvsketch
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace kvsketch {
HWY_EXPORT(AttendGroupQuantImpl);
HWY_EXPORT(ResidualAccumulateQuantImpl);
HWY_EXPORT(AttendManyQuantImpl);

void AttendManyQuant(const RowsView& K, const RowsView& V, const float* logw,
                     const float* q, size_t P, float scale, float* m, float* z,
                     float* N, float* ws) {
  HWY_DYNAMIC_DISPATCH(AttendManyQuantImpl)
  (K, V, logw, q, P, scale, m, z, N, ws);
}

void AttendGroupQuant(const RowsView& K, const RowsView& V, const float* logw,
                      const float* q, size_t G, float scale, float* m, float* z,
                      float* N, float* scores) {
  HWY_DYNAMIC_DISPATCH(AttendGroupQuantImpl)
  (K, V, logw, q, G, scale, m, z, N, scores);
}

void ResidualAccumulateQuant(const RowsView& K, const RowsView& V,
                             const float* logw, const float* q, float scale,
                             float shift, const float* shifts, float ref,
                             int degree, float* N, float* Z) {
  HWY_DYNAMIC_DISPATCH(ResidualAccumulateQuantImpl)
  (K, V, logw, q, scale, shift, shifts, ref, degree, N, Z);
}
}  // namespace kvsketch
#endif  // HWY_ONCE
