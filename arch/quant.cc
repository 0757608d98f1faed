#include "arch/quant.h"

#include <cmath>
#include <cstring>

#include "arch/attend.h"  // kMaxHeadDim
#include "hwy/base.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "arch/quant.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
// Must follow highway.h: per-target helpers.
#include "arch/rows-inl.h"

HWY_BEFORE_NAMESPACE();
namespace kvsketch {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Codes of one group: q8 round(x / s) in [-127, 127]; q4 round(x / s) + 8
// and q4a round((x - o) / s), both in [0, 15]. Rounding is to nearest even
// (the scalar reference uses nearbyint).
template <class D>
HWY_INLINE hn::Vec<hn::Rebind<int32_t, D>> Codes(D d, hn::Vec<D> x,
                                                 Storage type,
                                                 const QuantParams& p) {
  const hn::Rebind<int32_t, D> di;
  if (type == Storage::kQ8) {
    auto c = hn::Round(hn::Mul(x, hn::Set(d, p.inv)));
    c = hn::Min(hn::Max(c, hn::Set(d, -127.0f)), hn::Set(d, 127.0f));
    return hn::ConvertTo(di, c);
  }
  auto c =
      type == Storage::kQ4
          ? hn::Add(hn::Round(hn::Mul(x, hn::Set(d, p.inv))), hn::Set(d, 8.0f))
          : hn::Round(
                hn::Mul(hn::Sub(x, hn::Set(d, p.offset)), hn::Set(d, p.inv)));
  c = hn::Min(hn::Max(c, hn::Zero(d)), hn::Set(d, 15.0f));
  return hn::ConvertTo(di, c);
}

template <class D>
void QuantizeGroup(D d, const float* HWY_RESTRICT x, size_t g, Storage type,
                   uint8_t* HWY_RESTRICT blk) {
  const size_t N = hn::Lanes(d);
  auto vmax = hn::LoadU(d, x);
  auto vmin = vmax;
  for (size_t i = N; i < g; i += N) {
    const auto v = hn::LoadU(d, x + i);
    vmax = hn::Max(vmax, v);
    vmin = hn::Min(vmin, v);
  }
  const QuantParams p =
      MakeQuantParams(type, hn::GetLane(hn::MaxOfLanes(d, vmax)),
                      hn::GetLane(hn::MinOfLanes(d, vmin)));
  std::memcpy(blk, &p.scale_bits, 2);
  uint8_t* codes = blk + 2;
  if (type == Storage::kQ4A) {
    std::memcpy(blk + 2, &p.offset_bits, 2);
    codes = blk + 4;
  }
  const hn::Rebind<int8_t, D> di8;
  const hn::Rebind<uint8_t, D> du8;
  if (type == Storage::kQ8) {
    for (size_t i = 0; i < g; i += N) {
      const auto c = hn::DemoteTo(di8, Codes(d, hn::LoadU(d, x + i), type, p));
      hn::StoreU(c, di8, reinterpret_cast<int8_t*>(codes) + i);
    }
    return;
  }
  // Byte j holds element j (low nibble) and element j + g/2 (high nibble).
  const size_t half = g / 2;
  for (size_t i = 0; i < half; i += N) {
    const auto lo = Codes(d, hn::LoadU(d, x + i), type, p);
    const auto hi = Codes(d, hn::LoadU(d, x + half + i), type, p);
    const auto b = hn::Or(lo, hn::ShiftLeft<4>(hi));
    hn::StoreU(hn::DemoteTo(du8, b), du8, codes + i);
  }
}

template <class D>
void DequantizeGroup(D d, const uint8_t* HWY_RESTRICT blk, size_t g,
                     Storage type, float* HWY_RESTRICT x) {
  const size_t N = hn::Lanes(d);
  const hn::Rebind<int32_t, D> di;
  uint16_t sb, ob = 0;
  std::memcpy(&sb, blk, 2);
  const auto s = hn::Set(d, F16BitsToF32(sb));
  const uint8_t* codes = blk + 2;
  if (type == Storage::kQ4A) {
    std::memcpy(&ob, blk + 2, 2);
    codes = blk + 4;
  }
  if (type == Storage::kQ8) {
    const hn::Rebind<int8_t, D> di8;
    for (size_t i = 0; i < g; i += N) {
      const auto c = hn::LoadU(di8, reinterpret_cast<const int8_t*>(codes) + i);
      hn::StoreU(hn::Mul(hn::ConvertTo(d, hn::PromoteTo(di, c)), s), d, x + i);
    }
    return;
  }
  const hn::Rebind<uint8_t, D> du8;
  const size_t half = g / 2;
  const auto o = hn::Set(d, F16BitsToF32(ob));
  const auto mask = hn::Set(di, 0xF);
  for (size_t i = 0; i < half; i += N) {
    const auto b = hn::BitCast(di, hn::PromoteTo(hn::Rebind<uint32_t, D>(),
                                                 hn::LoadU(du8, codes + i)));
    const auto lo = hn::ConvertTo(d, hn::And(b, mask));
    const auto hi = hn::ConvertTo(d, hn::ShiftRight<4>(b));
    if (type == Storage::kQ4) {
      const auto eight = hn::Set(d, 8.0f);
      hn::StoreU(hn::Mul(hn::Sub(lo, eight), s), d, x + i);
      hn::StoreU(hn::Mul(hn::Sub(hi, eight), s), d, x + half + i);
    } else {
      hn::StoreU(hn::MulAdd(lo, s, o), d, x + i);
      hn::StoreU(hn::MulAdd(hi, s, o), d, x + half + i);
    }
  }
}

// Lanes of the vectors a group is processed with: they must divide the
// group (q8) or the half group (q4, q4a).
template <class F>
HWY_INLINE void WithGroupTag(Storage type, size_t g, const F& f) {
  WithRowTag(type == Storage::kQ8 ? g : g / 2, f);
}

void EncodeRowImpl(const float* src, size_t cols, Storage type, void* dst) {
  if (!IsQuantized(type)) {
    HWY_ALIGN float tmp[kMaxHeadDim];
    const size_t pc = PaddedCols(cols);
    std::memcpy(tmp, src, cols * sizeof(float));
    for (size_t c = cols; c < pc; ++c) tmp[c] = 0.0f;
    ConvertRow(tmp, type, dst, pc);
    return;
  }
  const size_t g = QuantGroup(cols), qc = QuantCols(cols);
  HWY_ALIGN float tmp[kMaxHeadDim + 32];
  std::memcpy(tmp, src, cols * sizeof(float));
  for (size_t c = cols; c < qc; ++c) tmp[c] = 0.0f;
  const size_t bb = QuantBlockBytes(type, g);
  uint8_t* out = static_cast<uint8_t*>(dst);
  WithGroupTag(type, g, [&](auto d) {
    for (size_t j = 0; j < qc / g; ++j) {
      QuantizeGroup(d, tmp + j * g, g, type, out + j * bb);
    }
  });
}

void DecodeRowImpl(Storage type, const void* src, size_t cols, float* dst) {
  const size_t pc = PaddedCols(cols);
  if (!IsQuantized(type)) {
    ConvertRowToF32(type, src, dst, pc);
    return;
  }
  const size_t g = QuantGroup(cols), qc = QuantCols(cols);
  HWY_ALIGN float tmp[kMaxHeadDim + 32];
  const size_t bb = QuantBlockBytes(type, g);
  const uint8_t* in = static_cast<const uint8_t*>(src);
  WithGroupTag(type, g, [&](auto d) {
    for (size_t j = 0; j < qc / g; ++j) {
      DequantizeGroup(d, in + j * bb, g, type, tmp + j * g);
    }
  });
  std::memcpy(dst, tmp, cols * sizeof(float));
  for (size_t c = cols; c < pc; ++c) dst[c] = 0.0f;
}

void HadamardRowsImpl(float* HWY_RESTRICT x, size_t n, size_t stride,
                      size_t dim) {
  for (size_t r = 0; r < n; ++r) HadamardInPlace(x + r * stride, dim);
}

}  // namespace HWY_NAMESPACE
}  // namespace kvsketch
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace kvsketch {
HWY_EXPORT(EncodeRowImpl);
HWY_EXPORT(DecodeRowImpl);
HWY_EXPORT(HadamardRowsImpl);

void EncodeRow(const float* src, size_t cols, Storage type, void* dst) {
  HWY_ASSERT(cols >= 1 && cols <= kMaxHeadDim);
  HWY_DYNAMIC_DISPATCH(EncodeRowImpl)(src, cols, type, dst);
}
void DecodeRow(Storage type, const void* src, size_t cols, float* dst) {
  HWY_ASSERT(cols >= 1 && cols <= kMaxHeadDim);
  HWY_DYNAMIC_DISPATCH(DecodeRowImpl)(type, src, cols, dst);
}
void HadamardRows(float* x, size_t n, size_t stride, size_t d) {
  HWY_ASSERT(IsPowerOfTwo(d) && d <= kMaxHeadDim && d <= stride);
  HWY_DYNAMIC_DISPATCH(HadamardRowsImpl)(x, n, stride, d);
}
}  // namespace kvsketch
#endif  // HWY_ONCE
