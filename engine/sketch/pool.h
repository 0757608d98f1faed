// The item pool: rows (keys and values in their storages) plus per-item
// columns, carved from one PoolLayout. The layout computes a pool's bytes
// and capacity with the same code that carves it, so a method's capacity is
// exact (the most items whose every array, alignment included, fits the
// bytes left) and nothing is predicted with slack constants.
//
// Every method's retained items live in ItemPools: the sinks and the recent
// window of Sketch, the coreset of balance / taylor / hashed (levels, tags,
// sequence numbers), the selective pool of h2o / tova / risk (sequence
// numbers and scores, or log-weights; probes as fixed extras), blurry's
// slots (log-masses) and uniform's reservoir. The pool's item operations
// move a row with every column, so a method adding a column touches only
// its layout.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/budget/arena.h"
#include "engine/io/serial.h"
#include "engine/sketch/rows.h"

namespace kvsketch {

struct SketchConfig;
class StagedState;

class PoolLayout {
 public:
  static constexpr size_t kMaxColumns = 4;
  static constexpr size_t kMaxExtras = 4;

  // Rows only: keys and values in the configuration's storages (rotation
  // as configured), padded to the kernels' widths.
  PoolLayout(const std::string& name, const SketchConfig& c);
  // A per-item column of `bytes` bytes (carved in this order after the
  // rows); returns its index for ItemPool::Column.
  size_t AddColumn(const std::string& name, size_t bytes);
  // A fixed array carved after the columns when the pool has items;
  // returns its index for ItemPool::Extra.
  size_t AddExtra(const std::string& name, size_t bytes);

  // Arena bytes `cap` items take (every carve aligned; 0 for cap = 0:
  // an empty pool carves nothing, extras included).
  size_t Bytes(size_t cap) const;
  // The most items with Bytes(cap) <= bytes.
  size_t Capacity(size_t bytes) const;
  // Bytes of one item before alignment (rows and columns).
  size_t ItemBytes() const;
  const RowStore& row_template() const { return rows_; }
  const std::string& name() const { return name_; }

 private:
  friend class ItemPool;
  struct Part {
    std::string name;
    size_t bytes = 0;
  };
  std::string name_;
  RowStore rows_;  // everything but the pointers and cap
  Part cols_[kMaxColumns];
  Part extras_[kMaxExtras];
  size_t n_cols_ = 0, n_extras_ = 0;
};

class ItemPool {
 public:
  ItemPool() = default;
  // Carves `cap` items of `layout` from `arena` (exactly layout.Bytes(cap)
  // bytes; nothing when cap = 0).
  ItemPool(const PoolLayout& layout, Arena& arena, size_t cap);

  size_t cap() const { return rows_.cap; }
  // Items held: [0, count()) are valid.
  size_t count() const { return count_; }
  void set_count(size_t n) { count_ = n; }
  bool full() const { return count_ == rows_.cap; }
  // The next free slot (requires !full()); count() grows by one.
  size_t Push() { return count_++; }

  // The pool's part of a saved state: its count (the rows and columns are
  // arena bytes). Load accepts at most cap() items; Check validates the
  // staged rows of the loaded count (finite, within `limit`, zero padding).
  void Save(StateWriter& w) const;
  void Load(StateReader& r, const std::string& what);
  void CheckRows(const StagedState& st, float limit,
                 const std::string& what) const;
  const RowStore& rows() const { return rows_; }
  template <typename T>
  T* Column(size_t j) const {
    return reinterpret_cast<T*>(cols_[j]);
  }
  template <typename T>
  T* Extra(size_t j) const {
    return reinterpret_cast<T*>(extras_[j]);
  }

  // Item src's row and columns to dst.
  void Move(size_t dst, size_t src) const;
  // Removes items [begin, end) of the first n, shifting the rest down in
  // order.
  void Erase(size_t begin, size_t end, size_t n) const;
  // Opens `gap` items at `at` (items [at, n) shift up by gap; requires
  // n + gap <= cap); the gap's contents are stale.
  void Open(size_t at, size_t gap, size_t n) const;
  // Items [src, src + count) to [dst, dst + count) (ranges may overlap).
  void Shift(size_t dst, size_t src, size_t count) const;
  // Keeps the items of [begin, n) for which drop(i) is false, in order;
  // returns the new count. drop(i) is asked before item i moves (it may
  // read item i's columns).
  template <class Drop>
  size_t Sweep(size_t begin, size_t n, const Drop& drop) const {
    size_t out = begin;
    for (size_t i = begin; i < n; ++i) {
      if (drop(i)) continue;
      Move(out++, i);
    }
    return out;
  }

 private:
  RowStore rows_;
  uint8_t* cols_[PoolLayout::kMaxColumns] = {};
  size_t col_bytes_[PoolLayout::kMaxColumns] = {};
  uint8_t* extras_[PoolLayout::kMaxExtras] = {};
  size_t n_cols_ = 0;
  size_t count_ = 0;
};

}  // namespace kvsketch
