// The compressibility diagnostic and the adaptive split.
#include "engine/cli/analyze.h"

#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "doctest/doctest.h"
#include "engine/cli/oracle.h"
#include "engine/io/trace.h"
#include "kvsketch/error.h"

namespace kvsketch {
namespace {

// One head where queries attend (almost) only to r early tokens with
// distinct keys and values: the response of the old region has rank r, so r
// pivots explain it, while the attention spreads over the r tokens.
Trace LowRankHead(size_t r, size_t seq, uint32_t seed) {
  const size_t d = 8;
  Trace t;
  t.layers = 1;
  t.n_heads = 1;
  t.n_kv_heads = 1;
  t.seq = seq;
  t.dk = t.dv = d;
  t.scale = 1.0f;
  t.q.assign(1, std::vector<float>(seq * d));
  t.k.assign(1, std::vector<float>(seq * d));
  t.v.assign(1, std::vector<float>(seq * d));
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  for (size_t j = 0; j < seq; ++j) {
    const bool special = j >= 5 && j < 5 + r;
    for (size_t x = 0; x < d; ++x) {
      // Specials: keys 3 * (e_0 + 0.3 g) with a distinct perturbation;
      // others: keys -3 e_0 (scores ~ -q_0 * 3, vanishing weight).
      t.k[0][j * d + x] = special ? (x == 0 ? 3.0f : 0.0f) + 0.4f * g(rng)
                                  : (x == 0 ? -3.0f : 0.0f);
      t.v[0][j * d + x] = g(rng);
      t.q[0][j * d + x] = x == 0 ? 4.0f : 0.5f * g(rng);
    }
  }
  (void)u;
  return t;
}

TEST_CASE("oracle: clairvoyant eviction keeps what the future asks for") {
  // Every query attends to the 3 early specials: an evictor that knows the
  // future keeps them (error ~0), sinks + window lose them.
  const Trace t = LowRankHead(3, 300, 7);
  const bench::Unit u{&t, 0, 0};
  const auto pos = bench::EvalPositions(t.seq, 16, 512);
  const OracleErrors e = OracleUnit(u, 12, 4, pos);
  REQUIRE(e.count == pos.size());
  CHECK(e.clairvoyant / double(e.count) < 1e-4);
  CHECK(e.window / double(e.count) > 0.3);
  // With room for everything both are exact.
  const OracleErrors all = OracleUnit(u, t.seq, 4, pos);
  CHECK(all.clairvoyant / double(all.count) < 1e-9);
  CHECK(all.window / double(all.count) < 1e-9);
}

TEST_CASE("bench: keys beyond the f16 range are a clear error under f16") {
  std::vector<Trace> t{LowRankHead(2, 50, 3)};
  const auto rows = [](Storage k, Storage v) {
    SketchConfig c;
    c.storage_k = k;
    c.storage_v = v;
    return c;
  };
  CHECK_NOTHROW(
      bench::CheckStorageRange(t, rows(Storage::kF16, Storage::kF16)));
  t[0].v[0][17] = 1e5f;
  CHECK_THROWS_WITH_AS(
      bench::CheckStorageRange(t, rows(Storage::kF16, Storage::kF16)),
      doctest::Contains("f16 storage range"), Error);
  // Quantized values have f16 scales: the same range.
  CHECK_THROWS_WITH_AS(
      bench::CheckStorageRange(t, rows(Storage::kQ8, Storage::kQ8)),
      doctest::Contains("q8 storage range"), Error);
  // Only the values are out of range: f16 keys with f32 values is not a
  // supported pair, but f32 for both is.
  CHECK_THROWS_WITH_AS(
      bench::CheckStorageRange(t, rows(Storage::kF16, Storage::kF32)),
      doctest::Contains("not supported"), Error);
  CHECK_NOTHROW(
      bench::CheckStorageRange(t, rows(Storage::kF32, Storage::kF32)));
}

TEST_CASE("diagnostic: a rank-r response is explained by r pivots") {
  const size_t sinks = 4;
  for (size_t r : {2u, 3u, 6u}) {
    const Trace t = LowRankHead(r, 400, uint32_t(r));
    const bench::Unit u{&t, 0, 0};
    const size_t budget = 24;  // window (24 - 4) / 2 = 10
    const HeadDiagnostic d = Diagnose(u, {budget}, sinks, 64);
    const size_t fixed = sinks + d.window[0];
    INFO("r=" << r);
    CHECK(d.Predicted(0, fixed) > 0.05);  // nothing kept beyond the window
    // r pivots leave (numerically) nothing: within 2e-3 relative.
    CHECK(d.Predicted(0, fixed + r) < 2e-3);
    // Fewer pivots than the rank leave something.
    CHECK(d.Predicted(0, fixed + r - 1) > 10 * d.Predicted(0, fixed + r));
    // The prediction never grows with more tokens.
    for (size_t s = fixed; s < fixed + 20; ++s)
      CHECK(d.Predicted(0, s + 1) <= d.Predicted(0, s) + 1e-12);
    CHECK(d.eff_tokens > 1.5);  // attention spread over several tokens
    CHECK(d.outside_mass[0] > 0.1);
  }
}

TEST_CASE("adaptive split keeps the total and favours the harder heads") {
  const Trace easy = LowRankHead(2, 300, 1);
  const Trace hard = LowRankHead(60, 300, 2);
  std::vector<HeadDiagnostic> d;
  for (const Trace* t : {&easy, &hard, &easy, &hard}) {
    d.push_back(Diagnose(bench::Unit{t, 0, 0}, {2 * 8 - 4}, 4, 128));
  }
  const std::vector<size_t> b = AdaptiveSplit(d, 32, 8);
  CHECK(std::accumulate(b.begin(), b.end(), size_t(0)) == 4 * 32);
  for (size_t x : b) CHECK(x >= 8);
  CHECK(b[1] > b[0]);
  CHECK(b[3] > b[2]);
}

}  // namespace
}  // namespace kvsketch
