// Exact Taylor moments of a set of tokens around a moving centre:
//   M = sum_i phi(k_i - c) v_i^T,  z = sum_i phi(k_i - c)   (degree t <= 2),
// so that psi(q)^T M = sum_i T_t(s <k_i - c, q>) v_i for every query.
// The centre is the running mean of the added keys; every `recentre_every`
// additions the moments are shifted exactly to it (a polynomial of degree
// <= t in (k - c) is one of degree <= t in (k - c')). Used by taylor (one
// set) and hashed (one set per cell).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/budget/arena.h"
#include "engine/io/serial.h"
#include "engine/sketch/sketch.h"  // StagedState

namespace kvsketch {

class Moments {
 public:
  // Arena bytes of one set (carve alignment included).
  static size_t Bytes(size_t dk, size_t vs, int degree);
  static size_t WorkspaceFloats(size_t dk, int degree);

  void Init(Arena& arena, const std::string& name, size_t dk, size_t vs,
            int degree, size_t recentre_every);

  // Adds one token (k, v: padded f32 rows).
  void Add(const float* k, const float* v, float* ws);
  // N [vs] = psi(q)^T M and *Z = psi(q)^T z for a padded query.
  void Query(const float* q, float scale, float* N, float* Z, float* ws) const;
  // s <c, q>.
  float CentreScore(const float* q, float scale) const;

  const float* centre() const { return centre_; }
  uint64_t count() const { return count_; }
  // Upper bound on |k_i - c| over the added keys.
  float radius() const { return radius_; }
  int degree() const { return degree_; }

  void Save(StateWriter& w) const {
    w.Put<uint64_t>(count_);
    w.Put<float>(radius_);
  }
  void Load(StateReader& r) {
    count_ = r.Get<uint64_t>();
    radius_ = r.Get<float>();
  }
  // After Load: count, radius and every staged moment, sum and centre.
  void Check(const StagedState& st, uint64_t max_count,
             const std::string& name) const;

 private:
  void AddRow(size_t f, size_t g, float a);
  void Recentre(float* delta);

  size_t dk_ = 0, vs_ = 0, F_ = 1, every_ = 64;
  int degree_ = 0;
  float* M_ = nullptr;       // [F][vs]
  float* z_ = nullptr;       // [F]
  float* centre_ = nullptr;  // [dk]
  double* key_sum_ = nullptr;
  uint64_t count_ = 0;
  float radius_ = 0.0f;
};

}  // namespace kvsketch
