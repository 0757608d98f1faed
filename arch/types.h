// Element types of stored rows and small shared definitions for arch/.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvsketch {

// Rows of K/V matrices are stored with a stride that is a multiple of this many
// floats; padding lanes are zero. Kernels use the widest vector (at most 16
// lanes) whose length divides the stride, so they never read past a row.
inline constexpr size_t kRowAlignFloats = 4;

inline constexpr size_t RoundUp(size_t n, size_t a) {
  return (n + a - 1) / a * a;
}
inline constexpr size_t PaddedCols(size_t d) {
  return RoundUp(d, kRowAlignFloats);
}

// Storage type of retained keys/values. Arithmetic is always f32.
//  q8:  per group of 32 elements (one group per row when the row is shorter),
//       an f16 scale s and int8 codes c: x = s * c.
//  q4:  f16 scale s, 4-bit codes u in [0, 15]: x = s * (u - 8) (symmetric;
//       s may be negative so the group's largest magnitude maps to -8).
//  q4a: f16 scale s and f16 offset o, 4-bit codes: x = s * u + o.
// See docs/quantization.md for the layout and the error bounds.
enum class Storage : uint8_t {
  kF32 = 0,
  kF16 = 1,
  kBF16 = 2,
  kQ8 = 3,
  kQ4 = 4,
  kQ4A = 5
};
inline constexpr size_t kStorageCount = 6;

inline constexpr bool IsQuantized(Storage s) {
  return s == Storage::kQ8 || s == Storage::kQ4 || s == Storage::kQ4A;
}
// Bytes of one element of a float storage (quantized storages: see
// StorageRowBytes).
inline constexpr size_t StorageBytes(Storage s) {
  return s == Storage::kF32 ? 4 : 2;
}
// Elements per quantization group for rows of `cols` elements: 32, or the
// whole row rounded up to 8 when it is shorter.
inline constexpr size_t QuantGroup(size_t cols) {
  return cols >= 32 ? 32 : RoundUp(cols == 0 ? 1 : cols, 8);
}
// Elements a quantized row stores (cols rounded up to whole groups).
inline constexpr size_t QuantCols(size_t cols) {
  return RoundUp(cols, QuantGroup(cols));
}
// Bytes of one quantization group: f16 scale (+ f16 offset for q4a) and the
// codes (one byte each for q8, two per byte for q4/q4a).
inline constexpr size_t QuantBlockBytes(Storage s, size_t group) {
  return s == Storage::kQ8 ? 2 + group
                           : (s == Storage::kQ4A ? 4 : 2) + group / 2;
}
// Bytes of one stored row of `cols` elements (padding included).
inline constexpr size_t StorageRowBytes(Storage s, size_t cols) {
  return IsQuantized(s) ? QuantCols(cols) / QuantGroup(cols) *
                              QuantBlockBytes(s, QuantGroup(cols))
                        : PaddedCols(cols) * StorageBytes(s);
}
// Bits per stored element of a row of `cols` elements (scales included).
inline constexpr double StorageBits(Storage s, size_t cols) {
  return cols == 0 ? 0.0 : 8.0 * double(StorageRowBytes(s, cols)) / cols;
}
// Largest magnitude a storage type holds (larger values would be stored as
// infinity): f16 65504, bf16 3.3895314e38, f32 FLT_MAX. Quantized rows
// accept what f16 accepts (their scales are f16; after a Hadamard rotation a
// group's largest element may grow by sqrt(d), which the scale range covers
// for q8 and which saturates the scale, never to infinity, for q4).
inline constexpr float StorageMaxAbs(Storage s) {
  return s == Storage::kF32    ? 3.402823466e38f
         : s == Storage::kBF16 ? 3.3895314e38f
                               : 65504.0f;
}
// Largest magnitude of a key, value or query the engine accepts, whatever
// the storage: with |x| <= 1e8 every score (d <= kMaxHeadDim products of two
// inputs) and every Taylor moment of a stream stays finite in f32.
inline constexpr float kInputMaxAbs = 1e8f;
inline constexpr float InputMaxAbs(Storage s) {
  return StorageMaxAbs(s) < kInputMaxAbs ? StorageMaxAbs(s) : kInputMaxAbs;
}
inline constexpr const char* StorageName(Storage s) {
  return s == Storage::kF32    ? "f32"
         : s == Storage::kF16  ? "f16"
         : s == Storage::kBF16 ? "bf16"
         : s == Storage::kQ8   ? "q8"
         : s == Storage::kQ4   ? "q4"
                               : "q4a";
}

// A row-major matrix view: `rows` rows of `cols` valid elements. Float
// storages: rows `stride` elements apart (stride % kRowAlignFloats == 0,
// padding lanes zero). Quantized storages: rows StorageRowBytes(type, cols)
// bytes apart; `stride` is then the f32 stride of the queries / outputs that
// go with the view. `rotated`: the rows were multiplied by the normalised
// Walsh-Hadamard transform of size `cols` (a power of two) before storing;
// the kernels rotate the queries (keys) or the output (values) to match, so
// callers see unrotated f32 everywhere.
struct RowsView {
  const void* data = nullptr;
  size_t rows = 0;
  size_t cols = 0;
  size_t stride = 0;
  Storage type = Storage::kF32;
  bool rotated = false;
  size_t row_bytes() const {
    return IsQuantized(type) ? StorageRowBytes(type, cols)
                             : stride * StorageBytes(type);
  }
};

inline constexpr bool IsPowerOfTwo(size_t n) {
  return n != 0 && (n & (n - 1)) == 0;
}
// Whether rows of a side (keys or values) are stored Hadamard-rotated:
// quantized storage of a power-of-two width with rotation enabled.
inline constexpr bool RotatedSide(Storage s, size_t cols, bool rotate) {
  return rotate && IsQuantized(s) && IsPowerOfTwo(cols);
}

}  // namespace kvsketch
