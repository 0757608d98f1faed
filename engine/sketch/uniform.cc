// `uniform`: sinks + window + a reservoir sample of the evicted tokens, each
// with weight n_old / m so numerator and denominator stay unbiased.
#include <algorithm>
#include <cmath>
#include <limits>

#include "arch/attend.h"
#include "arch/random.h"
#include "engine/sketch/methods.h"
#include "engine/sketch/pool.h"

namespace kvsketch {
namespace {

class Uniform final : public Sketch {
 public:
  Uniform(const SketchConfig& c, Arena& a, size_t rows)
      : Sketch(c, a, DefaultWindow(c, rows)) {
    const PoolLayout layout("reservoir", c);
    pool_ = ItemPool(layout, a, layout.Capacity(RemainingBytes()));
  }

 protected:
  void Evict(const float* k, const float* v, float*) override {
    ++evicted_;
    if (pool_.count() < pool_.rows().cap) {
      pool_.rows().Put(pool_.Push(), k, v);
      return;
    }
    if (pool_.rows().cap == 0) return;
    const uint64_t j = CounterHash(cfg_.seed, cfg_.stream, evicted_) % evicted_;
    if (j < pool_.rows().cap) pool_.rows().Put(size_t(j), k, v);
  }

  void AttendCompressed(const float* qp, size_t G, float* m, float* z, float* N,
                        float*) override {
    if (pool_.count() == 0) {
      EmptyPartial(G, m, z);
      return;
    }
    AttendGroup(pool_.rows().KView(0, pool_.count()),
                pool_.rows().VView(0, pool_.count()), nullptr, qp, G,
                cfg_.scale, m, z, N);
    // Every sampled token stands for evicted / count tokens.
    const float logw =
        float(std::log(double(evicted_) / double(pool_.count())));
    for (size_t g = 0; g < G; ++g) m[g] += logw;
  }
  size_t CompressedRetained() const override { return pool_.count(); }
  void SaveScalars(StateWriter& w) const override {
    Sketch::SaveScalars(w);
    pool_.Save(w);
    w.Put<uint64_t>(evicted_);
  }
  void LoadScalars(StateReader& r) override {
    Sketch::LoadScalars(r);
    pool_.Load(r, "reservoir");
    evicted_ = r.Get<uint64_t>();
  }
  void CheckState(const StagedState& st) const override {
    Sketch::CheckState(st);
    // Every reservoir item is an evicted token, the reservoir fills first,
    // and evicted tokens are tokens (so the counter never wraps to 0).
    if (evicted_ > tokens_ ||
        pool_.count() != std::min<uint64_t>(evicted_, pool_.rows().cap))
      InvalidState("reservoir counters (count " +
                   std::to_string(pool_.count()) + ", evicted " +
                   std::to_string(evicted_) + ", tokens " +
                   std::to_string(tokens_) + ")");
    pool_.CheckRows(st, RowLimit(), "reservoir");
  }

 private:
  ItemPool pool_;
  uint64_t evicted_ = 0;
};

}  // namespace

std::unique_ptr<Sketch> MakeUniform(const SketchConfig& c, Arena& a,
                                    size_t rows) {
  return std::unique_ptr<Sketch>(new Uniform(c, a, rows));
}

}  // namespace kvsketch
