// `blurry`: Blurry Window Attention as a training-free baseline. Sinks and
// the recent window are exact; a token leaving the window becomes a slot of
// mass 1. When the slots are full, the adjacent pair with the least combined
// mass merges into one slot: keys and values are mass-weighted averages and
// the slot enters the score with log(mass) as its log-weight. Old context
// thus blurs progressively (older slots hold more tokens).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "arch/attend.h"
#include "arch/targets.h"  // PaddedCols
#include "engine/sketch/methods.h"
#include "engine/sketch/pool.h"
#include "engine/sketch/scratch.h"

namespace kvsketch {
namespace {

// Slots: rows and their log-mass (f32).
PoolLayout SlotLayout(const SketchConfig& c) {
  PoolLayout l("slots", c);
  l.AddColumn("log-masses", sizeof(float));
  return l;
}

// A merge: the two slots' rows.
struct MergeScratch {
  float *k0, *v0, *k1, *v1;
  MergeScratch(ScratchCarver& s, size_t ks, size_t vs)
      : k0(s.Take(ks)), v0(s.Take(vs)), k1(s.Take(ks)), v1(s.Take(vs)) {}
};

class BlurrySketch final : public Sketch {
 public:
  BlurrySketch(const SketchConfig& c, Arena& a, size_t rows)
      : Sketch(c, a, DefaultWindow(c, rows)) {
    const PoolLayout layout = SlotLayout(c);
    pool_ = ItemPool(layout, a, layout.Capacity(RemainingBytes()));
    logw_ = pool_.Column<float>(0);
  }

  std::string Describe() const override {
    return Sketch::Describe() + " slots=" + std::to_string(pool_.rows().cap);
  }

 protected:
  void Evict(const float* k, const float* v, float* ws) override {
    if (pool_.rows().cap == 0) return;
    if (pool_.count() == pool_.rows().cap) Merge(ws);
    pool_.rows().Put(pool_.count(), k, v);
    logw_[pool_.Push()] = 0.0f;
  }

  void AttendCompressed(const float* qp, size_t G, float* m, float* z, float* N,
                        float*) override {
    if (pool_.count() == 0) {
      EmptyPartial(G, m, z);
      return;
    }
    AttendGroup(pool_.rows().KView(0, pool_.count()),
                pool_.rows().VView(0, pool_.count()), logw_, qp, G, cfg_.scale,
                m, z, N);
  }
  size_t CompressedRetained() const override { return pool_.count(); }
  void SaveScalars(StateWriter& w) const override {
    Sketch::SaveScalars(w);
    pool_.Save(w);
  }
  void LoadScalars(StateReader& r) override {
    Sketch::LoadScalars(r);
    pool_.Load(r, "slot");
  }
  void CheckState(const StagedState& st) const override {
    Sketch::CheckState(st);
    if (pool_.count() > tokens_)
      InvalidState("slot count (more slots than tokens)");
    pool_.CheckRows(st, RowLimit(), "slot");
    // A slot's log-mass: log(tokens merged into it), in [0, log(tokens)].
    const double most = std::log(double(tokens_) + 1.0) + 1e-3;
    for (size_t i = 0; i < pool_.count(); ++i) {
      const float lw = st.At(logw_, i);
      if (!(lw >= 0.0f) || !(double(lw) <= most))
        InvalidState("slot log-mass [" + std::to_string(i) + "]");
    }
  }

 private:
  // Merges the adjacent pair with the least combined mass (ties: oldest).
  void Merge(float* ws) {
    if (pool_.count() < 2) {  // a single slot: it absorbs nothing, drop it
      pool_.set_count(0);
      return;
    }
    size_t best = 0;
    float best_mass = std::numeric_limits<float>::infinity();
    for (size_t i = 0; i + 1 < pool_.count(); ++i) {
      const float mass = std::exp(logw_[i]) + std::exp(logw_[i + 1]);
      if (mass < best_mass) {
        best_mass = mass;
        best = i;
      }
    }
    ScratchCarver carver(ws);
    const MergeScratch s(carver, ks_, vs_);
    float *k0 = s.k0, *v0 = s.v0, *k1 = s.k1, *v1 = s.v1;
    pool_.rows().Get(best, k0, v0);
    pool_.rows().Get(best + 1, k1, v1);
    const float a = std::exp(logw_[best]) / best_mass;
    const float b = 1.0f - a;
    // A convex combination: within the inputs' bound but for rounding,
    // which is clamped away (a saved state must pass its own checks).
    const float lim = RowLimit();
    for (size_t c = 0; c < ks_; ++c)
      k0[c] = std::min(lim, std::max(-lim, a * k0[c] + b * k1[c]));
    for (size_t c = 0; c < vs_; ++c)
      v0[c] = std::min(lim, std::max(-lim, a * v0[c] + b * v1[c]));
    pool_.rows().Put(best, k0, v0);
    logw_[best] = std::log(best_mass);
    pool_.Erase(best + 1, best + 2, pool_.count());
    pool_.set_count(pool_.count() - 1);
  }

  ItemPool pool_;
  float* logw_ = nullptr;
};

}  // namespace

size_t BlurryWorkspaceFloats(const SketchConfig& c) {
  return ScratchFloats<MergeScratch>(PaddedCols(c.dk), PaddedCols(c.dv));
}

std::unique_ptr<Sketch> MakeBlurry(const SketchConfig& c, Arena& a,
                                   size_t rows) {
  return std::unique_ptr<Sketch>(new BlurrySketch(c, a, rows));
}

}  // namespace kvsketch
