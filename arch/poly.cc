#include "arch/poly.h"

#include "arch/targets.h"  // RoundUp
#include "hwy/base.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "arch/poly.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
// Must follow highway.h: per-target helpers.
#include "arch/rows-inl.h"

HWY_BEFORE_NAMESPACE();
namespace kvsketch {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Features are written with a stride (1 = contiguous, or the block length
// when building the transposed block Phi^T [F][kPolyBlock]).
HWY_INLINE void KeyFeatures(const float* HWY_RESTRICT k,
                            const float* HWY_RESTRICT centre, size_t d,
                            int degree, float* HWY_RESTRICT out,
                            size_t out_stride, float* HWY_RESTRICT kc) {
  for (size_t i = 0; i < d; ++i) kc[i] = centre ? k[i] - centre[i] : k[i];
  size_t f = 0;
  out[f++ * out_stride] = 1.0f;
  if (degree >= 1) {
    for (size_t i = 0; i < d; ++i) out[f++ * out_stride] = kc[i];
  }
  if (degree >= 2) {
    for (size_t i = 0; i < d; ++i) {
      for (size_t j = i; j < d; ++j) out[f++ * out_stride] = kc[i] * kc[j];
    }
  }
}

void PolyKeyFeaturesImpl(const float* k, const float* centre, size_t d,
                         int degree, float* phi) {
  HWY_ALIGN float kc[kPolyMaxDim1];
  KeyFeatures(k, centre, d, degree, phi, 1, kc);
}

void PolyQueryFeaturesImpl(const float* HWY_RESTRICT q, size_t d, int degree,
                           float scale, float* HWY_RESTRICT psi) {
  size_t f = 0;
  psi[f++] = 1.0f;
  if (degree >= 1) {
    for (size_t i = 0; i < d; ++i) psi[f++] = scale * q[i];
  }
  if (degree >= 2) {
    const float s2 = scale * scale;
    for (size_t i = 0; i < d; ++i) {
      psi[f++] = 0.5f * s2 * q[i] * q[i];
      for (size_t j = i + 1; j < d; ++j) psi[f++] = s2 * q[i] * q[j];
    }
  }
}

// Per block of rows: Phi^T [F][kPolyBlock] (weights folded in), then for each
// feature one pass over the block's values with the moment row's vectors in
// registers: M[f] is read and written once per block, not once per token.
void PolyAccumulateImpl(const float* HWY_RESTRICT K, size_t k_stride, size_t d,
                        const float* HWY_RESTRICT centre,
                        const float* HWY_RESTRICT w,
                        const float* HWY_RESTRICT V, size_t v_stride, size_t n,
                        int degree, float* HWY_RESTRICT M,
                        float* HWY_RESTRICT z, float* HWY_RESTRICT scratch) {
  const size_t F = PolyFeatureCount(d, degree);
  float* phit = scratch;                 // [F][kPolyBlock]
  float* kc = scratch + F * kPolyBlock;  // [d]
  for (size_t r0 = 0; r0 < n; r0 += kPolyBlock) {
    const size_t rows = HWY_MIN(kPolyBlock, n - r0);
    for (size_t r = 0; r < rows; ++r) {
      KeyFeatures(K + (r0 + r) * k_stride, centre, d, degree, phit + r,
                  kPolyBlock, kc);
      const float wr = w ? w[r0 + r] : 1.0f;
      if (wr != 1.0f) {
        for (size_t f = 0; f < F; ++f) phit[f * kPolyBlock + r] *= wr;
      }
    }
    const float* vb = V + r0 * v_stride;
    WithRowTag(v_stride, [&](auto dv) {
      const size_t N = hn::Lanes(dv);
      for (size_t f = 0; f < F; ++f) {
        const float* pf = phit + f * kPolyBlock;
        float zsum = 0.0f;
        for (size_t r = 0; r < rows; ++r) zsum += pf[r];
        z[f] += zsum;
        float* mf = M + f * v_stride;
        size_t c = 0;
        // Two vectors of the moment row at a time, block rows inner.
        for (; c + 2 * N <= v_stride; c += 2 * N) {
          auto a0 = hn::LoadU(dv, mf + c);
          auto a1 = hn::LoadU(dv, mf + c + N);
          for (size_t r = 0; r < rows; ++r) {
            const auto p = hn::Set(dv, pf[r]);
            a0 = hn::MulAdd(p, hn::LoadU(dv, vb + r * v_stride + c), a0);
            a1 = hn::MulAdd(p, hn::LoadU(dv, vb + r * v_stride + c + N), a1);
          }
          hn::StoreU(a0, dv, mf + c);
          hn::StoreU(a1, dv, mf + c + N);
        }
        for (; c < v_stride; c += N) {
          auto a0 = hn::LoadU(dv, mf + c);
          for (size_t r = 0; r < rows; ++r) {
            a0 = hn::MulAdd(hn::Set(dv, pf[r]),
                            hn::LoadU(dv, vb + r * v_stride + c), a0);
          }
          hn::StoreU(a0, dv, mf + c);
        }
      }
    });
  }
}

void PolyQueryImpl(const float* HWY_RESTRICT q, size_t d, int degree,
                   float scale, const float* HWY_RESTRICT M,
                   const float* HWY_RESTRICT z, size_t v_stride,
                   float* HWY_RESTRICT out, float* HWY_RESTRICT Z,
                   float* HWY_RESTRICT psi) {
  PolyQueryFeaturesImpl(q, d, degree, scale, psi);
  const size_t F = PolyFeatureCount(d, degree);
  double zs = 0.0;
  for (size_t f = 0; f < F; ++f) zs += double(psi[f]) * z[f];
  *Z = float(zs);
  WithRowTag(v_stride, [&](auto dv) {
    const size_t N = hn::Lanes(dv);
    for (size_t c = 0; c < v_stride; c += N) {
      auto a0 = hn::Zero(dv);
      auto a1 = hn::Zero(dv);
      size_t f = 0;
      for (; f + 2 <= F; f += 2) {
        a0 = hn::MulAdd(hn::Set(dv, psi[f]),
                        hn::LoadU(dv, M + f * v_stride + c), a0);
        a1 = hn::MulAdd(hn::Set(dv, psi[f + 1]),
                        hn::LoadU(dv, M + (f + 1) * v_stride + c), a1);
      }
      if (f < F) {
        a0 = hn::MulAdd(hn::Set(dv, psi[f]),
                        hn::LoadU(dv, M + f * v_stride + c), a0);
      }
      hn::StoreU(hn::Add(a0, a1), dv, out + c);
    }
  });
}

}  // namespace HWY_NAMESPACE
}  // namespace kvsketch
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace kvsketch {
HWY_EXPORT(PolyKeyFeaturesImpl);
HWY_EXPORT(PolyQueryFeaturesImpl);
HWY_EXPORT(PolyAccumulateImpl);
HWY_EXPORT(PolyQueryImpl);

size_t PolyFeatureCount(size_t d, int degree) {
  size_t f = 1;
  if (degree >= 1) f += d;
  if (degree >= 2) f += d * (d + 1) / 2;
  return f;
}

size_t PolyScratchFloats(size_t d, int degree) {
  return PolyFeatureCount(d, degree) * kPolyBlock + RoundUp(d, 16);
}

static void CheckPoly(size_t d, int degree) {
  HWY_ASSERT(degree >= 0 && degree <= 2);
  HWY_ASSERT(d <= (degree == 2 ? kPolyMaxDim2 : kPolyMaxDim1));
}

void PolyKeyFeatures(const float* k, const float* centre, size_t d, int degree,
                     float* phi) {
  CheckPoly(d, degree);
  HWY_DYNAMIC_DISPATCH(PolyKeyFeaturesImpl)(k, centre, d, degree, phi);
}

void PolyQueryFeatures(const float* q, size_t d, int degree, float scale,
                       float* psi) {
  CheckPoly(d, degree);
  HWY_DYNAMIC_DISPATCH(PolyQueryFeaturesImpl)(q, d, degree, scale, psi);
}

void PolyAccumulate(const float* K, size_t k_stride, size_t d,
                    const float* centre, const float* w, const float* V,
                    size_t v_stride, size_t n, int degree, float* M, float* z,
                    float* scratch) {
  CheckPoly(d, degree);
  HWY_ASSERT(v_stride % kRowAlignFloats == 0);
  HWY_DYNAMIC_DISPATCH(PolyAccumulateImpl)
  (K, k_stride, d, centre, w, V, v_stride, n, degree, M, z, scratch);
}

void PolyQuery(const float* q, size_t d, int degree, float scale,
               const float* M, const float* z, size_t v_stride, float* N,
               float* Z, float* psi_scratch) {
  CheckPoly(d, degree);
  HWY_ASSERT(v_stride % kRowAlignFloats == 0);
  HWY_DYNAMIC_DISPATCH(PolyQueryImpl)
  (q, d, degree, scale, M, z, v_stride, N, Z, psi_scratch);
}

}  // namespace kvsketch
#endif  // HWY_ONCE
