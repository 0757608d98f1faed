// Internal: every method's constructor and scratch size (one file each,
// listed in method_list.h).
#pragma once

#include <memory>

#include "engine/sketch/sketch.h"

namespace kvsketch {

// Each method's constructor and scratch size (method_list.h; a
// constructor shared by several methods is declared once per method).
inline size_t NoWorkspaceFloats(const SketchConfig&) { return 0; }
#define KVSKETCH_METHOD_DECLARE(e, name, make, ws)                            \
  std::unique_ptr<Sketch> make(const SketchConfig& c, Arena& a, size_t rows); \
  size_t ws(const SketchConfig& c);
KVSKETCH_METHODS(KVSKETCH_METHOD_DECLARE)
#undef KVSKETCH_METHOD_DECLARE

inline std::unique_ptr<Sketch> MakeMethod(const SketchConfig& c, Arena& a,
                                          size_t rows) {
  switch (c.method) {
#define KVSKETCH_METHOD_MAKE(e, name, make, ws) \
  case Method::e:                               \
    return make(c, a, rows);
    KVSKETCH_METHODS(KVSKETCH_METHOD_MAKE)
#undef KVSKETCH_METHOD_MAKE
  }
  return nullptr;
}

// Scratch floats of the method itself (beyond Sketch's own).
inline size_t MethodWorkspaceFloats(const SketchConfig& c) {
  switch (c.method) {
#define KVSKETCH_METHOD_WS(e, name, make, ws) \
  case Method::e:                             \
    return ws(c);
    KVSKETCH_METHODS(KVSKETCH_METHOD_WS)
#undef KVSKETCH_METHOD_WS
  }
  return 0;
}

// Default recent window for a compressed method with `rows` rows of budget.
inline size_t DefaultWindow(const SketchConfig& c, size_t rows,
                            float method_share = 0.5f) {
  if (c.window >= 0) return size_t(c.window);
  const size_t free_rows = rows > c.sinks ? rows - c.sinks : 0;
  const float share = c.window_share >= 0.0f ? c.window_share : method_share;
  size_t w = size_t(share * float(free_rows) + 0.5f);
  if (w < 2) w = 2;
  return w;
}

}  // namespace kvsketch
