#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "doctest/doctest.h"
#include "engine/io/npy.h"
#include "engine/io/synthetic.h"
#include "engine/io/trace.h"
#include "kvsketch/error.h"

namespace kvsketch {
namespace {

namespace fs = std::filesystem;

std::string NpyBytes(const std::string& header_dict, size_t data_bytes) {
  std::string h = header_dict;
  while ((10 + h.size() + 1) % 64 != 0) h += ' ';
  h += '\n';
  std::string b = "\x93NUMPY\x01";
  b += '\0';
  b += char(h.size() & 0xFF);
  b += char(h.size() >> 8);
  b += h;
  b += std::string(data_bytes, '\0');
  return b;
}

bool ThrowsWith(const std::string& bytes, const std::string& needle) {
  try {
    ParseNpy(bytes, "test.npy");
  } catch (const Error& e) {
    return std::string(e.what()).find(needle) != std::string::npos;
  }
  return false;
}

TEST_CASE("npy round trip and shape") {
  const fs::path dir = fs::temp_directory_path() /
                       ("kvsketch_npy_test_" + std::to_string(getpid()));
  fs::create_directories(dir);
  std::vector<float> x(2 * 3 * 4);
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(i) * 0.5f;
  SaveNpyF32((dir / "a.npy").string(), {2, 3, 4}, x.data());
  const NpyArray a = LoadNpy((dir / "a.npy").string());
  CHECK(a.shape == std::vector<size_t>{2, 3, 4});
  CHECK(a.f32 == x);
  fs::remove_all(dir);
}

TEST_CASE(
    "npy: corrupt inputs are rejected with a message naming the problem") {
  CHECK(ThrowsWith("hello", "bad magic"));
  CHECK(ThrowsWith(
      NpyBytes("{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", 16),
      "dtype"));
  CHECK(ThrowsWith(
      NpyBytes("{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }", 8),
      "Fortran"));
  CHECK(ThrowsWith(
      NpyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }", 8),
      "truncated"));
  CHECK(ThrowsWith(NpyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': "
                            "(9999999999999,), }",
                            8),
                   "too large"));
  // Found by fuzz_npy: an empty shape value, a zero-size array.
  CHECK(ThrowsWith(
      NpyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': , }", 0),
      "shape"));
  CHECK(ParseNpy(
            NpyBytes(
                "{'descr': '<f4', 'fortran_order': False, 'shape': (0,), }", 0),
            "empty")
            .f32.empty());
  const std::string ok =
      NpyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", 8);
  CHECK(ParseNpy(ok, "ok").f32.size() == 2);
  CHECK(ThrowsWith(ok.substr(0, 20), "truncated"));
}

TEST_CASE("trace.json: scale and rope are parsed and validated") {
  Trace t;
  ParseTraceJson(R"({"scale": 0.125, "rope": {"theta": 500000, "layout": "half",
                 "dims": 64, "first_position": 3}})",
                 "t", &t);
  CHECK(t.scale == doctest::Approx(0.125));
  CHECK(t.rope.present);
  CHECK(!t.rope.interleaved);
  CHECK(t.rope.dims == 64);
  CHECK(t.rope.first_position == 3);
  CHECK_THROWS_AS(ParseTraceJson("{", "t", &t), Error);
  CHECK_THROWS_AS(ParseTraceJson(R"({"scale": -1})", "t", &t), Error);
  CHECK_THROWS_AS(ParseTraceJson(R"({"rope": {}})", "t", &t), Error);
  CHECK_THROWS_AS(
      ParseTraceJson(R"({"scale": 1, "rope": {"layout": "x"}})", "t", &t),
      Error);
}

TEST_CASE("bundled stories260K traces load with the documented shapes") {
  const char* env = std::getenv("KVSKETCH_SHARED_DIR");
  const std::string dir =
      std::string(env ? env : "../shared") + "/data/stories260K/traces";
  if (!fs::exists(dir)) {
    MESSAGE("skipped: " << dir
                        << " not found (needs ../shared beside the repo)");
    return;
  }
  const auto dirs = FindTraceDirs(dir);
  REQUIRE(!dirs.empty());
  const Trace t = LoadTrace(dirs[0]);
  CHECK(t.layers == 5);
  CHECK(t.n_heads == 8);
  CHECK(t.n_kv_heads == 4);
  CHECK(t.seq == 512);
  CHECK(t.dk == 8);
  CHECK(t.scale == doctest::Approx(1.0 / std::sqrt(8.0)));
  CHECK(t.rope.present);
}

}  // namespace
}  // namespace kvsketch

namespace kvsketch {
namespace {

TEST_CASE("synthetic needle: each late evaluated query finds its old needle") {
  const Trace t = MakeSynthetic(SyntheticByName("needle", 2048, 0));
  REQUIRE(t.seq == 2048);
  // 16 evaluated positions, ascending, all in the last sixteenth.
  REQUIRE(t.eval_positions.size() == 16);
  for (size_t j = 0; j < t.eval_positions.size(); ++j) {
    CHECK(t.eval_positions[j] >= t.seq - t.seq / 16);
    CHECK(t.eval_positions[j] < t.seq);
    if (j) CHECK(t.eval_positions[j] > t.eval_positions[j - 1]);
  }
  // Every query head's query at evaluated position j scores one key in the
  // first quarter of the stream far above all others (its needle), and the
  // needles are distinct tokens.
  for (size_t qh = 0; qh < t.n_heads; ++qh) {
    const size_t kvh = qh / t.group();
    std::vector<size_t> found;
    for (size_t p : t.eval_positions) {
      const float* q = t.Q(0, qh, p);
      size_t best = 0;
      double s1 = -1e30;
      std::vector<double> sc(p + 1);
      for (size_t i = 0; i <= p; ++i) {
        double s = 0;
        const float* k = t.K(0, kvh, i);
        for (size_t c = 0; c < t.dk; ++c) s += double(q[c]) * k[c];
        sc[i] = s * t.scale;
        if (sc[i] > s1) {
          s1 = sc[i];
          best = i;
        }
      }
      double z = 0, passage = 0;
      for (size_t i = 0; i <= p; ++i) {
        const double w = std::exp(sc[i] - s1);
        z += w;
        // The needle's passage: 4 adjacent tokens around the best key.
        if (i + 3 >= best && i <= best + 3) passage += w;
      }
      INFO("head " << qh << " position " << p);
      CHECK(best < t.seq / 4);
      // The passage holds a large share of the attention (any other key
      // holds about 1 / p of it).
      CHECK(passage / z > 0.25);
      found.push_back(best);
    }
    std::sort(found.begin(), found.end());
    CHECK(std::unique(found.begin(), found.end()) == found.end());
  }
  // Unevaluated workloads name no positions; too short a needle is refused.
  CHECK(
      MakeSynthetic(SyntheticByName("default", 600, 0)).eval_positions.empty());
  CHECK_THROWS_WITH_AS(SyntheticByName("needle", 300, 0),
                       doctest::Contains("at least 512 tokens"), Error);
}

}  // namespace
}  // namespace kvsketch
