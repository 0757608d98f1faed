// `exact` keeps every token verbatim (the reference) and `window` keeps only
// sinks + the recent window (StreamingLLM). Both have no compressed region.
#include <limits>

#include "engine/sketch/methods.h"
#include "kvsketch/error.h"

namespace kvsketch {
namespace {

class Exact final : public Sketch {
 public:
  // Every row of the budget is a "sink": nothing is ever evicted.
  Exact(const SketchConfig& c, Arena& a, size_t rows)
      : Sketch(WithSinks(c, rows), a, 0) {}
  size_t tokens_left() const override {
    return tokens_ < cfg_.sinks ? cfg_.sinks - tokens_ : 0;
  }

 protected:
  void Evict(const float*, const float*, float*) override {
    throw BudgetError("exact: the budget of " + std::to_string(cfg_.sinks) +
                      " tokens is full after " + std::to_string(tokens_) +
                      " tokens; nothing was appended");
  }
  void AttendCompressed(const float*, size_t G, float* m, float* z, float*,
                        float*) override {
    for (size_t g = 0; g < G; ++g) {
      m[g] = -std::numeric_limits<float>::infinity();
      z[g] = 0.0f;
    }
  }
  size_t CompressedRetained() const override { return 0; }

 private:
  static SketchConfig WithSinks(SketchConfig c, size_t rows) {
    if (rows == 0) {
      throw BudgetError("exact: budget of " + std::to_string(c.budget_bytes) +
                        " bytes holds no token");
    }
    c.sinks = rows;
    return c;
  }
};

class Window final : public Sketch {
 public:
  Window(const SketchConfig& c, Arena& a, size_t rows)
      : Sketch(c, a, c.window >= 0 ? size_t(c.window) : rows - c.sinks) {}

 protected:
  void Evict(const float*, const float*, float*) override {}  // dropped
  void AttendCompressed(const float*, size_t G, float* m, float* z, float*,
                        float*) override {
    for (size_t g = 0; g < G; ++g) {
      m[g] = -std::numeric_limits<float>::infinity();
      z[g] = 0.0f;
    }
  }
  size_t CompressedRetained() const override { return 0; }
};

}  // namespace

std::unique_ptr<Sketch> MakeExact(const SketchConfig& c, Arena& a,
                                  size_t rows) {
  return std::unique_ptr<Sketch>(new Exact(c, a, rows));
}

std::unique_ptr<Sketch> MakeWindow(const SketchConfig& c, Arena& a,
                                   size_t rows) {
  return std::unique_ptr<Sketch>(new Window(c, a, rows));
}

}  // namespace kvsketch
