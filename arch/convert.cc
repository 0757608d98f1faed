#include "arch/convert.h"

#include <cstring>

#include "hwy/base.h"  // float16_t, bfloat16_t

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "arch/convert.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
// Must follow highway.h: per-target helpers.
#include "arch/load-inl.h"

HWY_BEFORE_NAMESPACE();
namespace kvsketch {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

template <typename T>
void ToT(const float* HWY_RESTRICT src, T* HWY_RESTRICT dst, size_t n) {
  const hn::CappedTag<float, 16> d;
  const size_t N = hn::Lanes(d);
  size_t i = 0;
  for (; i + N <= n; i += N) StoreF32(d, hn::LoadU(d, src + i), dst + i);
  const hn::CappedTag<float, 1> d1;  // remainder, one lane at a time
  for (; i < n; ++i) StoreF32(d1, hn::LoadU(d1, src + i), dst + i);
}

template <typename T>
void FromT(const T* HWY_RESTRICT src, float* HWY_RESTRICT dst, size_t n) {
  const hn::CappedTag<float, 16> d;
  const size_t N = hn::Lanes(d);
  size_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(LoadF32(d, src + i), d, dst + i);
  const hn::CappedTag<float, 1> d1;
  for (; i < n; ++i) hn::StoreU(LoadF32(d1, src + i), d1, dst + i);
}

void ConvertRowImpl(const float* src, Storage type, void* dst, size_t n) {
  switch (type) {
    case Storage::kF16:
      ToT(src, static_cast<hwy::float16_t*>(dst), n);
      break;
    case Storage::kBF16:
      ToT(src, static_cast<hwy::bfloat16_t*>(dst), n);
      break;
    default:  // f32 (quantized types go through EncodeRow)
      std::memcpy(dst, src, n * sizeof(float));
      break;
  }
}

void ConvertRowToF32Impl(Storage type, const void* src, float* dst, size_t n) {
  switch (type) {
    case Storage::kF16:
      FromT(static_cast<const hwy::float16_t*>(src), dst, n);
      break;
    case Storage::kBF16:
      FromT(static_cast<const hwy::bfloat16_t*>(src), dst, n);
      break;
    default:  // f32 (quantized types go through DecodeRow)
      std::memcpy(dst, src, n * sizeof(float));
      break;
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace kvsketch
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace kvsketch {
HWY_EXPORT(ConvertRowImpl);
HWY_EXPORT(ConvertRowToF32Impl);

void ConvertRow(const float* src, Storage dst_type, void* dst, size_t n) {
  HWY_ASSERT(!IsQuantized(dst_type));
  HWY_DYNAMIC_DISPATCH(ConvertRowImpl)(src, dst_type, dst, n);
}
void ConvertRowToF32(Storage src_type, const void* src, float* dst, size_t n) {
  HWY_ASSERT(!IsQuantized(src_type));
  HWY_DYNAMIC_DISPATCH(ConvertRowToF32Impl)(src_type, src, dst, n);
}

// IEEE binary16, round to nearest even, with subnormals and overflow to inf.
uint16_t F32ToF16Bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7FFFFFFFu;
  if (x >= 0x7F800000u)
    return uint16_t(sign | (x > 0x7F800000u ? 0x7E00u : 0x7C00u));
  if (x >= 0x477FF000u) return uint16_t(sign | 0x7C00u);  // rounds to inf
  if (x < 0x38800000u) {                                  // subnormal / zero
    if (x < 0x33000000u) return uint16_t(sign);
    const uint32_t e = x >> 23;
    const uint32_t m = (x & 0x7FFFFFu) | 0x800000u;
    const uint32_t shift = 126 - e;  // 14..24
    uint32_t h = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1))) ++h;
    return uint16_t(sign | h);
  }
  uint32_t h = ((x >> 13) - (112u << 10));
  const uint32_t rem = x & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) ++h;
  return uint16_t(sign | h);
}

float F16BitsToF32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1F, m = h & 0x3FFu, x;
  if (e == 0) {
    if (m == 0) {
      x = sign;
    } else {  // subnormal: normalise
      e = 113;
      while (!(m & 0x400u)) {
        m <<= 1;
        --e;
      }
      x = sign | (e << 23) | ((m & 0x3FFu) << 13);
    }
  } else if (e == 31) {
    x = sign | 0x7F800000u | (m << 13);
  } else {
    x = sign | ((e + 112) << 23) | (m << 13);
  }
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

uint16_t F32ToBF16Bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  x += 0x7FFFu + ((x >> 16) & 1u);
  return uint16_t(x >> 16);
}

float BF16BitsToF32(uint16_t b) {
  const uint32_t x = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

}  // namespace kvsketch
#endif  // HWY_ONCE
