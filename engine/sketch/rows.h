// Retained rows in the configured storage types: K [cap] rows of kb bytes,
// V [cap] rows of vb bytes (StorageRowBytes), carved from the arena. Put and
// Get take padded f32 rows (ks / vs floats); quantized sides of a
// power-of-two width may be stored Hadamard-rotated (krot / vrot), which Put
// and Get undo, so callers always see the original f32 rows.
#pragma once

#include <cstddef>
#include <cstdint>

#include "arch/types.h"

namespace kvsketch {

struct RowStore {
  uint8_t* k = nullptr;
  uint8_t* v = nullptr;
  size_t cap = 0, dk = 0, dv = 0, ks = 0, vs = 0, kb = 0, vb = 0;
  Storage tk = Storage::kF32, tv = Storage::kF32;
  bool krot = false, vrot = false;
  RowsView KView(size_t begin, size_t n) const;
  RowsView VView(size_t begin, size_t n) const;
  void Put(size_t i, const float* kr, const float* vr) const;
  void Get(size_t i, float* kr, float* vr) const;  // f32, padded
  void Move(size_t dst, size_t src) const;
};

}  // namespace kvsketch
