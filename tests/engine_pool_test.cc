// The item pool: its layout's capacity is exact (the same code sizes and
// carves), and its item operations keep rows and columns together.
#include <cstring>
#include <string>
#include <vector>

#include "arch/targets.h"  // PaddedCols
#include "doctest/doctest.h"
#include "engine/budget/arena.h"
#include "engine/sketch/pool.h"
#include "engine/sketch/sketch.h"

namespace kvsketch {
namespace {

SketchConfig Rows(size_t dk, size_t dv, Storage tk, Storage tv) {
  SketchConfig c;
  c.dk = dk;
  c.dv = dv;
  c.storage_k = tk;
  c.storage_v = tv;
  return c;
}

TEST_CASE(
    "pool layout: the capacity is the most items whose every carve fits") {
  struct Shape {
    size_t dk, dv;
    Storage tk, tv;
    size_t cols[3];  // bytes per item of up to three columns (0: none)
    size_t extra;    // bytes of one fixed extra (0: none)
  };
  const Shape shapes[] = {
      {8, 8, Storage::kF16, Storage::kF16, {0, 0, 0}, 0},
      {8, 8, Storage::kF16, Storage::kF16, {1, 4, 2}, 0},   // coreset, cells
      {8, 8, Storage::kF16, Storage::kF16, {2, 0, 0}, 96},  // risk + probes
      {64, 64, Storage::kQ8, Storage::kQ4, {4, 4, 0}, 0},   // 68 + 40 bytes
      {100, 36, Storage::kF32, Storage::kBF16, {1, 0, 0}, 7},
      {128, 128, Storage::kQ4A, Storage::kQ8, {2, 0, 0}, 1000},
  };
  for (const Shape& sh : shapes) {
    PoolLayout l("pool", Rows(sh.dk, sh.dv, sh.tk, sh.tv));
    size_t n_arrays = 2;
    for (size_t b : sh.cols)
      if (b) l.AddColumn("col" + std::to_string(n_arrays), b), ++n_arrays;
    if (sh.extra) l.AddExtra("extra", sh.extra), ++n_arrays;
    CAPTURE(sh.dk);
    CAPTURE(sh.extra);
    CHECK(l.Bytes(0) == 0);
    for (size_t bytes = 0; bytes < 40000; bytes += 1 + bytes / 7) {
      CAPTURE(bytes);
      const size_t cap = l.Capacity(bytes);
      CHECK(l.Bytes(cap) <= bytes);
      CHECK(l.Bytes(cap + 1) > bytes);  // the most: one more does not fit
      // Carving takes exactly Bytes(cap), and the pool reports it.
      Arena a(bytes + 64);
      const size_t before = a.used();
      ItemPool p(l, a, cap);
      CHECK(a.used() - before == l.Bytes(cap));
      CHECK(p.cap() == cap);
      if (cap) CHECK(a.components().size() == n_arrays);
    }
  }
}

TEST_CASE("item pool: moves, erases, gaps and sweeps carry every column") {
  const SketchConfig c = Rows(8, 8, Storage::kF32, Storage::kF16);
  PoolLayout l("pool", c);
  const size_t kSeq = l.AddColumn("seq", 4);
  const size_t kTag = l.AddColumn("tag", 1);
  const size_t cap = 40;
  Arena a(l.Bytes(cap) + Arena::kAlign);
  ItemPool p(l, a, cap);
  REQUIRE(p.cap() == cap);
  const size_t ks = PaddedCols(8), vs = PaddedCols(8);
  std::vector<float> k(ks, 0.0f), v(vs, 0.0f);
  // Item id: key (id, -id + 1, ...), value (id, id + 1, ...) (exact in
  // f16 below 2048), seq id, tag id % 7.
  auto put = [&](size_t slot, uint32_t id) {
    for (size_t x = 0; x < 8; ++x) {
      k[x] = float(id) * (x % 2 ? -1.0f : 1.0f) + float(x);
      v[x] = float(id) + float(x);
    }
    p.rows().Put(slot, k.data(), v.data());
    p.Column<uint32_t>(kSeq)[slot] = id;
    p.Column<uint8_t>(kTag)[slot] = uint8_t(id % 7);
  };
  auto check = [&](const std::vector<uint32_t>& ids) {
    std::vector<float> gk(ks), gv(vs);
    for (size_t i = 0; i < ids.size(); ++i) {
      CAPTURE(i);
      const uint32_t id = ids[i];
      REQUIRE(p.Column<uint32_t>(kSeq)[i] == id);
      CHECK(p.Column<uint8_t>(kTag)[i] == id % 7);
      p.rows().Get(i, gk.data(), gv.data());
      for (size_t x = 0; x < 8; ++x) {
        CHECK(gk[x] == float(id) * (x % 2 ? -1.0f : 1.0f) + float(x));
        CHECK(gv[x] == float(id) + float(x));
      }
    }
  };
  std::vector<uint32_t> ids;
  for (uint32_t i = 0; i < 30; ++i) put(i, 100 + i), ids.push_back(100 + i);
  check(ids);
  // Erase [5, 9): the rest shift down in order.
  p.Erase(5, 9, ids.size());
  ids.erase(ids.begin() + 5, ids.begin() + 9);
  check(ids);
  // Open a gap of 3 at 2 and fill it.
  p.Open(2, 3, ids.size());
  for (uint32_t t = 0; t < 3; ++t) put(2 + t, 500 + t);
  ids.insert(ids.begin() + 2, {500, 501, 502});
  check(ids);
  // Sweep the items with odd ids after the first 4 (the predicate reads
  // the item's own column before it moves).
  const size_t n = p.Sweep(4, ids.size(), [&](size_t i) {
    return p.Column<uint32_t>(kSeq)[i] % 2 == 1;
  });
  std::vector<uint32_t> kept(ids.begin(), ids.begin() + 4);
  for (size_t i = 4; i < ids.size(); ++i)
    if (ids[i] % 2 == 0) kept.push_back(ids[i]);
  CHECK(n == kept.size());
  check(kept);
  // Single moves.
  p.Move(0, n - 1);
  kept[0] = kept[n - 1];
  check(kept);
}

}  // namespace
}  // namespace kvsketch
