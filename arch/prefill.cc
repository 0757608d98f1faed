#include "arch/prefill.h"

#include <cmath>
#include <cstdint>
#include <cstring>

#include "arch/targets.h"  // RoundUp

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "arch/prefill.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

#ifndef KVSKETCH_ARCH_PREFILL_CONSTANTS_
#define KVSKETCH_ARCH_PREFILL_CONSTANTS_
namespace kvsketch {
namespace {
constexpr size_t kQueryTile = 16;  // queries per sub-tile at most (lanes)
constexpr size_t kKeyStep = 8;     // keys per online-softmax step
}  // namespace
}  // namespace kvsketch
#endif

HWY_BEFORE_NAMESPACE();
namespace kvsketch {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// accT[c] += sum_r e^(s_r - m) v_r[c] for the columns c0..c0+nc-1 (nc <= 4),
// the queries as lanes: one FMA per key and column for all L queries.
template <class D>
HWY_INLINE void AddValues(D d, const float* const* vr, size_t c0, size_t nc,
                          hn::Vec<D> p0, hn::Vec<D> p1, hn::Vec<D> p2,
                          hn::Vec<D> p3, hn::Vec<D> p4, hn::Vec<D> p5,
                          hn::Vec<D> p6, hn::Vec<D> p7,
                          float* HWY_RESTRICT accT) {
  const size_t L = hn::Lanes(d);
  if (nc == 4) {
    float* a = accT + c0 * L;
    auto a0 = hn::LoadU(d, a), a1 = hn::LoadU(d, a + L);
    auto a2 = hn::LoadU(d, a + 2 * L), a3 = hn::LoadU(d, a + 3 * L);
#define KVSKETCH_ADD_ROW(r, p)                       \
  a0 = hn::MulAdd(hn::Set(d, vr[r][c0 + 0]), p, a0); \
  a1 = hn::MulAdd(hn::Set(d, vr[r][c0 + 1]), p, a1); \
  a2 = hn::MulAdd(hn::Set(d, vr[r][c0 + 2]), p, a2); \
  a3 = hn::MulAdd(hn::Set(d, vr[r][c0 + 3]), p, a3);
    KVSKETCH_ADD_ROW(0, p0)
    KVSKETCH_ADD_ROW(1, p1)
    KVSKETCH_ADD_ROW(2, p2)
    KVSKETCH_ADD_ROW(3, p3)
    KVSKETCH_ADD_ROW(4, p4)
    KVSKETCH_ADD_ROW(5, p5)
    KVSKETCH_ADD_ROW(6, p6)
    KVSKETCH_ADD_ROW(7, p7)
#undef KVSKETCH_ADD_ROW
    hn::StoreU(a0, d, a);
    hn::StoreU(a1, d, a + L);
    hn::StoreU(a2, d, a + 2 * L);
    hn::StoreU(a3, d, a + 3 * L);
    return;
  }
  for (size_t c = c0; c < c0 + nc; ++c) {
    float* a = accT + c * L;
    auto x = hn::LoadU(d, a);
    x = hn::MulAdd(hn::Set(d, vr[0][c]), p0, x);
    x = hn::MulAdd(hn::Set(d, vr[1][c]), p1, x);
    x = hn::MulAdd(hn::Set(d, vr[2][c]), p2, x);
    x = hn::MulAdd(hn::Set(d, vr[3][c]), p3, x);
    x = hn::MulAdd(hn::Set(d, vr[4][c]), p4, x);
    x = hn::MulAdd(hn::Set(d, vr[5][c]), p5, x);
    x = hn::MulAdd(hn::Set(d, vr[6][c]), p6, x);
    x = hn::MulAdd(hn::Set(d, vr[7][c]), p7, x);
    hn::StoreU(x, d, a);
  }
}

// s with -inf in the lanes whose token precedes key j (causal mask).
template <class D, class VI>
HWY_INLINE hn::Vec<D> MaskAfter(D d, VI posv, int32_t j, hn::Vec<D> s) {
  const hn::RebindToSigned<D> di;
  return hn::IfThenElse(hn::RebindMask(d, hn::Lt(posv, hn::Set(di, j))),
                        hn::Set(d, -INFINITY), s);
}

// 2^t for t <= 0, relative error < 3e-7 (the scores are kept in log2
// units, so this replaces exp: about half the operations of Highway's Exp,
// which also serves positive and out-of-range arguments). t is clamped to
// -125: weights below 2^-125 of the largest count as 2^-125 (the sum they
// join is at least 1), never as a denormal.
template <class D>
HWY_INLINE hn::Vec<D> Exp2NonPositive(D d, hn::Vec<D> t) {
  const hn::RebindToSigned<D> di;
  t = hn::Max(t, hn::Set(d, -125.0f));
  const auto k = hn::Round(t);
  const auto f = hn::Sub(t, k);  // [-1/2, 1/2]
  // 2^f = e^(f ln 2), Taylor to degree 6: |f ln 2|^7 / 7! < 1.2e-7.
  auto p = hn::Set(d, 1.5403530393381609e-4f);  // ln2^6 / 6!
  p = hn::MulAdd(p, f, hn::Set(d, 1.3333558146428443e-3f));
  p = hn::MulAdd(p, f, hn::Set(d, 9.6181291076284772e-3f));
  p = hn::MulAdd(p, f, hn::Set(d, 5.5504108664821580e-2f));
  p = hn::MulAdd(p, f, hn::Set(d, 2.4022650695910071e-1f));
  p = hn::MulAdd(p, f, hn::Set(d, 6.9314718055994531e-1f));
  p = hn::MulAdd(p, f, hn::Set(d, 1.0f));
  // p in [2^-1/2, 2^1/2]: adding k to its exponent multiplies by 2^k.
  return hn::BitCast(
      d, hn::Add(hn::BitCast(di, p), hn::ShiftLeft<23>(hn::ConvertTo(di, k))));
}

// 2^(s - m): s, m in log2 units, s <= m, both finite.
template <class D>
HWY_INLINE hn::Vec<D> Weight(D d, hn::Vec<D> s, hn::Vec<D> m) {
  return Exp2NonPositive(d, hn::Sub(s, m));
}

// The same, exactly 0 where s is -inf (masked).
template <class D>
HWY_INLINE hn::Vec<D> MaskedWeight(D d, hn::Vec<D> s, hn::Vec<D> m) {
  return hn::IfThenZeroElse(hn::Eq(s, hn::Set(d, -INFINITY)),
                            Exp2NonPositive(d, hn::Sub(s, m)));
}

// One sub-tile, the lanes are L queries (qt [dk][L], already scaled; pos
// [L] the block token of each lane's query) over the keys 0..nk-1 (nk = max
// pos + 1). Scores and values both keep the queries as lanes: key and value
// elements are broadcast from the rows where they are. accT [dv][L]
// receives N transposed; mo, zo [L] receive m and z.
template <class D>
HWY_NOINLINE void CausalTile(D d, const float* HWY_RESTRICT qt, size_t dk,
                             const int32_t* HWY_RESTRICT pos, size_t nk,
                             const float* HWY_RESTRICT k, size_t k_stride,
                             const float* HWY_RESTRICT v, size_t v_stride,
                             size_t dv, float* HWY_RESTRICT accT,
                             float* HWY_RESTRICT mo, float* HWY_RESTRICT zo) {
  const size_t L = hn::Lanes(d);
  const hn::RebindToSigned<D> di;
  const auto posv = hn::LoadU(di, pos);
  int32_t min_pos = pos[0];
  for (size_t l = 1; l < L; ++l) min_pos = HWY_MIN(min_pos, pos[l]);
  const auto ninf = hn::Set(d, -INFINITY);
  auto mv = ninf;
  auto zv = hn::Zero(d);
  std::memset(accT, 0, dv * L * sizeof(float));
  for (size_t j0 = 0; j0 < nk; j0 += kKeyStep) {
    // Rows past nk are read as the last row and masked (every lane's token
    // is below nk).
    const float* kr[kKeyStep];
    const float* vr[kKeyStep];
    for (size_t r = 0; r < kKeyStep; ++r) {
      kr[r] = k + HWY_MIN(j0 + r, nk - 1) * k_stride;
      vr[r] = v + HWY_MIN(j0 + r, nk - 1) * v_stride;
    }
    auto s0 = hn::Zero(d), s1 = hn::Zero(d), s2 = hn::Zero(d), s3 = hn::Zero(d),
         s4 = hn::Zero(d), s5 = hn::Zero(d), s6 = hn::Zero(d), s7 = hn::Zero(d);
    for (size_t c = 0; c < dk; ++c) {
      const auto qc = hn::LoadU(d, qt + c * L);
      s0 = hn::MulAdd(hn::Set(d, kr[0][c]), qc, s0);
      s1 = hn::MulAdd(hn::Set(d, kr[1][c]), qc, s1);
      s2 = hn::MulAdd(hn::Set(d, kr[2][c]), qc, s2);
      s3 = hn::MulAdd(hn::Set(d, kr[3][c]), qc, s3);
      s4 = hn::MulAdd(hn::Set(d, kr[4][c]), qc, s4);
      s5 = hn::MulAdd(hn::Set(d, kr[5][c]), qc, s5);
      s6 = hn::MulAdd(hn::Set(d, kr[6][c]), qc, s6);
      s7 = hn::MulAdd(hn::Set(d, kr[7][c]), qc, s7);
    }
    // The causal diagonal (rows past nk included): some lanes are masked.
    const bool diagonal = int64_t(j0 + kKeyStep - 1) > min_pos;
    if (diagonal) {
      const int32_t j = int32_t(j0);
      s0 = MaskAfter(d, posv, j + 0, s0), s1 = MaskAfter(d, posv, j + 1, s1);
      s2 = MaskAfter(d, posv, j + 2, s2), s3 = MaskAfter(d, posv, j + 3, s3);
      s4 = MaskAfter(d, posv, j + 4, s4), s5 = MaskAfter(d, posv, j + 5, s5);
      s6 = MaskAfter(d, posv, j + 6, s6), s7 = MaskAfter(d, posv, j + 7, s7);
    }
    const auto mx = hn::Max(hn::Max(hn::Max(s0, s1), hn::Max(s2, s3)),
                            hn::Max(hn::Max(s4, s5), hn::Max(s6, s7)));
    const auto mnew = hn::Max(mv, mx);  // finite: key 0 is seen by every lane
    if (!hn::AllTrue(d, hn::Eq(mnew, mv))) {     // some query's max grew
      const auto f = MaskedWeight(d, mv, mnew);  // 0 on the first step
      zv = hn::Mul(zv, f);
      for (size_t c = 0; c < dv; ++c) {
        hn::StoreU(hn::Mul(hn::LoadU(d, accT + c * L), f), d, accT + c * L);
      }
      mv = mnew;
    }
    hn::Vec<D> p0, p1, p2, p3, p4, p5, p6, p7;
    if (diagonal) {
      p0 = MaskedWeight(d, s0, mv), p1 = MaskedWeight(d, s1, mv);
      p2 = MaskedWeight(d, s2, mv), p3 = MaskedWeight(d, s3, mv);
      p4 = MaskedWeight(d, s4, mv), p5 = MaskedWeight(d, s5, mv);
      p6 = MaskedWeight(d, s6, mv), p7 = MaskedWeight(d, s7, mv);
    } else {
      p0 = Weight(d, s0, mv), p1 = Weight(d, s1, mv);
      p2 = Weight(d, s2, mv), p3 = Weight(d, s3, mv);
      p4 = Weight(d, s4, mv), p5 = Weight(d, s5, mv);
      p6 = Weight(d, s6, mv), p7 = Weight(d, s7, mv);
    }
    zv = hn::Add(zv, hn::Add(hn::Add(hn::Add(p0, p1), hn::Add(p2, p3)),
                             hn::Add(hn::Add(p4, p5), hn::Add(p6, p7))));
    for (size_t c = 0; c < dv; c += 4) {
      AddValues(d, vr, c, HWY_MIN(size_t{4}, dv - c), p0, p1, p2, p3, p4, p5,
                p6, p7, accT);
    }
  }
  hn::StoreU(mv, d, mo);
  hn::StoreU(zv, d, zo);
}

void CausalBlockAttendImpl(const float* HWY_RESTRICT q, size_t q_stride,
                           size_t G, size_t dk, size_t t0, size_t tn,
                           const float* HWY_RESTRICT k, size_t k_stride,
                           const float* HWY_RESTRICT v, size_t v_stride,
                           size_t dv, float scale, float* HWY_RESTRICT m,
                           float* HWY_RESTRICT z, float* HWY_RESTRICT N,
                           size_t n_stride, float* HWY_RESTRICT scratch) {
  const hn::CappedTag<float, kQueryTile> d;
  const size_t L = hn::Lanes(d);
  float* qt = scratch;                 // [dk][L]
  float* accT = qt + kQueryTile * dk;  // [dv][L]
  HWY_ALIGN int32_t pos[kQueryTile];
  HWY_ALIGN float mo[kQueryTile];
  HWY_ALIGN float zo[kQueryTile];
  // Scores in log2 units (s log2 e): the weights are powers of two.
  const float scale2 = scale * 1.4426950408889634f;
  const size_t M = tn * G;
  for (size_t i0 = 0; i0 < M; i0 += L) {
    const size_t ln = HWY_MIN(L, M - i0);
    for (size_t l = 0; l < L; ++l) {
      const size_t i = i0 + HWY_MIN(l, ln - 1);  // padding lanes: the last
      pos[l] = int32_t(t0 + i / G);
      const float* qi = q + (i / G) * q_stride + (i % G) * dk;
      for (size_t c = 0; c < dk; ++c) {
        qt[c * L + l] = l < ln ? qi[c] * scale2 : 0.0f;
      }
    }
    const size_t nk = size_t(pos[ln - 1]) + 1;
    CausalTile(d, qt, dk, pos, nk, k, k_stride, v, v_stride, dv, accT, mo, zo);
    for (size_t l = 0; l < ln; ++l) {
      m[i0 + l] = mo[l] * 0.6931471805599453f;  // back to natural units
      z[i0 + l] = zo[l];
      float* out = N + (i0 + l) * n_stride;
      for (size_t c = 0; c < dv; ++c) out[c] = accT[c * L + l];
      for (size_t c = dv; c < n_stride; ++c) out[c] = 0.0f;
    }
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace kvsketch
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace kvsketch {

HWY_EXPORT(CausalBlockAttendImpl);

size_t CausalBlockScratchFloats(size_t dk, size_t dv) {
  return kQueryTile * (dk + dv);
}

void CausalBlockAttend(const float* q, size_t q_stride, size_t G, size_t dk,
                       size_t t0, size_t tn, const float* k, size_t k_stride,
                       const float* v, size_t v_stride, size_t dv, float scale,
                       float* m, float* z, float* N, size_t n_stride,
                       float* scratch) {
  HWY_DYNAMIC_DISPATCH(CausalBlockAttendImpl)
  (q, q_stride, G, dk, t0, tn, k, k_stride, v, v_stride, dv, scale, m, z, N,
   n_stride, scratch);
}

}  // namespace kvsketch
#endif  // HWY_ONCE
