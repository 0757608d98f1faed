// Internal: constructors of the six sketches (one file each).
#pragma once

#include <memory>

#include "engine/sketch/sketch.h"

namespace kvsketch {

std::unique_ptr<Sketch> MakeExact(const SketchConfig& c, Arena& a, size_t rows);
std::unique_ptr<Sketch> MakeWindow(const SketchConfig& c, Arena& a,
                                   size_t rows);
std::unique_ptr<Sketch> MakeUniform(const SketchConfig& c, Arena& a,
                                    size_t rows);
std::unique_ptr<Sketch> MakeBalance(const SketchConfig& c, Arena& a,
                                    size_t rows);
std::unique_ptr<Sketch> MakeTaylor(const SketchConfig& c, Arena& a,
                                   size_t rows);
std::unique_ptr<Sketch> MakeHashed(const SketchConfig& c, Arena& a,
                                   size_t rows);

std::unique_ptr<Sketch> MakeSelective(const SketchConfig& c, Arena& a,
                                      size_t rows);  // h2o, tova, risk
std::unique_ptr<Sketch> MakeBlurry(const SketchConfig& c, Arena& a,
                                   size_t rows);

size_t SelectiveWorkspaceFloats(const SketchConfig& c);
size_t BlurryWorkspaceFloats(const SketchConfig& c);
size_t BalanceWorkspaceFloats(const SketchConfig& c);
size_t TaylorWorkspaceFloats(const SketchConfig& c);
size_t HashedWorkspaceFloats(const SketchConfig& c);

inline std::unique_ptr<Sketch> MakeMethod(const SketchConfig& c, Arena& a,
                                          size_t rows) {
  switch (c.method) {
    case Method::kExact:
      return MakeExact(c, a, rows);
    case Method::kWindow:
      return MakeWindow(c, a, rows);
    case Method::kUniform:
      return MakeUniform(c, a, rows);
    case Method::kBalance:
      return MakeBalance(c, a, rows);
    case Method::kTaylor:
      return MakeTaylor(c, a, rows);
    case Method::kHashed:
      return MakeHashed(c, a, rows);
    case Method::kH2O:
    case Method::kTova:
    case Method::kRisk:
      return MakeSelective(c, a, rows);
    case Method::kBlurry:
      return MakeBlurry(c, a, rows);
  }
  return nullptr;
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
