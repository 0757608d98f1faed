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
    pool_ = ItemPool(layout, a, layout.Capacity(RemainingBytes())).rows();
  }

 protected:
  void Evict(const float* k, const float* v, float*) override {
    ++evicted_;
    if (count_ < pool_.cap) {
      pool_.Put(count_++, k, v);
      return;
    }
    if (pool_.cap == 0) return;
    const uint64_t j = CounterHash(cfg_.seed, cfg_.stream, evicted_) % evicted_;
    if (j < pool_.cap) pool_.Put(size_t(j), k, v);
  }

  void AttendCompressed(const float* qp, size_t G, float* m, float* z, float* N,
                        float*) override {
    if (count_ == 0) {
      EmptyPartial(G, m, z);
      return;
    }
    AttendGroup(pool_.KView(0, count_), pool_.VView(0, count_), nullptr, qp, G,
                cfg_.scale, m, z, N);
    // Every sampled token stands for evicted / count tokens.
    const float logw = float(std::log(double(evicted_) / double(count_)));
    for (size_t g = 0; g < G; ++g) m[g] += logw;
  }
  size_t CompressedRetained() const override { return count_; }
  void SaveScalars(StateWriter& w) const override {
    Sketch::SaveScalars(w);
    w.Put<uint64_t>(count_);
    w.Put<uint64_t>(evicted_);
  }
  void LoadScalars(StateReader& r) override {
    Sketch::LoadScalars(r);
    count_ = r.GetAtMost<uint64_t>(pool_.cap, "reservoir count");
    evicted_ = r.Get<uint64_t>();
  }
  void CheckState(const StagedState& st) const override {
    Sketch::CheckState(st);
    // Every reservoir item is an evicted token, the reservoir fills first,
    // and evicted tokens are tokens (so the counter never wraps to 0).
    if (evicted_ > tokens_ || count_ != std::min<uint64_t>(evicted_, pool_.cap))
      InvalidState("reservoir counters (count " + std::to_string(count_) +
                   ", evicted " + std::to_string(evicted_) + ", tokens " +
                   std::to_string(tokens_) + ")");
    st.CheckRows(pool_, count_, RowLimit(), "reservoir");
  }

 private:
  Rows pool_;
  size_t count_ = 0;
  uint64_t evicted_ = 0;
};

}  // namespace

std::unique_ptr<Sketch> MakeUniform(const SketchConfig& c, Arena& a,
                                    size_t rows) {
  return std::unique_ptr<Sketch>(new Uniform(c, a, rows));
}

}  // namespace kvsketch
