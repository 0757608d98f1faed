// `hashed`: space partitioning for the low-temperature regime. A token that
// leaves the window is routed to a cell by SimHash bits of (k - mu) (mu: the
// running key mean) and a norm shell (|k - mu| above or below its running
// mean). Each cell keeps its centre c_a (running mean), count, radius and
// exact Taylor moments of its recentred keys (moments.h), and its tokens
// enter a shared coreset tagged by cell whose compaction uses the cell's
// residual kernel around c_a. Per query:
//   sum over cells  e^{s<c_a,q>} [ psi(q)^T M_a + sum_{j in a} w_j r_t(s<k_j -
//   c_a, q>) v_j ]
// where cells that were never compacted (they hold all their tokens
// verbatim) skip the moments and use exp directly, and cells whose upper
// bound log(count_a) + s<c_a,q> + s rho_a |q| is below 1e-6 of the largest
// lower bound are skipped. When every cell slot is taken, a new hash code
// joins the nearest cell (by centre).
#include <cmath>
#include <cstring>
#include <limits>

#include "arch/attend.h"
#include "arch/hash.h"
#include "arch/poly.h"
#include "arch/random.h"
#include "arch/targets.h"
#include "engine/sketch/coreset.h"
#include "engine/sketch/methods.h"
#include "engine/sketch/moments.h"
#include "engine/sketch/scratch.h"

namespace kvsketch {
namespace {

constexpr size_t kMaxCells = 64;

struct CellPlan {
  int degree = 0;
  size_t cells = 1;
};

// Cells and their degree: at most 40 % of the compressed bytes go to cells;
// the degree drops until at least min(8, codes) cells fit.
CellPlan PlanCells(const SketchConfig& c, size_t bytes) {
  const size_t vs = PaddedCols(c.dv);
  const size_t codes = size_t(2) << (c.hash_bits > 5 ? 5 : c.hash_bits);
  CellPlan p;
  int t = c.degree < 0 ? 0 : (c.degree > 1 ? 1 : c.degree);
  for (;; --t) {
    const size_t per = Moments::Bytes(c.dk, vs, t) + PaddedCols(c.dk) * 4 + 1;
    size_t n = bytes * 2 / 5 / per;
    if (n > codes) n = codes;
    if (n > kMaxCells) n = kMaxCells;
    if (n >= (codes < 8 ? codes : 8) || t == 0) {
      p.degree = t;
      p.cells = n ? n : 1;
      return p;
    }
  }
}

// Attend: per-item shifts of the moments and the verbatim passes, the
// coreset's log-weights, each cell's centre score, one cell's value
// moments, then a cell query's scratch.
struct AttendScratch {
  float *shift_a, *shift_b, *lw, *cell_m, *part, *rest;
  AttendScratch(ScratchCarver& s, size_t n, size_t cells, size_t vs,
                size_t poly)
      : shift_a(s.Take(n)),
        shift_b(s.Take(n)),
        lw(s.Take(n)),
        cell_m(s.Take(cells)),
        part(s.Take(vs)),
        rest(s.Take(poly)) {}
};
// Routing a key: its offset from the running mean.
struct RouteScratch {
  float* x;
  RouteScratch(ScratchCarver& s, size_t ks) : x(s.Take(ks)) {}
};

class HashedSketch final : public Sketch {
 public:
  HashedSketch(const SketchConfig& c, Arena& a, size_t rows)
      : Sketch(c, a, DefaultWindow(c, rows)) {
    bits_ = c.hash_bits > 5 ? 5 : c.hash_bits;
    // Fixed tables (planes, code table, key sums) and carve alignment come
    // first; what is left is planned into cells.
    const size_t fixed = 8 * Arena::kCarveAlign + (bits_ * ks_ + 1) * 4 +
                         (size_t(2) << bits_) * 2 + (c.dk + 1) * 8;
    const size_t one_cell =
        Moments::Bytes(c.dk, vs_, 0) + ks_ * 4 + 1 + Arena::kCarveAlign;
    if (RemainingBytes() < fixed + one_cell) {
      throw BudgetError(
          "hashed: budget of " + std::to_string(c.budget_bytes) +
          " bytes leaves " + std::to_string(RemainingBytes()) +
          " bytes after sinks and window; its tables and one cell need " +
          std::to_string(fixed + one_cell) +
          " (use a larger budget or a "
          "smaller --window)");
    }
    const CellPlan plan = PlanCells(c, RemainingBytes() - fixed);
    degree_ = plan.degree;
    n_cells_ = plan.cells;
    planes_ = a.CarveArray<float>("hashed planes", bits_ * ks_ + 1);
    for (size_t b = 0; b < bits_; ++b) {
      for (size_t i = 0; i < ks_; ++i) {
        planes_[b * ks_ + i] =
            i < c.dk
                ? float(CounterNormal(c.seed, c.stream ^ 0x5151, b * ks_ + i))
                : 0.0f;
      }
    }
    code_to_cell_ =
        a.CarveArray<int16_t>("hashed code table", size_t(2) << bits_);
    for (size_t i = 0; i < (size_t(2) << bits_); ++i) code_to_cell_[i] = -1;
    centres_ = a.CarveArray<float>("hashed centres", n_cells_ * ks_);
    compacted_ = a.CarveArray<uint8_t>("hashed compacted flags", n_cells_);
    mu_sum_ = a.CarveArray<double>("hashed key sums", c.dk + 1);
    std::memset(compacted_, 0, n_cells_);
    std::memset(mu_sum_, 0, (c.dk + 1) * sizeof(double));
    for (size_t i = 0; i < n_cells_; ++i) {
      cells_[i].Init(a, "hashed cell", c.dk, vs_, degree_, c.recentre_every);
    }
    coreset_.Init("hashed coreset", c, a, RemainingBytes(), c.block, n_cells_,
                  c.first_seq);
  }

  std::string Describe() const override {
    return Sketch::Describe() + " cells=" + std::to_string(n_cells_) +
           " degree=" + std::to_string(degree_) +
           " coreset=" + std::to_string(coreset_.cap());
  }

 protected:
  void Evict(const float* k, const float* v, float* ws) override {
    const size_t cell = Route(k, ws);
    cells_[cell].Add(k, v, ws);
    std::memcpy(centres_ + cell * ks_, cells_[cell].centre(),
                cfg_.dk * sizeof(float));
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
      coreset_.Compact(kern, centres_, ws);
      MarkCompacted();  // cells that lost items now need their moments
    }
    coreset_.Insert(k, v, uint16_t(cell), ws);
  }

  void AttendCompressed(const float* qp, size_t G, float* m, float* z, float* N,
                        float* ws) override {
    const size_t n = coreset_.count();
    ScratchCarver carver(ws);
    const AttendScratch s(carver, n, n_cells_, vs_, 0);
    float* shift_a = s.shift_a;
    float* shift_b = s.shift_b;
    float* cell_m = s.cell_m;
    const float* lw = coreset_.LogW(s.lw);
    float* part = s.part;
    float* rest = s.rest;
    for (size_t g = 0; g < G; ++g) {
      const float* q = qp + g * ks_;
      float* out = N + g * vs_;
      m[g] = -std::numeric_limits<float>::infinity();
      z[g] = 0.0f;
      if (used_cells_ == 0) continue;
      double qn = 0;
      for (size_t i = 0; i < cfg_.dk; ++i) qn += double(q[i]) * q[i];
      const float qnorm = float(std::sqrt(qn));
      // Bounds on each cell's log-mass.
      float best_lower = -INFINITY, ref = -INFINITY;
      for (size_t a = 0; a < used_cells_; ++a) {
        cell_m[a] = cells_[a].CentreScore(q, cfg_.scale);
        const float spread = cfg_.scale * cells_[a].radius() * qnorm;
        const float logn = std::log(float(cells_[a].count()));
        best_lower = std::fmax(best_lower, logn + cell_m[a] - spread);
        ref = std::fmax(ref, cell_m[a]);
      }
      const float cut = best_lower + std::log(1e-6f);
      std::memset(out, 0, vs_ * sizeof(float));
      float Z = 0.0f;
      for (size_t a = 0; a < used_cells_; ++a) {
        const float upper = std::log(float(cells_[a].count())) + cell_m[a] +
                            cfg_.scale * cells_[a].radius() * qnorm;
        if (upper < cut) {
          cell_m[a] = -INFINITY;  // skipped: its items get factor 0 below
          continue;
        }
        if (!compacted_[a]) continue;  // verbatim: exp pass below
        float pz;
        cells_[a].Query(q, cfg_.scale, part, &pz, rest);
        const float f = std::exp(cell_m[a] - ref);
        for (size_t c = 0; c < vs_; ++c) out[c] += f * part[c];
        Z += f * pz;
      }
      for (size_t j = 0; j < n; ++j) {
        const size_t a = coreset_.tag(j);
        const bool verbatim = !compacted_[a];
        shift_a[j] = verbatim ? -INFINITY : cell_m[a];
        shift_b[j] = verbatim ? cell_m[a] : -INFINITY;
      }
      if (n) {
        const RowsView K = coreset_.rows().KView(0, n);
        const RowsView V = coreset_.rows().VView(0, n);
        ResidualAccumulate(K, V, lw, q, cfg_.scale, 0.0f, shift_a, ref, degree_,
                           out, &Z);
        ResidualAccumulate(K, V, lw, q, cfg_.scale, 0.0f, shift_b, ref, -1, out,
                           &Z);
      }
      bool finite = std::isfinite(Z);
      for (size_t c = 0; c < vs_ && finite; ++c) finite = std::isfinite(out[c]);
      if (!(Z > 0.0f) || !finite) {  // beyond exp's range: no estimate
        std::memset(out, 0, vs_ * sizeof(float));
        continue;
      }
      m[g] = ref;
      z[g] = Z;
    }
  }
  size_t CompressedRetained() const override { return coreset_.count(); }
  void SaveScalars(StateWriter& w) const override {
    Sketch::SaveScalars(w);
    w.Put<uint64_t>(used_cells_);
    w.Put<uint64_t>(evicted_);
    for (size_t a = 0; a < n_cells_; ++a) cells_[a].Save(w);
    coreset_.Save(w);
  }
  void LoadScalars(StateReader& r) override {
    Sketch::LoadScalars(r);
    used_cells_ = r.GetAtMost<uint64_t>(n_cells_, "cell count");
    evicted_ = r.Get<uint64_t>();
    for (size_t a = 0; a < n_cells_; ++a) cells_[a].Load(r);
    coreset_.Load(r);
  }
  void CheckState(const StagedState& st) const override {
    Sketch::CheckState(st);
    if (evicted_ > tokens_) InvalidState("hashed eviction count");
    if (used_cells_ > evicted_) InvalidState("hashed cell count");
    // Every code maps to no cell (-1) or to a cell in use.
    for (size_t i = 0; i < (size_t(2) << bits_); ++i) {
      const int16_t cell = st.At(code_to_cell_, i);
      if (cell < -1 || cell >= int16_t(used_cells_))
        InvalidState("hashed code table [" + std::to_string(i) +
                     "] = " + std::to_string(cell));
    }
    uint64_t routed = 0;
    for (size_t a = 0; a < n_cells_; ++a) {
      const std::string name = "hashed cell " + std::to_string(a);
      cells_[a].Check(st, evicted_, name);
      if (a >= used_cells_ && cells_[a].count() != 0)
        InvalidState(name + " count (cell not in use)");
      if (a < used_cells_ && cells_[a].count() == 0)
        InvalidState(name + " count (cell in use but empty)");
      routed += cells_[a].count();
      st.CheckFloats(centres_ + a * ks_, ks_, RowLimit() * (1.0f + 1e-6f),
                     name + " centre");
      const uint8_t flag = st.At(compacted_, a);
      if (flag > 1) InvalidState(name + " compacted flag");
    }
    if (routed != evicted_) InvalidState("hashed cell counts (sum != evicted)");
    st.CheckDoubles(mu_sum_, cfg_.dk + 1, "hashed key sums");
    st.CheckFloats(planes_, bits_ * ks_ + 1, 1e3f, "hashed planes");
    coreset_.Check(st, tokens_, RowLimit(), used_cells_);
  }

 private:
  size_t Route(const float* k, float* ws) {
    // Running mean of evicted keys and of |k - mu| (norm shells).
    ScratchCarver carver(ws);
    float* x = RouteScratch(carver, ks_).x;
    for (size_t i = 0; i < cfg_.dk; ++i) mu_sum_[i] += k[i];
    ++evicted_;
    double r2 = 0;
    for (size_t i = 0; i < ks_; ++i) {
      x[i] = i < cfg_.dk ? k[i] - float(mu_sum_[i] / double(evicted_)) : 0.0f;
      r2 += double(x[i]) * x[i];
    }
    const double r = std::sqrt(r2);
    mu_sum_[cfg_.dk] += r;
    const bool outer = r > mu_sum_[cfg_.dk] / double(evicted_);
    uint64_t code = 0;
    if (bits_) SimHash(x, 1, cfg_.dk, ks_, planes_, bits_, &code);
    const size_t key = size_t(code) * 2 + (outer ? 1 : 0);
    int16_t cell = code_to_cell_[key];
    if (cell >= 0) return size_t(cell);
    if (used_cells_ < n_cells_) {
      cell = int16_t(used_cells_++);
    } else {  // no free slot: the nearest centre
      double best = INFINITY;
      for (size_t a = 0; a < n_cells_; ++a) {
        double d2 = 0;
        for (size_t i = 0; i < cfg_.dk; ++i) {
          const double dd = double(k[i]) - centres_[a * ks_ + i];
          d2 += dd * dd;
        }
        if (d2 < best) {
          best = d2;
          cell = int16_t(a);
        }
      }
    }
    code_to_cell_[key] = cell;
    return size_t(cell);
  }

  // A cell is verbatim while the coreset holds every token routed to it.
  void MarkCompacted() {
    size_t in_pool[kMaxCells] = {0};
    for (size_t j = 0; j < coreset_.count(); ++j) ++in_pool[coreset_.tag(j)];
    for (size_t a = 0; a < used_cells_; ++a) {
      if (in_pool[a] != cells_[a].count()) compacted_[a] = 1;
    }
  }

  size_t bits_ = 0, n_cells_ = 1, used_cells_ = 0;
  int degree_ = 0;
  float* planes_ = nullptr;  // [bits][ks] Gaussian projections
  int16_t* code_to_cell_ = nullptr;
  float* centres_ = nullptr;  // [cells][ks] (mirror for Compact)
  uint8_t* compacted_ = nullptr;
  double* mu_sum_ = nullptr;  // [dk] key sums, [dk] sum of |k - mu|
  uint64_t evicted_ = 0;
  Moments cells_[kMaxCells];
  Coreset coreset_;
};

}  // namespace

size_t HashedWorkspaceFloats(const SketchConfig& c) {
  const size_t ks = PaddedCols(c.dk), vs = PaddedCols(c.dv);
  // Attend: per-item shifts over the whole coreset (bounded by the budget).
  // The most items: no tag column, the pool alone in the budget.
  const size_t items = Coreset::Layout("pool", c, 1).Capacity(c.budget_bytes);
  const size_t poly = Moments::WorkspaceFloats(c.dk, 1);
  const size_t attend =
      ScratchFloats<AttendScratch>(items, kMaxCells, vs, poly);
  const size_t cs = Coreset::WorkspaceFloats(c.block, ks, vs, kMaxCells, items);
  // Evict: routing, then a cell's moments, then the coreset (in turn).
  const size_t route = ScratchFloats<RouteScratch>(ks);
  size_t w = attend > cs ? attend : cs;
  w = w > route ? w : route;
  return w > poly ? w : poly;
}

std::unique_ptr<Sketch> MakeHashed(const SketchConfig& c, Arena& a,
                                   size_t rows) {
  return std::unique_ptr<Sketch>(new HashedSketch(c, a, rows));
}

}  // namespace kvsketch
