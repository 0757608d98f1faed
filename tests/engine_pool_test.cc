// The item pool: its layout's capacity is exact (the same code sizes and
// carves), and its item operations keep rows and columns together.
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "arch/targets.h"  // PaddedCols
#include "doctest/doctest.h"
#include "engine/budget/arena.h"
#include "engine/sketch/pool.h"
#include "engine/sketch/sketch.h"
#include "kvsketch/error.h"

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

TEST_CASE("every method stays inside the workspace it asks for") {
  // The workspace is followed by guard floats; appends, attends of the
  // whole group, prefills and truncations of every method at several
  // shapes must leave them untouched (the layouts that size the scratch
  // also hand out its pointers).
  const Method methods[] = {Method::kExact,   Method::kWindow, Method::kUniform,
                            Method::kBalance, Method::kTaylor, Method::kHashed,
                            Method::kH2O,     Method::kTova,   Method::kRisk,
                            Method::kBlurry};
  struct Shape {
    size_t d, G, budget_tokens;
    Storage storage;
    float rope;
  };
  const Shape shapes[] = {{8, 2, 40, Storage::kF16, 0.0f},
                          {64, 4, 96, Storage::kQ8, 10000.0f},
                          {24, 1, 64, Storage::kF32, 0.0f}};
  constexpr size_t kGuard = 256;
  const float kCanary = -12345.678f;
  for (const Shape& sh : shapes) {
    for (Method m : methods) {
      const std::string method = MethodName(m);
      CAPTURE(method);
      CAPTURE(sh.d);
      SketchConfig c;
      c.method = m;
      c.dk = c.dv = sh.d;
      c.scale = 1.0f / std::sqrt(float(sh.d));
      c.max_group = sh.G;
      c.storage_k = c.storage_v = sh.storage;
      c.rope_theta = sh.rope;
      c.block = 16;
      const size_t n = 300;
      c.budget_bytes = BudgetBytesForTokens(
          m == Method::kExact ? n + 40 : sh.budget_tokens, sh.d, sh.d);
      Arena arena(c.budget_bytes);
      std::unique_ptr<Sketch> sk = Sketch::Create(c, arena);
      const size_t wf = WorkspaceFloats(c);
      std::vector<float> ws(wf + kGuard, kCanary);
      std::mt19937 rng(11);
      std::normal_distribution<float> nd(0.0f, 1.0f);
      std::vector<float> k(n * sh.d), v(n * sh.d), q(n * sh.G * sh.d),
          out(n * sh.G * sh.d);
      for (auto& x : k) x = 2.0f * nd(rng);
      for (auto& x : v) x = nd(rng);
      for (auto& x : q) x = 2.0f * nd(rng);
      // A prefill of 40 tokens, then token by token with attends, then a
      // truncation of what the method can drop, then a second prefill.
      sk->Prefill(q.data(), sh.G * sh.d, k.data(), sh.d, v.data(), sh.d, 40,
                  sh.G, out.data(), sh.G * sh.d, ws.data());
      for (size_t t = 40; t < 260; ++t) {
        sk->Append(k.data() + t * sh.d, v.data() + t * sh.d, ws.data());
        sk->Attend(q.data() + t * sh.G * sh.d, sh.G, out.data(), ws.data());
      }
      const size_t drop = std::min<size_t>(sk->Truncatable(), 5);
      sk->Truncate(sk->tokens() - drop, ws.data());
      sk->Prefill(q.data() + 260 * sh.G * sh.d, sh.G * sh.d,
                  k.data() + 260 * sh.d, sh.d, v.data() + 260 * sh.d, sh.d, 40,
                  sh.G, out.data(), sh.G * sh.d, ws.data());
      size_t touched = 0;
      for (size_t i = wf; i < wf + kGuard; ++i) touched += ws[i] != kCanary;
      CHECK(touched == 0);
      // The scratch was used (the canary test is not vacuous).
      size_t used = 0;
      for (size_t i = 0; i < wf; ++i) used += ws[i] != kCanary;
      CHECK(used > 0);
    }
  }
}

TEST_CASE("attend refuses more queries than the group it was sized for") {
  // h2o, tova and balance keep per-query scores in a scratch sized by
  // max_group: a larger call is an error, not an overrun.
  for (Method m : {Method::kH2O, Method::kTova, Method::kBalance}) {
    SketchConfig c;
    c.method = m;
    c.dk = c.dv = 8;
    c.scale = 0.35f;
    c.max_group = 2;
    c.budget_bytes = BudgetBytesForTokens(64, 8, 8);
    Arena arena(c.budget_bytes);
    std::unique_ptr<Sketch> sk = Sketch::Create(c, arena);
    std::vector<float> ws(WorkspaceFloats(c)), k(8, 0.5f), q(4 * 8, 0.25f),
        out(4 * 8);
    for (int t = 0; t < 100; ++t) sk->Append(k.data(), k.data(), ws.data());
    const std::string method = MethodName(m);
    CAPTURE(method);
    CHECK_NOTHROW(sk->Attend(q.data(), 2, out.data(), ws.data()));
    CHECK_THROWS_WITH_AS(sk->Attend(q.data(), 4, out.data(), ws.data()),
                         doctest::Contains("at most 2 (max_group)"), Error);
  }
}

}  // namespace
}  // namespace kvsketch
