#include "engine/sketch/coreset.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "arch/targets.h"  // PaddedCols
#include "engine/sketch/scratch.h"
#include "hwy/base.h"  // HWY_MIN

namespace kvsketch {

PoolLayout Coreset::Layout(const std::string& name, const SketchConfig& c,
                           size_t tags) {
  PoolLayout l(name, c);
  l.AddColumn("levels", 1);                   // column 0
  l.AddColumn("sequence numbers", 4);         // column 1
  if (tags > 1) l.AddColumn("cell tags", 2);  // column 2
  return l;
}

namespace {
// One compaction: the per-group counts, then the halved block (up to mmax
// items): indices, rows, weights, signs, the kept list, and the halving
// kernel's scratch.
// A renumbering: the items' indices sorted by sequence number.
struct ScratchRenumber {
  uint32_t* idx;  // [cap]
  ScratchRenumber(ScratchCarver& s, size_t cap) : idx(s.Take<uint32_t>(cap)) {}
};
struct CompactScratch {
  uint32_t* counts;  // [tags][kMaxLevels]
  uint32_t* idx;     // [mmax]
  float* K;          // [mmax][ks]
  float* V;          // [mmax][vs]
  float* w;          // [mmax]
  int8_t* eta;       // [mmax]
  uint32_t* kept;    // [mmax]
  float* scratch;    // BalanceScratchFloats
  CompactScratch(ScratchCarver& s, size_t tags, size_t mmax, size_t ks,
                 size_t vs)
      : counts(s.Take<uint32_t>(tags * Coreset::kMaxLevels)),
        idx(s.Take<uint32_t>(mmax)),
        K(s.Take(mmax * ks)),
        V(s.Take(mmax * vs)),
        w(s.Take(mmax)),
        eta(s.Take<int8_t>(mmax)),
        kept(s.Take<uint32_t>(mmax)),
        scratch(s.Take(BalanceScratchFloats(mmax, ks, vs))) {}
};
}  // namespace

size_t Coreset::WorkspaceFloats(size_t block, size_t ks, size_t vs, size_t tags,
                                size_t cap) {
  const size_t renumber = ScratchFloats<ScratchRenumber>(cap);
  const size_t compact = ScratchFloats<CompactScratch>(tags, block, ks, vs);
  return renumber > compact ? renumber : compact;
}

const float* Coreset::LogW(float* dst) const {
  for (size_t i = 0; i < pool_.count(); ++i)
    dst[i] = float(level_[i]) * float(M_LN2);
  return dst;
}

void Coreset::Init(const std::string& name, const SketchConfig& c, Arena& arena,
                   size_t bytes, size_t block, size_t tags,
                   uint64_t first_seq) {
  SetFirstSeq(first_seq);
  tags_ = tags < 1 ? 1 : tags;
  block_ = block < 2 ? 2 : block;
  const PoolLayout layout = Layout(name, c, tags_);
  // No room: cap 0 and null columns (the caller never inserts).
  pool_ = ItemPool(layout, arena, layout.Capacity(bytes));
  level_ = pool_.Column<uint8_t>(0);
  seq_ = pool_.Column<uint32_t>(1);
  if (tags_ > 1) tag_ = pool_.Column<uint16_t>(2);
}

void Coreset::Save(StateWriter& w) const {
  pool_.Save(w);
  w.Put<uint64_t>(next_seq_);
  w.Put<uint64_t>(compactions_);
}

void Coreset::Load(StateReader& r) {
  pool_.Load(r, "coreset");
  next_seq_ = r.GetAtMost<uint64_t>(UINT32_MAX, "coreset sequence counter");
  compactions_ = r.Get<uint64_t>();
}

void Coreset::Check(const StagedState& st, uint64_t tokens, float limit,
                    size_t used_tags) const {
  if (pool_.count() > tokens)
    InvalidState("coreset count (more items than tokens)");
  if (next_seq_ == 0 || (pool_.count() && next_seq_ <= pool_.count()))
    InvalidState("coreset sequence counter");
  pool_.CheckRows(st, limit, "coreset");
  for (size_t i = 0; i < pool_.count(); ++i) {
    if (st.At(level_, i) >= kMaxLevels)
      InvalidState("coreset level [" + std::to_string(i) + "]");
    if (tag_ && st.At(tag_, i) >= used_tags)
      InvalidState("coreset cell tag [" + std::to_string(i) + "]");
    const uint32_t s = st.At(seq_, i);
    if (s == 0 || s >= next_seq_)
      InvalidState("coreset sequence number [" + std::to_string(i) + "]");
  }
}

void Coreset::SetFirstSeq(uint64_t first) {
  next_seq_ = first < 1 ? 1 : (first > UINT32_MAX ? UINT32_MAX : first);
}

// Items get 1..count in their current order; the tracked boundary maps to
// the number of items at or below it. O(count log count) in the scratch
// (no allocation), once per ~4e9 items.
void Coreset::Renumber(float* ws) {
  if (boundary_) {
    uint32_t below = 0;
    for (size_t i = 0; i < pool_.count(); ++i) below += seq_[i] <= *boundary_;
    *boundary_ = below;
  }
  ScratchCarver carver(ws);
  uint32_t* idx = ScratchRenumber(carver, pool_.count()).idx;
  for (size_t i = 0; i < pool_.count(); ++i) idx[i] = uint32_t(i);
  std::sort(idx, idx + pool_.count(),
            [&](uint32_t a, uint32_t b) { return seq_[a] < seq_[b]; });
  for (size_t r = 0; r < pool_.count(); ++r) seq_[idx[r]] = uint32_t(r + 1);
  next_seq_ = pool_.count() + 1;
}

uint32_t Coreset::NextSeq(float* ws) {
  if (next_seq_ >= UINT32_MAX) Renumber(ws);
  return uint32_t(next_seq_++);
}

void Coreset::Insert(const float* k, const float* v, uint16_t tag, float* ws) {
  const uint32_t s = NextSeq(ws);
  const size_t i = pool_.Push();
  pool_.rows().Put(i, k, v);
  level_[i] = 0;
  if (tag_) tag_[i] = tag;
  seq_[i] = s;
}

void Coreset::ReplaceOldest(const float* k, const float* v, uint16_t tag,
                            float* ws) {
  size_t oldest = 0;
  for (size_t i = 1; i < pool_.count(); ++i) {
    if (seq_[i] < seq_[oldest]) oldest = i;
  }
  pool_.rows().Put(oldest, k, v);
  level_[oldest] = 0;
  if (tag_) tag_[oldest] = tag;
  seq_[oldest] = NextSeq(ws);
}

bool Coreset::Compact(const CompactKernel& kern, const float* centres,
                      float* ws, size_t protect) {
  // Items with seq > newest_allowed are protected (the recent window).
  const uint32_t newest_allowed =
      protect >= last_seq() ? 0 : uint32_t(last_seq() - protect);
  auto allowed = [&](size_t i) { return seq_[i] <= newest_allowed; };
  size_t n_allowed = 0;
  for (size_t i = 0; i < pool_.count(); ++i) n_allowed += allowed(i);
  if (n_allowed < 2) return false;
  // Cheapest group: least 2^level / (items halved).
  const size_t mmax = HWY_MIN(block_, pool_.rows().cap);
  ScratchCarver carver(ws);
  const CompactScratch s(carver, tags_, mmax, pool_.rows().ks, pool_.rows().vs);
  uint32_t* counts = s.counts;
  std::memset(counts, 0, tags_ * kMaxLevels * sizeof(uint32_t));
  for (size_t i = 0; i < pool_.count(); ++i) {
    if (allowed(i)) ++counts[tag(i) * kMaxLevels + level_[i]];
  }
  int best_level = -1;
  uint16_t best_tag = 0;
  double best_cost = 0;
  for (size_t t = 0; t < tags_; ++t) {
    for (int l = 0; l < kMaxLevels; ++l) {
      const size_t m = counts[t * kMaxLevels + l];
      if (m < 2) continue;
      const double cost = std::ldexp(1.0, l) / double(HWY_MIN(m, mmax));
      if (best_level < 0 || cost < best_cost) {
        best_level = l;
        best_tag = uint16_t(t);
        best_cost = cost;
      }
    }
  }
  const bool mixed = best_level < 0;  // every group is a single item
  const size_t ks = pool_.rows().ks, vs = pool_.rows().vs;
  size_t m = 0;
  for (size_t i = 0; i < pool_.count() && m < mmax; ++i) {
    if (!allowed(i)) continue;
    if (mixed || (level_[i] == best_level && tag(i) == best_tag)) {
      s.idx[m++] = uint32_t(i);
    }
  }
  double vnorm2 = 0;
  for (size_t j = 0; j < m; ++j) {
    pool_.rows().Get(s.idx[j], s.K + j * ks, s.V + j * vs);
    if (centres) {
      const float* c = centres + size_t(tag(s.idx[j])) * ks;
      for (size_t x = 0; x < pool_.rows().dk; ++x) s.K[j * ks + x] -= c[x];
    }
    s.w[j] = mixed ? std::ldexp(1.0f, level_[s.idx[j]]) : 1.0f;
    for (size_t x = 0; x < pool_.rows().dv; ++x) {
      vnorm2 += double(s.V[j * vs + x]) * s.V[j * vs + x];
    }
  }
  BalanceParams p;
  p.scale = kern.scale;
  p.tau = kern.tau;
  p.kind = kern.kind;
  p.taylor_degree = kern.degree;
  p.value_offset = float(kern.value_offset * vnorm2 / double(m));
  p.gamma = kern.gamma;
  p.centre_keys = centres ? false : kern.centre_keys;
  p.seed = kern.seed;
  p.stream = kern.stream * 0x9E3779B97F4A7C15ull + compactions_++;
  const size_t n_kept =
      Balance(s.K, ks, pool_.rows().dk, s.V, vs, pool_.rows().dv,
              mixed ? s.w : nullptr, m, p, s.scratch, s.eta, s.kept);
  // Kept items double their weight; the other candidates leave the pool.
  for (size_t j = 0; j < m; ++j) level_[s.idx[j]] |= 0x80;
  for (size_t j = 0; j < n_kept; ++j) {
    const uint32_t i = s.idx[s.kept[j]];
    level_[i] = uint8_t(HWY_MIN((level_[i] & 0x7F) + 1, kMaxLevels - 1));
  }
  pool_.set_count(pool_.Sweep(0, pool_.count(),
                              [&](size_t i) { return level_[i] & 0x80; }));
  return true;
}

}  // namespace kvsketch
