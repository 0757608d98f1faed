// `taylor`: the seed paper's high-temperature construction on top of one
// pool that holds the recent window and the residual coreset.
//
// Tokens enter the pool verbatim (the recent window). When a token leaves
// the window it is added exactly to Taylor moments of degree t <= 2 around a
// centre c (moments.h: running key mean, exact recentring), and stays in the
// pool as a residual item:
//   numerator = sum_{window} e^{s<k,q>} v
//             + e^{s<c,q>} [ psi(q)^T M + sum_{residual j} w_j r_t(s<k_j - c,
//             q>) v_j ]
// The residual items are compacted with the residual kernel
// r_t(tau' s <k_i - c, k_j - c>) (<v_i, v_j> + c0), whose diagonal is far
// smaller than exp's for small arguments (docs/algorithms.md 5.2). When nothing
// can be halved, the oldest item keeps only its polynomial part.
//
// As in `balance`, the window's share of the pool follows the share of
// attention mass it receives. The degree drops (2 -> 1 -> 0) until the
// moments take at most 40 % of the bytes left after the sinks.
#include <cmath>
#include <cstring>
#include <limits>

#include "arch/attend.h"
#include "arch/poly.h"
#include "arch/targets.h"
#include "engine/sketch/coreset.h"
#include "engine/sketch/methods.h"
#include "engine/sketch/moments.h"
#include "engine/sketch/scratch.h"

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

// Attend: per-item shifts of the residual and the window passes, the
// pool's log-weights, one value row, then the moments' scratch.
struct AttendScratch {
  float *shift_res, *shift_win, *lw, *nb, *rest;
  AttendScratch(ScratchCarver& s, size_t n, size_t vs, size_t poly)
      : shift_res(s.Take(n)),
        shift_win(s.Take(n)),
        lw(s.Take(n)),
        nb(s.Take(vs)),
        rest(s.Take(poly)) {}
};
// An item entering the moments: its rows, then the moments' scratch.
struct FoldScratch {
  float *k, *v, *rest;
  FoldScratch(ScratchCarver& s, size_t ks, size_t vs, size_t poly)
      : k(s.Take(ks)), v(s.Take(vs)), rest(s.Take(poly)) {}
};

class TaylorSketch final : public Sketch {
 public:
  TaylorSketch(const SketchConfig& c, Arena& a, size_t rows) : Sketch(c, a, 0) {
    moments_.Init(a, "taylor", c.dk, vs_, FitDegree(c, RemainingBytes()),
                  c.recentre_every);
    pool_.Init("pool", c, a, RemainingBytes(), c.block, 1, c.first_seq);
    pool_.TrackBoundary(&folded_);
    folded_ = uint32_t(pool_.last_seq());
    const size_t cap = pool_.cap();
    const size_t w = DefaultWindow(c, rows);
    protect_ = w < cap ? w : cap;
    window_share_ = cap ? double(protect_) / double(cap) : 1.0;
    adaptive_ = c.window < 0;
  }

  std::string Describe() const override {
    return Sketch::Describe() + " degree=" + std::to_string(moments_.degree()) +
           " pool=" + std::to_string(pool_.cap()) +
           " window=" + std::to_string(protect_) +
           (adaptive_ ? " (adaptive)" : "");
  }

 protected:
  void Evict(const float* k, const float* v, float* ws) override {
    if (pool_.cap() == 0) {
      moments_.Add(k, v, ws);
      return;
    }
    if (pool_.full()) {
      const size_t protect = pool_.last_seq() - folded_;
      if (!pool_.Compact(Kernel(), moments_.centre(), ws, protect)) {
        // Nothing to halve: the oldest item leaves the pool and keeps only
        // its polynomial part (it enters the moments if it had not yet).
        const uint32_t* seq = pool_.seq();
        size_t oldest = 0;
        for (size_t i = 1; i < pool_.count(); ++i) {
          if (seq[i] < seq[oldest]) oldest = i;
        }
        if (seq[oldest] > folded_) {
          ScratchCarver carver(ws);
          const FoldScratch s(carver, ks_, vs_, 0);
          pool_.rows().Get(oldest, s.k, s.v);
          moments_.Add(s.k, s.v, s.rest);
          folded_ = seq[oldest];
        }
        pool_.ReplaceOldest(k, v, 0, ws);
        Fold(ws);
        return;
      }
    }
    pool_.Insert(k, v, 0, ws);
    Fold(ws);
  }

  void AttendCompressed(const float* qp, size_t G, float* m, float* z, float* N,
                        float* ws) override {
    const size_t n = pool_.count();
    ScratchCarver carver(ws);
    const AttendScratch s(carver, n, vs_, 0);
    float* shift_res = s.shift_res;
    float* shift_win = s.shift_win;
    float* nb = s.nb;
    const float* lw = pool_.LogW(s.lw);
    float* rest = s.rest;
    const uint32_t* seq = pool_.seq();
    for (size_t g = 0; g < G; ++g) {
      const float* q = qp + g * ks_;
      float* na = N + g * vs_;
      m[g] = -std::numeric_limits<float>::infinity();
      z[g] = 0.0f;
      if (n == 0 && moments_.count() == 0) continue;
      const float shift =
          moments_.count() ? moments_.CentreScore(q, cfg_.scale) : 0.0f;
      float za = 0.0f, zb = 0.0f;
      if (moments_.count()) {
        moments_.Query(q, cfg_.scale, na, &za, rest);
      } else {
        std::memset(na, 0, vs_ * sizeof(float));
      }
      std::memset(nb, 0, vs_ * sizeof(float));
      if (n) {
        for (size_t j = 0; j < n; ++j) {
          const bool residual = seq[j] <= folded_;
          shift_res[j] = residual ? shift : -INFINITY;
          shift_win[j] = residual ? -INFINITY : shift;
        }
        const RowsView K = pool_.rows().KView(0, n);
        const RowsView V = pool_.rows().VView(0, n);
        ResidualAccumulate(K, V, lw, q, cfg_.scale, 0.0f, shift_res, shift,
                           moments_.degree(), na, &za);
        ResidualAccumulate(K, V, lw, q, cfg_.scale, 0.0f, shift_win, shift, -1,
                           nb, &zb);
      }
      float total = za + zb;
      bool finite = std::isfinite(total) && std::isfinite(za);
      for (size_t c = 0; c < vs_ && finite; ++c)
        finite = std::isfinite(na[c]) && std::isfinite(nb[c]);
      if (!(total > 0.0f) || !finite) {
        // The split estimate failed for this query (far keys, low
        // temperature, logit spreads beyond exp's range): answer from the
        // verbatim items alone, with the overflow-free online softmax.
        size_t verbatim = 0;
        for (size_t j = 0; j < n; ++j) {
          const bool residual = seq[j] <= folded_;
          shift_res[j] = residual ? -INFINITY : lw[j];
          verbatim += !residual;
        }
        if (verbatim == 0) {
          std::memset(na, 0, vs_ * sizeof(float));
          continue;  // empty partial
        }
        AttendGroup(pool_.rows().KView(0, n), pool_.rows().VView(0, n),
                    shift_res, q, 1, cfg_.scale, m + g, z + g, na);
        continue;
      }
      for (size_t c = 0; c < vs_; ++c) na[c] += nb[c];
      if (learning_ && adaptive_ && pool_.full() && n) {
        // The window's share of the pool's attention mass, both sides
        // measured directly with exp (the split estimate can be far off
        // for single queries at low temperature).
        float zr = 0.0f;
        ResidualAccumulate(pool_.rows().KView(0, n), pool_.rows().VView(0, n),
                           lw, q, cfg_.scale, 0.0f, shift_res, shift, -1, rest,
                           &zr);
        if (zb + zr > 0.0f && std::isfinite(zr)) {
          window_share_ +=
              0.02 * (double(zb) / double(zb + zr) - window_share_);
        }
      }
      m[g] = shift;
      z[g] = total;
    }
    if (learning_ && adaptive_ && pool_.full()) {
      const double target = window_share_ * double(pool_.cap());
      protect_ = size_t(std::fmax(2.0, std::fmin(double(pool_.cap()), target)));
    }
  }
  size_t CompressedRetained() const override { return pool_.count(); }
  void SaveScalars(StateWriter& w) const override {
    Sketch::SaveScalars(w);
    moments_.Save(w);
    pool_.Save(w);
    w.Put<uint32_t>(folded_);
    w.Put<uint64_t>(protect_);
    w.Put<double>(window_share_);
  }
  void LoadScalars(StateReader& r) override {
    Sketch::LoadScalars(r);
    moments_.Load(r);
    pool_.Load(r);
    folded_ = r.Get<uint32_t>();
    protect_ = r.GetAtMost<uint64_t>(pool_.cap(), "window size");
    window_share_ = r.Get<double>();
  }
  void CheckState(const StagedState& st) const override {
    Sketch::CheckState(st);
    moments_.Check(st, tokens_, "taylor");
    pool_.Check(st, tokens_, RowLimit(), 1);
    // Every item newer than the boundary is still in the pool (only folded
    // items are compacted), so the boundary trails the newest by <= count.
    if (folded_ > pool_.last_seq() ||
        pool_.last_seq() - folded_ > pool_.count())
      InvalidState("taylor folded boundary");
    if (!(window_share_ >= 0.0 && window_share_ <= 1.0))
      InvalidState("window share");
  }

 private:
  // Items that left the window (seq <= last - protect) enter the moments.
  void Fold(float* ws) {
    const uint32_t last = pool_.last_seq();
    const uint32_t boundary = last > protect_ ? uint32_t(last - protect_) : 0;
    const uint32_t* seq = pool_.seq();
    ScratchCarver carver(ws);
    const FoldScratch s(carver, ks_, vs_, 0);
    while (folded_ < boundary) {
      ++folded_;
      for (size_t i = 0; i < pool_.count(); ++i) {
        if (seq[i] != folded_) continue;
        pool_.rows().Get(i, s.k, s.v);
        moments_.Add(s.k, s.v, s.rest);
        break;
      }
    }
  }

  CompactKernel Kernel() const {
    CompactKernel kern;
    kern.scale = cfg_.scale;
    kern.tau = cfg_.tau * QueryKeyRatio();
    kern.kind = KernelKind::kTaylorResidual;
    kern.degree = moments_.degree();
    kern.gamma = cfg_.gamma;
    kern.value_offset = cfg_.value_offset;
    kern.seed = cfg_.seed;
    kern.stream = cfg_.stream;
    return kern;
  }

  Moments moments_;
  Coreset pool_;
  uint32_t folded_ = 0;  // items with seq <= folded_ are in the moments
  size_t protect_ = 0;   // window size in items
  bool adaptive_ = true;
  double window_share_ = 0.5;
};

}  // namespace

size_t TaylorWorkspaceFloats(const SketchConfig& c) {
  const size_t ks = PaddedCols(c.dk), vs = PaddedCols(c.dv);
  const int t = c.degree > 2 ? 2 : (c.degree < 0 ? 0 : c.degree);
  const size_t items = Coreset::Layout("pool", c).Capacity(c.budget_bytes);
  const size_t poly = Moments::WorkspaceFloats(c.dk, t);
  const size_t attend = ScratchFloats<AttendScratch>(items, vs, poly);
  const size_t fold = ScratchFloats<FoldScratch>(ks, vs, poly);
  const size_t cs = Coreset::WorkspaceFloats(c.block, ks, vs, 1, items);
  const size_t w = attend > cs ? attend : cs;
  return w > fold ? w : fold;
}

std::unique_ptr<Sketch> MakeTaylor(const SketchConfig& c, Arena& a,
                                   size_t rows) {
  return std::unique_ptr<Sketch>(new TaylorSketch(c, a, rows));
}

}  // namespace kvsketch
