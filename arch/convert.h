// Row conversion f32 <-> f16 / bf16 (bf16 rounds to nearest even).
#pragma once

#include <cstddef>
#include <cstdint>

#include "arch/types.h"

namespace kvsketch {

// dst[i] = src[i] for n elements, converting between storage types. n needs
// no padding. Inputs must be finite (the engine validates before storing).
void ConvertRow(const float* src, Storage dst_type, void* dst, size_t n);
void ConvertRowToF32(Storage src_type, const void* src, float* dst, size_t n);

// Scalar single-element conversions (also the tests' reference).
uint16_t F32ToF16Bits(float f);
float F16BitsToF32(uint16_t h);
uint16_t F32ToBF16Bits(float f);
float BF16BitsToF32(uint16_t b);

}  // namespace kvsketch
