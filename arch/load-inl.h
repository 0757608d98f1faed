// Per-target loads of f32/f16/bf16 rows as f32 vectors (converted in
// registers). Include after hwy/highway.h.

#if defined(KVSKETCH_ARCH_LOAD_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef KVSKETCH_ARCH_LOAD_INL_H_
#undef KVSKETCH_ARCH_LOAD_INL_H_
#else
#define KVSKETCH_ARCH_LOAD_INL_H_
#endif

#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace kvsketch {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

template <class D>
HWY_INLINE hn::Vec<D> LoadF32(D d, const float* HWY_RESTRICT p) {
  return hn::LoadU(d, p);
}

template <class D>
HWY_INLINE hn::Vec<D> LoadF32(D d, const hwy::float16_t* HWY_RESTRICT p) {
  const hn::Rebind<hwy::float16_t, D> dh;
  return hn::PromoteTo(d, hn::LoadU(dh, p));
}

// bf16 is the upper half of an f32: widen and shift (exact).
template <class D>
HWY_INLINE hn::Vec<D> LoadF32(D d, const hwy::bfloat16_t* HWY_RESTRICT p) {
  const hn::Rebind<uint16_t, D> du16;
  const hn::Rebind<uint32_t, D> du32;
  const auto bits = hn::LoadU(du16, reinterpret_cast<const uint16_t*>(p));
  return hn::BitCast(d, hn::ShiftLeft<16>(hn::PromoteTo(du32, bits)));
}

template <class D>
HWY_INLINE void StoreF32(D d, hn::Vec<D> v, float* HWY_RESTRICT p) {
  hn::StoreU(v, d, p);
}

// f32 -> f16 with round-to-nearest-even on every target (Highway 1.0.3's
// emulated DemoteTo truncates on SSE4/SSSE3/SCALAR; results must not depend on
// the CPU). Branchless form of the classic bit trick: normals round by adding
// 0xFFF + odd bit, subnormals by a float add of a magic constant.
template <class D>
HWY_INLINE void StoreF32(D d, hn::Vec<D> v, hwy::float16_t* HWY_RESTRICT p) {
  const hn::Rebind<uint32_t, D> du;
  const hn::Rebind<int32_t, D> di;
  const hn::Rebind<uint16_t, D> du16;
  const auto bits = hn::BitCast(du, v);
  const auto sign = hn::And(bits, hn::Set(du, 0x80000000u));
  const auto f = hn::Xor(bits, sign);  // |v| bits
  const auto f16max = hn::Set(du, (127u + 16u) << 23);
  const auto denorm_magic =
      hn::Set(du, ((127u - 15u) + (23u - 10u) + 1u) << 23);
  // Overflow: inf, or a quiet NaN for NaN inputs.
  const auto inf_nan = hn::IfThenElse(
      hn::RebindMask(du, hn::Gt(hn::BitCast(di, f), hn::Set(di, 0x7F800000))),
      hn::Set(du, 0x7E00u), hn::Set(du, 0x7C00u));
  // Subnormal or zero result: the float add rounds to nearest even for us.
  const auto sub = hn::Sub(
      hn::BitCast(du, hn::Add(hn::BitCast(d, f), hn::BitCast(d, denorm_magic))),
      denorm_magic);
  // Normal result.
  const auto odd = hn::And(hn::ShiftRight<13>(f), hn::Set(du, 1u));
  const auto rebias =
      hn::Set(du, uint32_t(int32_t(15 - 127) * (1 << 23)) + 0xFFFu);
  const auto normal = hn::ShiftRight<13>(hn::Add(hn::Add(f, rebias), odd));
  const auto is_big =  // f >= f16max (no integer Ge in Highway 1.0.3)
      hn::Gt(hn::BitCast(di, f),
             hn::Sub(hn::BitCast(di, f16max), hn::Set(di, 1)));
  const auto is_sub = hn::Lt(hn::BitCast(di, f), hn::Set(di, 113 << 23));
  auto h = hn::IfThenElse(hn::RebindMask(du, is_sub), sub, normal);
  h = hn::IfThenElse(hn::RebindMask(du, is_big), inf_nan, h);
  h = hn::Or(h, hn::ShiftRight<16>(sign));
  const hn::Rebind<hwy::float16_t, D> dh;
  hn::StoreU(hn::BitCast(dh, hn::DemoteTo(du16, hn::BitCast(di, h))), dh, p);
}

// f32 -> bf16 with round-to-nearest-even (inputs are finite by contract).
template <class D>
HWY_INLINE void StoreF32(D /*tag*/, hn::Vec<D> v,
                         hwy::bfloat16_t* HWY_RESTRICT p) {
  const hn::Rebind<uint32_t, D> du32;
  const hn::Rebind<int32_t, D> di32;
  const hn::Rebind<uint16_t, D> du16;
  auto u = hn::BitCast(du32, v);
  const auto lsb = hn::And(hn::ShiftRight<16>(u), hn::Set(du32, 1));
  u = hn::Add(u, hn::Add(hn::Set(du32, 0x7FFFu), lsb));
  hn::StoreU(hn::DemoteTo(du16, hn::BitCast(di32, hn::ShiftRight<16>(u))), du16,
             reinterpret_cast<uint16_t*>(p));
}

}  // namespace HWY_NAMESPACE
}  // namespace kvsketch
HWY_AFTER_NAMESPACE();

#endif  // per-target include guard
