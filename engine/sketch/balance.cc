// `balance`: sinks + window + a pool of weighted items compacted by the
// kernelised self-balancing walk (BalanceKV's halving; merge-and-reduce in
// the stream). Each item carries a level l (weight 2^l, stored as log-weight).
//
// When the pool is full, one level is compacted: the level whose halving
// costs the least error per freed slot. Halving m items of weight 2^l costs
// an additive error ~ 2^l (independent of m, up to logs) and frees m/2 slots,
// so the cost per slot is 2^l / m: small old levels are left alone while a
// large young level is halved. At most `block` items are halved at once (the
// oldest of the level) to bound the Gram scratch. This keeps working forever
// under a fixed budget: levels grow upward, KLL-style.
#include "arch/balance.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "arch/attend.h"
#include "arch/random.h"
#include "arch/targets.h"  // PaddedCols
#include "engine/sketch/methods.h"
#include "hwy/base.h"  // HWY_MIN

namespace kvsketch {
namespace {

constexpr int kMaxLevels = 64;

class BalanceSketch final : public Sketch {
 public:
  BalanceSketch(const SketchConfig& c, Arena& a, size_t rows)
      : Sketch(c, a, DefaultWindow(c, rows)) {
    // Per item: the row, a log-weight (float) and a level (uint8).
    const size_t per_item = RowBytes(c) + sizeof(float) + 1;
    const size_t slack = 4 * Arena::kAlign;
    const size_t cap =
        RemainingBytes() > slack ? (RemainingBytes() - slack) / per_item : 0;
    pool_ = CarveRows("coreset", cap);
    logw_ = a.CarveArray<float>("coreset log-weights", cap ? cap : 1);
    level_ = a.CarveArray<uint8_t>("coreset levels", cap ? cap : 1);
  }

  std::string Describe() const override {
    return Sketch::Describe() + " coreset=" + std::to_string(pool_.cap) +
           " block=" + std::to_string(cfg_.block);
  }

 protected:
  void Evict(const float* k, const float* v, float* ws) override {
    if (pool_.cap < 2) return;  // no room for a coreset: behaves as window
    if (count_ == pool_.cap) Compact(ws);
    pool_.Put(count_, k, v);
    logw_[count_] = 0.0f;
    level_[count_] = 0;
    ++count_;
  }

  void AttendCompressed(const float* qp, size_t G, float* m, float* z, float* N,
                        float*) override {
    if (count_ == 0) {
      for (size_t g = 0; g < G; ++g) {
        m[g] = -std::numeric_limits<float>::infinity();
        z[g] = 0.0f;
      }
      return;
    }
    AttendGroup(pool_.KView(0, count_), pool_.VView(0, count_), logw_, qp, G,
                cfg_.scale, m, z, N);
  }
  size_t CompressedRetained() const override { return count_; }

 private:
  // Halves (part of) one level; frees at least one slot.
  void Compact(float* ws) {
    size_t per_level[kMaxLevels] = {0};
    for (size_t i = 0; i < count_; ++i) ++per_level[level_[i]];
    int best = -1;
    double best_cost = 0;
    for (int l = 0; l < kMaxLevels; ++l) {
      if (per_level[l] < 2) continue;
      const double m = double(HWY_MIN(per_level[l], MaxBlock()));
      const double cost = std::ldexp(1.0, l) / m;
      if (best < 0 || cost < best_cost) {
        best = l;
        best_cost = cost;
      }
    }
    // Every level holds one item (a tiny pool): halve the lowest levels
    // together, weighting items by 2^l.
    const bool mixed = best < 0;
    const size_t ks = pool_.ks, vs = pool_.vs;
    const size_t mmax = MaxBlock();
    uint32_t* idx = reinterpret_cast<uint32_t*>(ws);
    float* K = ws + mmax;
    float* V = K + mmax * ks;
    float* w = V + mmax * vs;
    int8_t* eta = reinterpret_cast<int8_t*>(w + mmax);
    uint32_t* kept = reinterpret_cast<uint32_t*>(w + 2 * mmax);
    float* scratch = w + 3 * mmax;
    size_t m = 0;
    for (size_t i = 0; i < count_ && m < mmax; ++i) {
      if (mixed || level_[i] == best) idx[m++] = uint32_t(i);
    }
    double vnorm2 = 0;
    for (size_t j = 0; j < m; ++j) {
      pool_.Get(idx[j], K + j * ks, V + j * vs);
      w[j] = mixed ? std::exp(logw_[idx[j]]) : 1.0f;
      for (size_t c = 0; c < cfg_.dv; ++c)
        vnorm2 += double(V[j * vs + c]) * V[j * vs + c];
    }
    BalanceParams p;
    p.scale = cfg_.scale;
    p.tau = cfg_.tau;
    if (cfg_.tau_from_queries && queries_ > 0 && key_norm_sum_ > 0) {
      // Rescaling corollary: balance exp(s * (|q|/|k|) <k, k'>) so the
      // kernel's diagonal matches what queries see.
      p.tau *= float((query_norm_sum_ / double(queries_)) /
                     (key_norm_sum_ / double(tokens_)));
    }
    p.kind = KernelKind::kExp;
    p.value_offset = float(cfg_.value_offset * vnorm2 / double(m));
    p.gamma = cfg_.gamma;
    p.centre_keys = cfg_.centre_keys;
    p.seed = cfg_.seed;
    p.stream = cfg_.stream * 0x9E3779B97F4A7C15ull + compactions_++;
    const size_t n_kept =
        kvsketch::Balance(K, ks, cfg_.dk, V, vs, cfg_.dv, mixed ? w : nullptr,
                          m, p, scratch, eta, kept);
    // Kept items double their weight; the others leave the pool.
    for (size_t j = 0; j < m; ++j) level_[idx[j]] |= 0x80;  // mark candidate
    for (size_t j = 0; j < n_kept; ++j) {
      const uint32_t i = idx[kept[j]];
      level_[i] &= 0x7F;
      logw_[i] += float(M_LN2);
      level_[i] = uint8_t(HWY_MIN(level_[i] + 1, kMaxLevels - 1));
    }
    size_t out = 0;
    for (size_t i = 0; i < count_; ++i) {
      if (level_[i] & 0x80) continue;  // dropped
      pool_.Move(out, i);
      logw_[out] = logw_[i];
      level_[out] = level_[i];
      ++out;
    }
    count_ = out;
  }

  size_t MaxBlock() const { return HWY_MIN(cfg_.block, pool_.cap); }

  Rows pool_;
  float* logw_ = nullptr;
  uint8_t* level_ = nullptr;
  size_t count_ = 0;
  uint64_t compactions_ = 0;
};

}  // namespace

size_t BalanceWorkspaceFloats(const SketchConfig& c) {
  const size_t ks = PaddedCols(c.dk), vs = PaddedCols(c.dv), m = c.block;
  return m * (4 + ks + vs) + BalanceScratchFloats(m, ks, vs) + 64;
}

std::unique_ptr<Sketch> MakeBalance(const SketchConfig& c, Arena& a,
                                    size_t rows) {
  return std::unique_ptr<Sketch>(new BalanceSketch(c, a, rows));
}

}  // namespace kvsketch
