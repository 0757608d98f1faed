// `balance`: sinks + one pool of weighted items that holds both the recent
// window and the coreset (BalanceKV's halving by the kernelised
// self-balancing walk, merge-and-reduce in the stream; compaction policy in
// coreset.h).
//
// The newest `protect_` items of the pool are the recent window: they are
// never halved. When the pool is full, a group of the older items is halved;
// when nothing old is left to halve, the oldest item is dropped (window
// behaviour). The split between window and coreset adapts to the queries
// (in the spirit of ARC balancing recency against frequency): the window's
// share of the pool follows the moving average of the share of attention
// mass the window receives. A head that attends to recent tokens ends up
// with a window; a head that retrieves old context ends up with a coreset.
//
// Kernel: exp(tau' * scale * <k~_i, k~_j>) * (<v_i, v_j> + c) on
// block-centred keys, tau' = tau * mean|q| / mean|k| (the rescaling corollary
// of docs/algorithms.md 3.2: the kernel's diagonal matches what queries see)
// and c = value_offset * mean |v|^2 (balances the denominator too).
#include <algorithm>
#include <cmath>
#include <limits>

#include "arch/attend.h"
#include "arch/targets.h"  // PaddedCols
#include "engine/sketch/coreset.h"
#include "engine/sketch/methods.h"
#include "engine/sketch/scratch.h"

namespace kvsketch {
namespace {

// Attend: the pool's log-weights and every query's raw scores (Adapt).
struct AttendScratch {
  float* lw;      // [n]
  float* scores;  // [G][n]
  AttendScratch(ScratchCarver& s, size_t n, size_t G)
      : lw(s.Take(n)), scores(s.Take(G * n)) {}
};

class BalanceSketch final : public Sketch {
 public:
  BalanceSketch(const SketchConfig& c, Arena& a, size_t rows)
      : Sketch(c, a, 0) {
    coreset_.Init("pool", c, a, RemainingBytes(), c.block, 1, c.first_seq);
    const size_t cap = coreset_.cap();
    const size_t w = DefaultWindow(c, rows);
    protect_ = w < cap ? w : cap;
    window_share_ = cap ? double(protect_) / double(cap) : 1.0;
    adaptive_ = c.window < 0;  // an explicit --window is kept fixed
  }

  std::string Describe() const override {
    return Sketch::Describe() + " pool=" + std::to_string(coreset_.cap()) +
           " window=" + std::to_string(protect_) +
           (adaptive_ ? " (adaptive)" : "") +
           " block=" + std::to_string(cfg_.block);
  }

 protected:
  void Evict(const float* k, const float* v, float* ws) override {
    if (coreset_.cap() == 0) return;
    if (coreset_.full()) {
      if (!coreset_.Compact(Kernel(), nullptr, ws, protect_)) {
        coreset_.ReplaceOldest(k, v, 0, ws);
        return;
      }
    }
    coreset_.Insert(k, v, 0, ws);
  }

  void AttendCompressed(const float* qp, size_t G, float* m, float* z, float* N,
                        float* ws) override {
    const size_t n = coreset_.count();
    if (n == 0) {
      EmptyPartial(G, m, z);
      return;
    }
    ScratchCarver carver(ws);
    const AttendScratch s(carver, n, G);
    const float* lw = coreset_.LogW(s.lw);
    float* scores = adaptive_ ? s.scores : nullptr;
    AttendGroup(coreset_.rows().KView(0, n), coreset_.rows().VView(0, n), lw,
                qp, G, cfg_.scale, m, z, N, scores);
    if (learning_ && adaptive_ && coreset_.full()) Adapt(scores, m, G);
  }
  size_t CompressedRetained() const override { return coreset_.count(); }
  void SaveScalars(StateWriter& w) const override {
    Sketch::SaveScalars(w);
    coreset_.Save(w);
    w.Put<uint64_t>(protect_);
    w.Put<double>(window_share_);
  }
  void LoadScalars(StateReader& r) override {
    Sketch::LoadScalars(r);
    coreset_.Load(r);
    protect_ = r.GetAtMost<uint64_t>(coreset_.cap(), "window size");
    window_share_ = r.Get<double>();
  }
  void CheckState(const StagedState& st) const override {
    Sketch::CheckState(st);
    coreset_.Check(st, tokens_, RowLimit(), 1);
    if (!(window_share_ >= 0.0 && window_share_ <= 1.0))
      InvalidState("window share");
  }

 private:
  // Memory follows attention mass: the window gets the share of the pool
  // equal to the share of the pool's attention mass it receives (moving
  // average over queries); the coreset's estimate of old mass is unbiased,
  // so even a small coreset reports when old tokens start to matter.
  void Adapt(float* scores, const float* m, size_t G) {
    const size_t n = coreset_.count();
    const uint32_t* seq = coreset_.seq();
    const uint32_t last = coreset_.last_seq();
    const size_t w = protect_ < n ? protect_ : n;
    const uint32_t win_lo = last > w ? uint32_t(last - w) : 0;
    for (size_t g = 0; g < G; ++g) {
      double win_mass = 0, core_mass = 0;
      float* s = scores + g * n;  // raw scores -> weights (SIMD exp)
      for (size_t i = 0; i < n; ++i) s[i] = std::max(s[i] - m[g], -87.0f);
      ExpArray(s, s, n);
      for (size_t i = 0; i < n; ++i)
        (seq[i] > win_lo ? win_mass : core_mass) += s[i];
      const double share = win_mass / (win_mass + core_mass);
      window_share_ += 0.02 * (share - window_share_);
    }
    const double target = window_share_ * double(coreset_.cap());
    protect_ =
        size_t(std::fmax(2.0, std::fmin(double(coreset_.cap()), target)));
  }

  // The scratch holds scores for one group's queries (Adapt).
  size_t MaxQueriesPerPass() const override { return cfg_.max_group; }

  CompactKernel Kernel() const {
    CompactKernel k;
    k.scale = cfg_.scale;
    k.tau = cfg_.tau * QueryKeyRatio();
    k.kind = KernelKind::kExp;
    k.gamma = cfg_.gamma;
    k.value_offset = cfg_.value_offset;
    k.centre_keys = cfg_.centre_keys;
    k.seed = cfg_.seed;
    k.stream = cfg_.stream;
    return k;
  }

  Coreset coreset_;
  size_t protect_ = 0;  // newest pool items that form the recent window
  bool adaptive_ = true;
  double window_share_ = 0.5;  // moving average of the window's mass share
};

}  // namespace

size_t BalanceWorkspaceFloats(const SketchConfig& c) {
  const size_t ks = PaddedCols(c.dk), vs = PaddedCols(c.dv);
  // The most pool items (the pool alone in the whole budget).
  const size_t items = Coreset::Layout("pool", c).Capacity(c.budget_bytes);
  const size_t attend = ScratchFloats<AttendScratch>(items, c.max_group);
  const size_t evict = Coreset::WorkspaceFloats(c.block, ks, vs, 1, items);
  return attend > evict ? attend : evict;
}

std::unique_ptr<Sketch> MakeBalance(const SketchConfig& c, Arena& a,
                                    size_t rows) {
  return std::unique_ptr<Sketch>(new BalanceSketch(c, a, rows));
}

}  // namespace kvsketch
