#include "engine/sketch/moments.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "arch/poly.h"
#include "arch/targets.h"  // RoundUp

namespace kvsketch {

size_t Moments::Bytes(size_t dk, size_t vs, int degree) {
  const size_t F = PolyFeatureCount(dk, degree);
  return Arena::Aligned(F * vs * 4) + Arena::Aligned(F * 4) +
         Arena::Aligned(RoundUp(dk, 4) * 4) + Arena::Aligned(dk * 8);
}

size_t Moments::WorkspaceFloats(size_t dk, int degree) {
  return PolyScratchFloats(dk, degree) + PolyFeatureCount(dk, degree) +
         RoundUp(dk, 16);
}

void Moments::Init(Arena& arena, const std::string& name, size_t dk, size_t vs,
                   int degree, size_t recentre_every) {
  dk_ = dk;
  vs_ = vs;
  degree_ = degree;
  every_ = recentre_every ? recentre_every : 1;
  F_ = PolyFeatureCount(dk, degree);
  M_ = arena.CarveArray<float>(name + " moments", F_ * vs);
  z_ = arena.CarveArray<float>(name + " moment sums", F_);
  centre_ = arena.CarveArray<float>(name + " centre", RoundUp(dk, 4));
  key_sum_ = arena.CarveArray<double>(name + " key sums", dk);
  std::memset(M_, 0, F_ * vs * sizeof(float));
  std::memset(z_, 0, F_ * sizeof(float));
  std::memset(centre_, 0, RoundUp(dk, 4) * sizeof(float));
  std::memset(key_sum_, 0, dk * sizeof(double));
}

void Moments::Check(const StagedState& st, uint64_t max_count,
                    const std::string& name) const {
  if (count_ > max_count) InvalidState(name + " moment count");
  if (!(radius_ >= 0.0f) || !std::isfinite(radius_))
    InvalidState(name + " radius");
  const float any = std::numeric_limits<float>::max();
  st.CheckFloats(M_, F_ * vs_, any, name + " moments");
  st.CheckFloats(z_, F_, any, name + " moment sums");
  st.CheckFloats(centre_, RoundUp(dk_, 4), kInputMaxAbs * (1.0f + 1e-6f),
                 name + " centre");
  st.CheckDoubles(key_sum_, dk_, name + " key sums");
}

void Moments::Add(const float* k, const float* v, float* ws) {
  if (count_ == 0) {
    std::memcpy(centre_, k, dk_ * sizeof(float));
  } else if (count_ % every_ == 0) {
    Recentre(ws);
  }
  ++count_;
  double r2 = 0;
  for (size_t i = 0; i < dk_; ++i) {
    key_sum_[i] += k[i];
    r2 += double(k[i] - centre_[i]) * (k[i] - centre_[i]);
  }
  radius_ = std::fmax(radius_, float(std::sqrt(r2)));
  PolyAccumulate(k, dk_, dk_, centre_, nullptr, v, vs_, 1, degree_, M_, z_, ws);
}

void Moments::Query(const float* q, float scale, float* N, float* Z,
                    float* ws) const {
  PolyQuery(q, dk_, degree_, scale, M_, z_, vs_, N, Z, ws);
}

float Moments::CentreScore(const float* q, float scale) const {
  double s = 0;
  for (size_t i = 0; i < dk_; ++i) s += double(centre_[i]) * q[i];
  return float(s) * scale;
}

void Moments::AddRow(size_t f, size_t g, float a) {
  if (a == 0.0f) return;
  for (size_t c = 0; c < vs_; ++c) M_[f * vs_ + c] += a * M_[g * vs_ + c];
  z_[f] += a * z_[g];
}

// With delta = c - c', (k - c') = (k - c) + delta: degree-2 rows first (they
// use the old degree-1 rows), then degree 1; degree 0 is unchanged.
void Moments::Recentre(float* delta) {
  double dnorm = 0;
  for (size_t i = 0; i < dk_; ++i) {
    const float mean = float(key_sum_[i] / double(count_));
    delta[i] = centre_[i] - mean;
    dnorm += double(delta[i]) * delta[i];
    centre_[i] = mean;
  }
  radius_ += float(std::sqrt(dnorm));  // triangle inequality
  if (degree_ >= 2) {
    size_t f = 1 + dk_;
    for (size_t i = 0; i < dk_; ++i) {
      for (size_t j = i; j < dk_; ++j, ++f) {
        AddRow(f, 1 + i, delta[j]);
        AddRow(f, 1 + j, delta[i]);
        AddRow(f, 0, delta[i] * delta[j]);
      }
    }
  }
  if (degree_ >= 1) {
    for (size_t i = 0; i < dk_; ++i) AddRow(1 + i, 0, delta[i]);
  }
}

}  // namespace kvsketch
