// `taylor`: the seed paper's high-temperature construction. Every token that
// leaves the window is added exactly to Taylor moments of degree t <= 2
// around a centre c,
//   M = sum_i w_i phi(k_i - c) v_i^T,  z = sum_i w_i phi(k_i - c),
// so that e^{s<c,q>} psi(q)^T M is the degree-t part of the numerator of ALL
// evicted tokens; the remainder e^{s<c,q>} sum_i r_t(s<k_i - c, q>) v_i is
// estimated by a coreset compacted with the residual kernel
// r_t(tau' s <k_i - c, k_j - c>) (<v_i, v_j> + c0).
//
// The centre is the running mean of the evicted keys, kept valid by exact
// recentring (moments.h). Residual items keep raw keys, so they follow the
// centre automatically. The degree is lowered (2 -> 1 -> 0)
// until the moments take at most 40 % of the compressed region's bytes.
#include <cmath>
#include <cstring>
#include <limits>

#include "arch/attend.h"
#include "arch/poly.h"
#include "arch/targets.h"
#include "engine/sketch/coreset.h"
#include "engine/sketch/methods.h"
#include "engine/sketch/moments.h"

namespace kvsketch {
namespace {

int FitDegree(const SketchConfig& c, size_t bytes) {
  const size_t vs = PaddedCols(c.dv);
  int t = c.degree < 0 ? 0 : (c.degree > 2 ? 2 : c.degree);
  if (t == 2 && c.dk > kPolyMaxDim2) t = 1;
  if (t >= 1 && c.dk > kPolyMaxDim1) t = 0;
  while (t > 0 && Moments::Bytes(c.dk, vs, t) > bytes * 2 / 5) --t;
  return t;
}

class TaylorSketch final : public Sketch {
 public:
  TaylorSketch(const SketchConfig& c, Arena& a, size_t rows)
      : Sketch(c, a, DefaultWindow(c, rows)) {
    moments_.Init(a, "taylor", c.dk, vs_, FitDegree(c, RemainingBytes()),
                  c.recentre_every);
    const size_t cap = Coreset::Capacity(RemainingBytes(), RowBytes(c));
    coreset_.Init(CarveRows("residual coreset", cap), a, c.block);
  }

  std::string Describe() const override {
    return Sketch::Describe() + " degree=" + std::to_string(moments_.degree()) +
           " coreset=" + std::to_string(coreset_.cap());
  }

 protected:
  void Evict(const float* k, const float* v, float* ws) override {
    moments_.Add(k, v, ws);
    if (coreset_.cap() < 2) return;
    if (coreset_.full()) {
      CompactKernel kern;
      kern.scale = cfg_.scale;
      kern.tau = cfg_.tau * QueryKeyRatio();
      kern.kind = KernelKind::kTaylorResidual;
      kern.degree = moments_.degree();
      kern.gamma = cfg_.gamma;
      kern.value_offset = cfg_.value_offset;
      kern.seed = cfg_.seed;
      kern.stream = cfg_.stream;
      coreset_.Compact(kern, moments_.centre(), ws);
    }
    coreset_.Insert(k, v, 0);
  }

  void AttendCompressed(const float* qp, size_t G, float* m, float* z, float* N,
                        float* ws) override {
    for (size_t g = 0; g < G; ++g) {
      m[g] = -std::numeric_limits<float>::infinity();
      z[g] = 0.0f;
      if (moments_.count() == 0) continue;
      const float* q = qp + g * ks_;
      float* n = N + g * vs_;
      const float shift = moments_.CentreScore(q, cfg_.scale);
      float Z;
      moments_.Query(q, cfg_.scale, n, &Z, ws);
      const size_t c = coreset_.count();
      if (c) {
        ResidualAccumulate(coreset_.rows().KView(0, c),
                           coreset_.rows().VView(0, c), coreset_.logw(), q,
                           cfg_.scale, shift, nullptr, shift, moments_.degree(),
                           n, &Z);
      }
      // The split estimate can be non-positive when a query sees far keys
      // (low temperature): then the region has no usable estimate.
      if (!(Z > 0.0f) || !std::isfinite(Z)) {
        std::memset(n, 0, vs_ * sizeof(float));
        continue;
      }
      m[g] = shift;
      z[g] = Z;
    }
  }
  size_t CompressedRetained() const override { return coreset_.count(); }

 private:
  Moments moments_;
  Coreset coreset_;
};

}  // namespace

size_t TaylorWorkspaceFloats(const SketchConfig& c) {
  const size_t ks = PaddedCols(c.dk), vs = PaddedCols(c.dv);
  const int t = c.degree > 2 ? 2 : (c.degree < 0 ? 0 : c.degree);
  const size_t poly = Moments::WorkspaceFloats(c.dk, t);
  const size_t cs = Coreset::WorkspaceFloats(c.block, ks, vs);
  return (poly > cs ? poly : cs) + ks;
}

std::unique_ptr<Sketch> MakeTaylor(const SketchConfig& c, Arena& a,
                                   size_t rows) {
  return std::unique_ptr<Sketch>(new TaylorSketch(c, a, rows));
}

}  // namespace kvsketch
