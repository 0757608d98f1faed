// `taylor`: the seed paper's high-temperature construction. Every token that
// leaves the window is added exactly to Taylor moments of degree t <= 2
// around a centre c,
//   M = sum_i w_i phi(k_i - c) v_i^T,  z = sum_i w_i phi(k_i - c),
// so that e^{s<c,q>} psi(q)^T M is the degree-t part of the numerator of ALL
// evicted tokens; the remainder e^{s<c,q>} sum_i r_t(s<k_i - c, q>) v_i is
// estimated by a coreset compacted with the residual kernel
// r_t(tau' s <k_i - c, k_j - c>) (<v_i, v_j> + c0).
//
// The centre is the running mean of the evicted keys. Moments stay valid when
// it moves because a polynomial of degree <= t in (k - c) is one of degree
// <= t in (k - c'): every `recentre_every` evictions the moments are shifted
// exactly to the new mean (RecentreMoments). Residual items keep raw keys, so
// they follow the centre automatically. The degree is lowered (2 -> 1 -> 0)
// until the moments take at most 40 % of the compressed region's bytes.
#include <cmath>
#include <cstring>
#include <limits>

#include "arch/attend.h"
#include "arch/poly.h"
#include "arch/targets.h"
#include "engine/sketch/coreset.h"
#include "engine/sketch/methods.h"

namespace kvsketch {
namespace {

int FitDegree(const SketchConfig& c, size_t bytes) {
  const size_t vs = PaddedCols(c.dv);
  int t = c.degree < 0 ? 0 : (c.degree > 2 ? 2 : c.degree);
  if (t == 2 && c.dk > kPolyMaxDim2) t = 1;
  if (t >= 1 && c.dk > kPolyMaxDim1) t = 0;
  while (t > 0 && PolyFeatureCount(c.dk, t) * (vs + 1) * 4 > bytes * 2 / 5) --t;
  return t;
}

class TaylorSketch final : public Sketch {
 public:
  TaylorSketch(const SketchConfig& c, Arena& a, size_t rows)
      : Sketch(c, a, DefaultWindow(c, rows)) {
    degree_ = FitDegree(c, RemainingBytes());
    F_ = PolyFeatureCount(c.dk, degree_);
    M_ = a.CarveArray<float>("taylor moments", F_ * vs_);
    z_ = a.CarveArray<float>("taylor moment sums", F_);
    centre_ = a.CarveArray<float>("taylor centre", ks_);
    key_sum_ = a.CarveArray<double>("taylor key sums", c.dk);
    std::memset(M_, 0, F_ * vs_ * sizeof(float));
    std::memset(z_, 0, F_ * sizeof(float));
    std::memset(centre_, 0, ks_ * sizeof(float));
    std::memset(key_sum_, 0, c.dk * sizeof(double));
    const size_t cap = Coreset::Capacity(RemainingBytes(), RowBytes(c));
    coreset_.Init(CarveRows("residual coreset", cap), a, c.block);
  }

  std::string Describe() const override {
    return Sketch::Describe() + " degree=" + std::to_string(degree_) +
           " coreset=" + std::to_string(coreset_.cap());
  }

 protected:
  void Evict(const float* k, const float* v, float* ws) override {
    if (evicted_ == 0) {
      std::memcpy(centre_, k, ks_ * sizeof(float));
    } else if (evicted_ % cfg_.recentre_every == 0) {
      Recentre(ws);
    }
    ++evicted_;
    for (size_t i = 0; i < cfg_.dk; ++i) key_sum_[i] += k[i];
    PolyAccumulate(k, ks_, cfg_.dk, centre_, nullptr, v, vs_, 1, degree_, M_,
                   z_, ws);
    if (coreset_.cap() < 2) return;
    if (coreset_.full()) {
      CompactKernel kern;
      kern.scale = cfg_.scale;
      kern.tau = cfg_.tau * QueryKeyRatio();
      kern.kind = KernelKind::kTaylorResidual;
      kern.degree = degree_;
      kern.gamma = cfg_.gamma;
      kern.value_offset = cfg_.value_offset;
      kern.seed = cfg_.seed;
      kern.stream = cfg_.stream;
      coreset_.Compact(kern, centre_, ws);
    }
    coreset_.Insert(k, v, 0);
  }

  void AttendCompressed(const float* qp, size_t G, float* m, float* z, float* N,
                        float* ws) override {
    for (size_t g = 0; g < G; ++g) {
      m[g] = -std::numeric_limits<float>::infinity();
      z[g] = 0.0f;
      if (evicted_ == 0) continue;
      const float* q = qp + g * ks_;
      float* n = N + g * vs_;
      double cq = 0;
      for (size_t i = 0; i < cfg_.dk; ++i) cq += double(centre_[i]) * q[i];
      const float shift = float(cq) * cfg_.scale;
      float Z;
      PolyQuery(q, cfg_.dk, degree_, cfg_.scale, M_, z_, vs_, n, &Z, ws);
      const size_t c = coreset_.count();
      if (c) {
        ResidualAccumulate(coreset_.rows().KView(0, c),
                           coreset_.rows().VView(0, c), coreset_.logw(), q,
                           cfg_.scale, shift, nullptr, shift, degree_, n, &Z);
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
  // Moves the expansion point to the running key mean, shifting the moments
  // exactly: with delta = c - c', (k - c') = (k - c) + delta.
  void Recentre(float* ws) {
    float* delta = ws;
    for (size_t i = 0; i < cfg_.dk; ++i) {
      const float mean = float(key_sum_[i] / double(evicted_));
      delta[i] = centre_[i] - mean;
      centre_[i] = mean;
    }
    ShiftMoments(delta);
  }

  // Row of M / entry of z for feature f: + a * (row of feature g).
  void AddRow(size_t f, size_t g, float a) {
    if (a == 0.0f) return;
    for (size_t c = 0; c < vs_; ++c) M_[f * vs_ + c] += a * M_[g * vs_ + c];
    z_[f] += a * z_[g];
  }

  void ShiftMoments(const float* delta) {
    const size_t d = cfg_.dk;
    if (degree_ >= 2) {  // pairs first: they use the old degree-1 rows
      size_t f = 1 + d;
      for (size_t i = 0; i < d; ++i) {
        for (size_t j = i; j < d; ++j, ++f) {
          AddRow(f, 1 + i, delta[j]);
          AddRow(f, 1 + j, delta[i]);
          AddRow(f, 0, delta[i] * delta[j]);
        }
      }
    }
    if (degree_ >= 1) {
      for (size_t i = 0; i < d; ++i) AddRow(1 + i, 0, delta[i]);
    }
  }

  int degree_ = 1;
  size_t F_ = 1;
  float* M_ = nullptr;  // [F][vs]
  float* z_ = nullptr;  // [F]
  float* centre_ = nullptr;
  double* key_sum_ = nullptr;
  uint64_t evicted_ = 0;
  Coreset coreset_;
};

}  // namespace

size_t TaylorWorkspaceFloats(const SketchConfig& c) {
  const size_t ks = PaddedCols(c.dk), vs = PaddedCols(c.dv);
  const int t = c.degree > 2 ? 2 : (c.degree < 0 ? 0 : c.degree);
  const size_t poly = PolyScratchFloats(c.dk, t) + PolyFeatureCount(c.dk, t);
  const size_t cs = Coreset::WorkspaceFloats(c.block, ks, vs);
  return (poly > cs ? poly : cs) + ks;
}

std::unique_ptr<Sketch> MakeTaylor(const SketchConfig& c, Arena& a,
                                   size_t rows) {
  return std::unique_ptr<Sketch>(new TaylorSketch(c, a, rows));
}

}  // namespace kvsketch
