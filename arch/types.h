// Element types of stored rows and small shared definitions for arch/.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvsketch {

// Storage type of retained keys/values. Arithmetic is always f32.
enum class Storage : uint8_t { kF32 = 0, kF16 = 1, kBF16 = 2 };

inline constexpr size_t StorageBytes(Storage s) {
  return s == Storage::kF32 ? 4 : 2;
}
// Largest magnitude a storage type holds (larger values would be stored as
// infinity): f16 65504, bf16 3.3895314e38, f32 FLT_MAX.
inline constexpr float StorageMaxAbs(Storage s) {
  return s == Storage::kF16    ? 65504.0f
         : s == Storage::kBF16 ? 3.3895314e38f
                               : 3.402823466e38f;
}
// Largest magnitude of a key, value or query the engine accepts, whatever
// the storage: with |x| <= 1e8 every score (d <= kMaxHeadDim products of two
// inputs) and every Taylor moment of a stream stays finite in f32.
inline constexpr float kInputMaxAbs = 1e8f;
inline constexpr float InputMaxAbs(Storage s) {
  return StorageMaxAbs(s) < kInputMaxAbs ? StorageMaxAbs(s) : kInputMaxAbs;
}
inline constexpr const char* StorageName(Storage s) {
  return s == Storage::kF32 ? "f32" : (s == Storage::kF16 ? "f16" : "bf16");
}

// A row-major matrix view: `rows` rows of `cols` valid elements, `stride`
// elements apart (stride % kRowAlignFloats == 0, padding lanes zero).
struct RowsView {
  const void* data = nullptr;
  size_t rows = 0;
  size_t cols = 0;
  size_t stride = 0;
  Storage type = Storage::kF32;
};

}  // namespace kvsketch
