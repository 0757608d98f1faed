// Retained rows in the configured storage type: K [cap][ks], V [cap][vs]
// (padded to kRowAlignFloats with zeros), carved from the arena.
#pragma once

#include <cstddef>
#include <cstdint>

#include "arch/types.h"

namespace kvsketch {

struct RowStore {
  uint8_t* k = nullptr;
  uint8_t* v = nullptr;
  size_t cap = 0, dk = 0, dv = 0, ks = 0, vs = 0, eb = 4;
  Storage type = Storage::kF32;
  RowsView KView(size_t begin, size_t n) const;
  RowsView VView(size_t begin, size_t n) const;
  void Put(size_t i, const float* kr, const float* vr) const;
  void Get(size_t i, float* kr, float* vr) const;  // f32, padded
  void Move(size_t dst, size_t src) const;
};

}  // namespace kvsketch
