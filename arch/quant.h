// Rows in any storage: encode (convert / quantize) and decode f32 rows, and
// the normalised Walsh-Hadamard rotation applied before quantizing.
// Layout and error bounds: docs/quantization.md.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "arch/convert.h"  // F32ToF16Bits
#include "arch/types.h"

namespace kvsketch {

// Encodes `cols` floats of src into StorageRowBytes(type, cols) bytes at
// dst: float storages convert (padding lanes zero), quantized ones quantize
// group by group (padding elements are zero before quantizing). Inputs must
// be finite with |x| <= StorageMaxAbs(type).
void EncodeRow(const float* src, size_t cols, Storage type, void* dst);
// Decodes a row written by EncodeRow into PaddedCols(cols) floats (padding
// lanes zero).
void DecodeRow(Storage type, const void* src, size_t cols, float* dst);
// In place: each of n rows (stride floats apart) has its first d floats
// multiplied by the normalised Walsh-Hadamard matrix H_d / sqrt(d) (d a
// power of two, <= kMaxHeadDim). H is symmetric and orthogonal: applying it
// twice restores the row (up to rounding), and <Hk, Hq> = <k, q>.
void HadamardRows(float* x, size_t n, size_t stride, size_t d);

// Scale and offset of one quantization group from its max and min (shared
// by the vector code and the scalar reference so both quantize alike).
struct QuantParams {
  uint16_t scale_bits = 0, offset_bits = 0;  // f16
  float scale = 0, offset = 0;               // the f16 values as f32
  float inv = 0;                             // 1 / scale (0 when scale is 0)
};

// f32 -> f16 bits with round-to-nearest-even, saturating at +-65504
// (a scale never becomes infinite).
inline uint16_t SaturatingF16Bits(float f) {
  uint16_t b = F32ToF16Bits(f);
  if ((b & 0x7FFFu) >= 0x7C00u) b = uint16_t((b & 0x8000u) | 0x7BFFu);
  return b;
}

inline QuantParams MakeQuantParams(Storage type, float mx, float mn) {
  QuantParams p;
  float s = 0.0f;
  if (type == Storage::kQ8) {
    const float amax = std::fmax(std::fabs(mx), std::fabs(mn));
    s = amax / 127.0f;
  } else if (type == Storage::kQ4) {
    // The signed value of largest magnitude maps to code 0 (= -8), as
    // llama.cpp's q4_0 does, unless the other extreme would then pass code
    // 15 (+7): then the other extreme maps to 15 and nothing clips.
    const float v = -mn > mx ? mn : mx;
    const float w = -mn > mx ? mx : mn;
    s = v / -8.0f;
    if (w * v < 0.0f && std::fabs(w) * 8.0f > std::fabs(v) * 7.0f) {
      s = w / 7.0f;
    }
  } else {  // kQ4A
    p.offset_bits = SaturatingF16Bits(mn);
    p.offset = F16BitsToF32(p.offset_bits);
    s = std::fmax(0.0f, (mx - p.offset) / 15.0f);
  }
  p.scale_bits = SaturatingF16Bits(s);
  p.scale = F16BitsToF32(p.scale_bits);
  p.inv = p.scale != 0.0f ? 1.0f / p.scale : 0.0f;
  return p;
}

}  // namespace kvsketch
