#include "arch/balance.h"

#include <cmath>

#include "arch/random.h"   // CounterUniform
#include "arch/targets.h"  // RoundUp
#include "hwy/base.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "arch/balance.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
// Must follow highway.h: per-target helpers.
#include "arch/rows-inl.h"
#include "arch/taylor-inl.h"
#include "hwy/contrib/math/math-inl.h"

HWY_BEFORE_NAMESPACE();
namespace kvsketch {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Rows of A per micro-kernel step: 8 where there are 32 vector registers
// (16 accumulators + operands), 4 on x86 targets with 16.
#if HWY_TARGET == HWY_AVX2 || HWY_TARGET == HWY_SSE4 || HWY_TARGET == HWY_SSSE3
constexpr size_t kGramRows = 4;
#else
constexpr size_t kGramRows = 8;
#endif

// Lower triangle of C = A A^T from A given transposed: At [cols][ms] (ms =
// GramStride(m), zero columns past m), so the micro-kernel is a
// broadcast-FMA outer product: kGramRows rows x 2 vectors of columns, no
// horizontal sums. Whole 2N-column blocks, so some entries right of the
// diagonal are written too; rows past m (zero) land in padding rows of C.
HWY_INLINE void GramFromTransposed(const float* HWY_RESTRICT At, size_t m,
                                   size_t cols, float* HWY_RESTRICT C) {
  const hn::CappedTag<float, 16> d;
  const size_t N = hn::Lanes(d);
  const size_t ms = GramStride(m);
  constexpr size_t R = kGramRows;
  for (size_t i0 = 0; i0 < m; i0 += R) {
    const size_t jend = RoundUp(HWY_MIN(i0 + R, m), 2 * N);
    for (size_t j = 0; j < jend; j += 2 * N) {
      auto c00 = hn::Zero(d), c01 = hn::Zero(d), c10 = hn::Zero(d),
           c11 = hn::Zero(d), c20 = hn::Zero(d), c21 = hn::Zero(d),
           c30 = hn::Zero(d), c31 = hn::Zero(d);
      auto c40 = hn::Zero(d), c41 = hn::Zero(d), c50 = hn::Zero(d),
           c51 = hn::Zero(d), c60 = hn::Zero(d), c61 = hn::Zero(d),
           c70 = hn::Zero(d), c71 = hn::Zero(d);
      const float* bt = At + j;
      const float* a = At + i0;  // a[r] = A[i0 + r][k]
      for (size_t k = 0; k < cols; ++k, bt += ms, a += ms) {
        const auto b0 = hn::LoadU(d, bt);
        const auto b1 = hn::LoadU(d, bt + N);
        auto x = hn::Set(d, a[0]);
        c00 = hn::MulAdd(x, b0, c00);
        c01 = hn::MulAdd(x, b1, c01);
        x = hn::Set(d, a[1]);
        c10 = hn::MulAdd(x, b0, c10);
        c11 = hn::MulAdd(x, b1, c11);
        x = hn::Set(d, a[2]);
        c20 = hn::MulAdd(x, b0, c20);
        c21 = hn::MulAdd(x, b1, c21);
        x = hn::Set(d, a[3]);
        c30 = hn::MulAdd(x, b0, c30);
        c31 = hn::MulAdd(x, b1, c31);
        if (R == 8) {
          x = hn::Set(d, a[R == 8 ? 4 : 0]);
          c40 = hn::MulAdd(x, b0, c40);
          c41 = hn::MulAdd(x, b1, c41);
          x = hn::Set(d, a[R == 8 ? 5 : 0]);
          c50 = hn::MulAdd(x, b0, c50);
          c51 = hn::MulAdd(x, b1, c51);
          x = hn::Set(d, a[R == 8 ? 6 : 0]);
          c60 = hn::MulAdd(x, b0, c60);
          c61 = hn::MulAdd(x, b1, c61);
          x = hn::Set(d, a[R == 8 ? 7 : 0]);
          c70 = hn::MulAdd(x, b0, c70);
          c71 = hn::MulAdd(x, b1, c71);
        }
      }
      float* c = C + i0 * ms + j;
      hn::StoreU(c00, d, c);
      hn::StoreU(c01, d, c + N);
      hn::StoreU(c10, d, c + ms);
      hn::StoreU(c11, d, c + ms + N);
      hn::StoreU(c20, d, c + 2 * ms);
      hn::StoreU(c21, d, c + 2 * ms + N);
      hn::StoreU(c30, d, c + 3 * ms);
      hn::StoreU(c31, d, c + 3 * ms + N);
      if (R == 8) {
        hn::StoreU(c40, d, c + 4 * ms);
        hn::StoreU(c41, d, c + 4 * ms + N);
        hn::StoreU(c50, d, c + 5 * ms);
        hn::StoreU(c51, d, c + 5 * ms + N);
        hn::StoreU(c60, d, c + 6 * ms);
        hn::StoreU(c61, d, c + 6 * ms + N);
        hn::StoreU(c70, d, c + 7 * ms);
        hn::StoreU(c71, d, c + 7 * ms + N);
      }
    }
  }
}

// Lower triangle of C = A A^T (C[i][j] for j <= i): A is transposed into At
// [cols][ms] in panels of 16 rows (reads stay within 16 rows, in L1; writes
// are runs of 16 contiguous floats), then GramFromTransposed.
void GramLowerImpl(const float* HWY_RESTRICT A, size_t m, size_t cols,
                   size_t stride, float* HWY_RESTRICT C,
                   float* HWY_RESTRICT At) {
  const size_t ms = GramStride(m);
  for (size_t i0 = 0; i0 < ms; i0 += 16) {
    const size_t iend = HWY_MIN(i0 + 16, m);
    for (size_t k = 0; k < cols; ++k) {
      float* row = At + k * ms + i0;
      size_t i = i0;
      for (; i < iend; ++i) row[i - i0] = A[i * stride + k];
      for (; i < i0 + 16; ++i) row[i - i0] = 0.0f;
    }
  }
  GramFromTransposed(At, m, cols, C);
}

void GramLowerTransposedImpl(const float* HWY_RESTRICT At, size_t m,
                             size_t cols, float* HWY_RESTRICT C) {
  GramFromTransposed(At, m, cols, C);
}

float BuildBalanceKernelImpl(const float* HWY_RESTRICT K, size_t k_stride,
                             size_t dk, const float* HWY_RESTRICT V,
                             size_t v_stride, size_t dv,
                             const float* HWY_RESTRICT w, size_t m,
                             const BalanceParams& p, float* HWY_RESTRICT G,
                             float* HWY_RESTRICT scratch) {
  const hn::CappedTag<float, 16> d;
  const size_t N = hn::Lanes(d);
  const size_t ms = GramStride(m);
  const size_t rows = GramRows(m);
  float* Kc = scratch;            // [m][k_stride]
  float* Gv = Kc + m * k_stride;  // [rows][ms] value Gram
  float* Gt = Gv + rows * ms;     // transposed operand for GramSym
  float* wpad = Gt + GramScratchFloats(m, HWY_MAX(k_stride, v_stride));  // [ms]
  for (size_t i = 0; i < ms; ++i) wpad[i] = i < m ? (w ? w[i] : 1.0f) : 0.0f;
  // 1. Centre the keys (the kernel of centred keys balances the same sums:
  // exp(<k,q>) = exp(<mu,q>) exp(<k-mu,q>) and exp(<mu,q>) is common).
  for (size_t c = 0; c < k_stride; ++c) {
    double mean = 0.0;
    if (p.centre_keys && c < dk) {
      for (size_t i = 0; i < m; ++i) mean += K[i * k_stride + c];
      mean /= double(m);
    }
    for (size_t i = 0; i < m; ++i) {
      Kc[i * k_stride + c] = K[i * k_stride + c] - float(mean);
    }
  }
  // 2. Gram products (key Gram goes straight into G, transformed in place).
  GramLowerImpl(Kc, m, dk, k_stride, G, Gt);
  GramLowerImpl(V, m, dv, v_stride, Gv, Gt);
  // 3. Point kernel, rows j <= i (whole vectors; lanes past i are unused).
  const float a = p.scale * p.tau;
  float shift = 0.0f;
  if (p.kind == KernelKind::kExp) {
    shift = -INFINITY;
    for (size_t i = 0; i < m; ++i) shift = HWY_MAX(shift, a * G[i * ms + i]);
  }
  const auto va = hn::Set(d, a);
  const auto vshift = hn::Set(d, shift);
  const auto vc = hn::Set(d, p.value_offset);
  float max_diag = 0.0f;
  for (size_t i = 0; i < m; ++i) {
    const auto wi = hn::Set(d, wpad[i]);
    float* g = G + i * ms;
    const float* gv = Gv + i * ms;
    for (size_t j = 0; j <= i; j += N) {
      const auto x = hn::Mul(va, hn::LoadU(d, g + j));
      const auto kap = p.kind == KernelKind::kExp
                           ? hn::Exp(d, hn::Sub(x, vshift))
                           : TaylorResidual(d, x, p.taylor_degree);
      const auto wij = hn::Mul(wi, hn::LoadU(d, wpad + j));
      const auto val = hn::MulAdd(wij, hn::LoadU(d, gv + j), vc);
      hn::StoreU(hn::Mul(kap, val), d, g + j);
    }
    max_diag = HWY_MAX(max_diag, g[i]);
  }
  return max_diag;
}

void BalanceWalkImpl(const float* HWY_RESTRICT G, size_t m, float max_diag,
                     float gamma, uint64_t seed, uint64_t stream,
                     int8_t* HWY_RESTRICT eta, float* HWY_RESTRICT signs) {
  const hn::CappedTag<float, 16> d;
  const size_t N = hn::Lanes(d);
  const size_t ms = GramStride(m);
  for (size_t i = 0; i < ms; ++i) signs[i] = 0.0f;
  const float step = max_diag > 0.0f ? gamma / max_diag : 0.0f;
  for (size_t i = 0; i < m; ++i) {
    float s = 1.0f;
    if (i > 0) {
      // sum_{j<i} G_ij eta_j: signs past i are still zero.
      const float g = DotPadded(d, G + i * ms, signs, RoundUp(i, N));
      const float prob = HWY_MIN(1.0f, HWY_MAX(0.0f, 0.5f - step * g));
      s = CounterUniform(seed, stream, i) < prob ? 1.0f : -1.0f;
    }
    signs[i] = s;
    eta[i] = s > 0 ? 1 : -1;
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace kvsketch
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace kvsketch {
size_t GramStride(size_t m) { return RoundUp(m, 32); }
size_t GramRows(size_t m) { return RoundUp(m, 8); }
size_t GramScratchFloats(size_t m, size_t cols) {
  return RoundUp(cols, 4) * GramStride(m);
}
size_t BalanceScratchFloats(size_t m, size_t k_stride, size_t v_stride) {
  const size_t rows = GramRows(m);
  const size_t widest = k_stride > v_stride ? k_stride : v_stride;
  return m * k_stride                    // centred keys
         + 2 * rows * GramStride(m)      // key Gram, value Gram
         + GramScratchFloats(m, widest)  // transposed operand
         + GramStride(m) + 64;           // walk signs (+ alignment slack)
}

HWY_EXPORT(GramLowerImpl);
HWY_EXPORT(GramLowerTransposedImpl);
HWY_EXPORT(BuildBalanceKernelImpl);
HWY_EXPORT(BalanceWalkImpl);

void GramLower(const float* A, size_t m, size_t cols, size_t stride, float* C,
               float* scratch) {
  HWY_ASSERT(m >= 1 && stride >= cols);
  HWY_DYNAMIC_DISPATCH(GramLowerImpl)(A, m, cols, stride, C, scratch);
}

void GramLowerTransposed(const float* At, size_t m, size_t cols, float* C) {
  HWY_ASSERT(m >= 1);
  HWY_DYNAMIC_DISPATCH(GramLowerTransposedImpl)(At, m, cols, C);
}

float BuildBalanceKernel(const float* K, size_t k_stride, size_t dk,
                         const float* V, size_t v_stride, size_t dv,
                         const float* w, size_t m, const BalanceParams& p,
                         float* G, float* scratch) {
  HWY_ASSERT(m >= 1);
  return HWY_DYNAMIC_DISPATCH(BuildBalanceKernelImpl)(
      K, k_stride, dk, V, v_stride, dv, w, m, p, G, scratch);
}

void BalanceWalk(const float* G, size_t m, float max_diag, float gamma,
                 uint64_t seed, uint64_t stream, int8_t* eta) {
  // The walk's float signs live on the stack for m <= 1024 (blocks are small).
  HWY_ALIGN float signs[1024 + 64];
  HWY_ASSERT(GramStride(m) <= 1024);
  HWY_DYNAMIC_DISPATCH(BalanceWalkImpl)
  (G, m, max_diag, gamma, seed, stream, eta, signs);
}

size_t Balance(const float* K, size_t k_stride, size_t dk, const float* V,
               size_t v_stride, size_t dv, const float* w, size_t m,
               const BalanceParams& p, float* scratch, int8_t* eta,
               uint32_t* kept) {
  const size_t rows = GramRows(m);
  float* G = scratch;
  const float max_diag = BuildBalanceKernel(K, k_stride, dk, V, v_stride, dv, w,
                                            m, p, G, G + rows * GramStride(m));
  BalanceWalk(G, m, max_diag, p.gamma, p.seed, p.stream, eta);
  size_t plus = 0;
  for (size_t i = 0; i < m; ++i) plus += eta[i] > 0;
  const int8_t keep = plus <= m - plus ? 1 : -1;
  size_t n = 0;
  for (size_t i = 0; i < m; ++i) {
    if (eta[i] == keep) kept[n++] = uint32_t(i);
  }
  return n;
}

}  // namespace kvsketch
#endif  // HWY_ONCE
