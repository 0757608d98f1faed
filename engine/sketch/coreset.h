// A pool of weighted items (rows + level + tag) compacted by
// kernel halving: the shared compressed region of balance, taylor, hashed.
//
// Compaction policy: items are grouped by (tag, level); a group of m items of
// weight 2^l costs ~2^l of additive error when halved (independent of m up to
// logs, the discrepancy guarantee) and frees m/2 slots, so the group with the
// least 2^l / m is halved (at most `block` of its oldest items). This keeps
// working forever under a fixed budget, KLL-style: young, large levels are
// halved, old coarse levels are left alone.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "arch/balance.h"  // BalanceParams, KernelKind
#include "engine/budget/arena.h"
#include "engine/io/serial.h"
#include "engine/sketch/pool.h"
#include "engine/sketch/rows.h"
#include "engine/sketch/sketch.h"  // StagedState

namespace kvsketch {

struct CompactKernel {
  float scale = 1.0f;
  float tau = 1.0f;
  KernelKind kind = KernelKind::kExp;
  int degree = 1;
  float gamma = 4.0f;
  float value_offset = 1.0f;  // c = value_offset * mean |v|^2
  bool centre_keys = true;    // block mean (ignored when centres are given)
  uint64_t seed = 0, stream = 0;
};

class Coreset {
 public:
  static constexpr int kMaxLevels = 32;  // weights up to 2^31
  // An item: its rows, level (its weight is 2^level), sequence number, and
  // a tag when there are several groups (`tags` cells; 1 for a plain
  // coreset). The per-group counts of a compaction live in the scratch, not
  // in the state.
  static PoolLayout Layout(const std::string& name, const SketchConfig& c,
                           size_t tags = 1);
  // Scratch of Insert / ReplaceOldest (a renumbering sorts `cap` indices)
  // and of Compact (its CompactScratch) for pools of at most `cap` items.
  static size_t WorkspaceFloats(size_t block, size_t ks, size_t vs, size_t tags,
                                size_t cap);

  // Carves the most items of Layout(name, c, tags) that fit in `bytes` of
  // the arena; tags are in [0, tags).
  void Init(const std::string& name, const SketchConfig& c, Arena& arena,
            size_t bytes, size_t block, size_t tags = 1,
            uint64_t first_seq = 1);

  size_t count() const { return pool_.count(); }
  size_t cap() const { return pool_.rows().cap; }
  bool full() const { return pool_.full(); }
  const RowStore& rows() const { return pool_.rows(); }
  // Log-weights level * ln 2 of the items, written to dst [count()].
  const float* LogW(float* dst) const;
  uint16_t tag(size_t i) const { return tag_ ? tag_[i] : 0; }
  // Insertion number of each item (1, 2, ...): the newest have the largest.
  // Stored in 32 bits per item; before they would wrap, the items are
  // renumbered 1..count in the same order (and every tracked boundary with
  // them), so the order survives any stream length.
  const uint32_t* seq() const { return seq_; }
  uint32_t last_seq() const { return uint32_t(next_seq_ - 1); }
  // A sequence-number boundary kept by the owner (taylor's folded_): items
  // with seq <= *b keep that property through a renumbering.
  void TrackBoundary(uint32_t* b) { boundary_ = b; }
  // Starts the numbering at `first` (tests; default 1).
  void SetFirstSeq(uint64_t first);

  void Save(StateWriter& w) const;
  void Load(StateReader& r);
  // After Load: levels, tags and sequence numbers of the staged items.
  void Check(const StagedState& st, uint64_t tokens, float limit,
             size_t used_tags) const;

  // Appends an item (requires !full()).
  // `ws`: scratch of at least cap() floats (a renumbering sorts in it).
  void Insert(const float* k, const float* v, uint16_t tag, float* ws);
  // Overwrites the oldest item with a new one (window behaviour when nothing
  // may be compacted); requires full().
  void ReplaceOldest(const float* k, const float* v, uint16_t tag, float* ws);
  // Halves one (tag, level) group among the items that are not among the
  // `protect` newest. `centres` (per tag, [tags][ks]) recentres keys before
  // the kernel (taylor/hashed residual kernels), else the kernel's own
  // block-mean centring applies. Returns false (and changes nothing) when
  // fewer than two items may be compacted; otherwise frees at least one slot.
  bool Compact(const CompactKernel& kern, const float* centres, float* ws,
               size_t protect = 0);

 private:
  ItemPool pool_;
  uint8_t* level_ = nullptr;
  uint16_t* tag_ = nullptr;
  uint32_t* seq_ = nullptr;
  uint32_t* boundary_ = nullptr;
  uint64_t next_seq_ = 1;  // < 2^32 (renumbered before)
  void Renumber(float* ws);
  uint32_t NextSeq(float* ws);
  size_t block_ = 0, tags_ = 1;
  uint64_t compactions_ = 0;
};

}  // namespace kvsketch
