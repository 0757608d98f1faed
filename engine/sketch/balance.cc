// `balance`: sinks + window + a coreset of weighted items compacted by the
// kernelised self-balancing walk (BalanceKV's halving, merge-and-reduce in
// the stream; the compaction policy is in coreset.h). The kernel is
// exp(tau' * scale * <k~_i, k~_j>) * (<v_i, v_j> + c) on block-centred keys,
// with tau' = tau * mean|q| / mean|k| (the rescaling corollary: the kernel's
// diagonal then matches what the queries see) and c = value_offset * mean
// |v|^2 (balances the denominator together with the numerator).
#include <limits>

#include "arch/attend.h"
#include "arch/targets.h"  // PaddedCols
#include "engine/sketch/coreset.h"
#include "engine/sketch/methods.h"

namespace kvsketch {
namespace {

class BalanceSketch final : public Sketch {
 public:
  BalanceSketch(const SketchConfig& c, Arena& a, size_t rows)
      : Sketch(c, a, DefaultWindow(c, rows)) {
    const size_t cap = Coreset::Capacity(RemainingBytes(), RowBytes(c));
    coreset_.Init(CarveRows("coreset", cap), a, c.block);
  }

  std::string Describe() const override {
    return Sketch::Describe() + " coreset=" + std::to_string(coreset_.cap()) +
           " block=" + std::to_string(cfg_.block);
  }

 protected:
  void Evict(const float* k, const float* v, float* ws) override {
    if (coreset_.cap() < 2) return;  // no room for a coreset: like window
    if (coreset_.full()) coreset_.Compact(Kernel(), nullptr, ws);
    coreset_.Insert(k, v, 0);
  }

  void AttendCompressed(const float* qp, size_t G, float* m, float* z, float* N,
                        float*) override {
    if (coreset_.count() == 0) {
      for (size_t g = 0; g < G; ++g) {
        m[g] = -std::numeric_limits<float>::infinity();
        z[g] = 0.0f;
      }
      return;
    }
    const size_t n = coreset_.count();
    AttendGroup(coreset_.rows().KView(0, n), coreset_.rows().VView(0, n),
                coreset_.logw(), qp, G, cfg_.scale, m, z, N);
  }
  size_t CompressedRetained() const override { return coreset_.count(); }

 private:
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
};

}  // namespace

size_t BalanceWorkspaceFloats(const SketchConfig& c) {
  return Coreset::WorkspaceFloats(c.block, PaddedCols(c.dk), PaddedCols(c.dv));
}

std::unique_ptr<Sketch> MakeBalance(const SketchConfig& c, Arena& a,
                                    size_t rows) {
  return std::unique_ptr<Sketch>(new BalanceSketch(c, a, rows));
}

}  // namespace kvsketch
