#include "engine/sketch/pool.h"

#include <cstring>

#include "arch/targets.h"  // PaddedCols
#include "engine/sketch/sketch.h"
#include "kvsketch/error.h"

namespace kvsketch {

PoolLayout::PoolLayout(const std::string& name, const SketchConfig& c)
    : name_(name) {
  rows_.dk = c.dk;
  rows_.dv = c.dv;
  rows_.ks = PaddedCols(c.dk);
  rows_.vs = PaddedCols(c.dv);
  rows_.kb = StorageRowBytes(c.storage_k, c.dk);
  rows_.vb = StorageRowBytes(c.storage_v, c.dv);
  rows_.tk = c.storage_k;
  rows_.tv = c.storage_v;
  rows_.krot = RotatedSide(c.storage_k, c.dk, c.rotate);
  rows_.vrot = RotatedSide(c.storage_v, c.dv, c.rotate);
}

size_t PoolLayout::AddColumn(const std::string& name, size_t bytes) {
  if (n_cols_ == kMaxColumns) throw Error("pool layout: too many columns");
  cols_[n_cols_] = Part{name, bytes};
  return n_cols_++;
}

size_t PoolLayout::AddExtra(const std::string& name, size_t bytes) {
  if (n_extras_ == kMaxExtras) throw Error("pool layout: too many extras");
  extras_[n_extras_] = Part{name, bytes};
  return n_extras_++;
}

size_t PoolLayout::ItemBytes() const {
  size_t b = rows_.kb + rows_.vb;
  for (size_t j = 0; j < n_cols_; ++j) b += cols_[j].bytes;
  return b;
}

size_t PoolLayout::Bytes(size_t cap) const {
  if (cap == 0) return 0;
  size_t b = Arena::Aligned(cap * rows_.kb) + Arena::Aligned(cap * rows_.vb);
  for (size_t j = 0; j < n_cols_; ++j)
    b += Arena::Aligned(cap * cols_[j].bytes);
  for (size_t j = 0; j < n_extras_; ++j) b += Arena::Aligned(extras_[j].bytes);
  return b;
}

size_t PoolLayout::Capacity(size_t bytes) const {
  // Bytes(cap) >= cap * ItemBytes() + extras, so this is an upper bound;
  // alignment costs less than 16 bytes per array, so few steps down.
  size_t extras = 0;
  for (size_t j = 0; j < n_extras_; ++j)
    extras += Arena::Aligned(extras_[j].bytes);
  if (bytes <= extras) return 0;
  size_t cap = (bytes - extras) / ItemBytes();
  while (cap > 0 && Bytes(cap) > bytes) --cap;
  return cap;
}

ItemPool::ItemPool(const PoolLayout& layout, Arena& arena, size_t cap)
    : rows_(layout.rows_), n_cols_(layout.n_cols_) {
  rows_.cap = cap;
  for (size_t j = 0; j < n_cols_; ++j) col_bytes_[j] = layout.cols_[j].bytes;
  if (cap == 0) return;
  const std::string& name = layout.name_;
  rows_.k = arena.CarveArray<uint8_t>(name + " keys", cap * rows_.kb);
  rows_.v = arena.CarveArray<uint8_t>(name + " values", cap * rows_.vb);
  for (size_t j = 0; j < n_cols_; ++j) {
    cols_[j] = arena.CarveArray<uint8_t>(name + " " + layout.cols_[j].name,
                                         cap * col_bytes_[j]);
  }
  for (size_t j = 0; j < layout.n_extras_; ++j) {
    extras_[j] = arena.CarveArray<uint8_t>(layout.extras_[j].name,
                                           layout.extras_[j].bytes);
  }
}

void ItemPool::Save(StateWriter& w) const { w.Put<uint64_t>(count_); }

void ItemPool::Load(StateReader& r, const std::string& what) {
  count_ = r.GetAtMost<uint64_t>(rows_.cap, (what + " count").c_str());
}

void ItemPool::CheckRows(const StagedState& st, float limit,
                         const std::string& what) const {
  st.CheckRows(rows_, count_, limit, what);
}

void ItemPool::Move(size_t dst, size_t src) const {
  if (dst == src) return;
  rows_.Move(dst, src);
  for (size_t j = 0; j < n_cols_; ++j) {
    std::memcpy(cols_[j] + dst * col_bytes_[j], cols_[j] + src * col_bytes_[j],
                col_bytes_[j]);
  }
}

void ItemPool::Shift(size_t dst, size_t src, size_t count) const {
  if (dst == src || count == 0) return;
  std::memmove(rows_.k + dst * rows_.kb, rows_.k + src * rows_.kb,
               count * rows_.kb);
  std::memmove(rows_.v + dst * rows_.vb, rows_.v + src * rows_.vb,
               count * rows_.vb);
  for (size_t j = 0; j < n_cols_; ++j) {
    const size_t b = col_bytes_[j];
    std::memmove(cols_[j] + dst * b, cols_[j] + src * b, count * b);
  }
}

void ItemPool::Erase(size_t begin, size_t end, size_t n) const {
  if (end < n) Shift(begin, end, n - end);
}

void ItemPool::Open(size_t at, size_t gap, size_t n) const {
  if (at < n) Shift(at + gap, at, n - at);
}

}  // namespace kvsketch
