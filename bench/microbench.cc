// Microbenchmarks of every arch/ kernel (Google Benchmark), hot in cache.
// For cold-data attend and ratios to the machine's limits use `kvsketch speed`.
#include <cstdint>
#include <random>
#include <vector>

#include "arch/attend.h"
#include "arch/balance.h"
#include "arch/convert.h"
#include "arch/dot.h"
#include "arch/hash.h"
#include "arch/poly.h"
#include "arch/quant.h"
#include "arch/risk.h"
#include "arch/targets.h"
#include "benchmark/benchmark.h"

namespace kvsketch {
namespace {

std::vector<float> Random(size_t n, uint32_t seed = 42) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g;
  std::vector<float> v(n);
  for (auto& x : v) x = g(rng);
  return v;
}

void BM_MatVec(benchmark::State& state) {
  const size_t d = state.range(0), rows = state.range(1);
  const size_t stride = PaddedCols(d);
  const auto K = Random(rows * stride);
  auto q = Random(stride);
  std::vector<float> y(rows);
  for (auto _ : state) {
    MatVec(K.data(), rows, d, stride, q.data(), y.data());
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * rows * stride * 4);
  state.SetLabel(ChosenTargetName());
}
BENCHMARK(BM_MatVec)->Args({64, 4096})->Args({128, 4096});

// n random K and V rows of width d in `type` (quantized rows rotated as the
// engine stores them by default).
struct KVRows {
  std::vector<uint8_t> bytes;
  RowsView K, V;
  KVRows(size_t d, size_t n, Storage type) {
    const auto f = Random(2 * n * d);
    const size_t rb = StorageRowBytes(type, d);
    bytes.resize(2 * n * rb);
    for (size_t r = 0; r < 2 * n; ++r) {
      EncodeRow(f.data() + r * d, d, type, bytes.data() + r * rb);
    }
    K.data = bytes.data();
    V.data = bytes.data() + n * rb;
    K.rows = V.rows = n;
    K.cols = V.cols = K.stride = V.stride = d;
    K.type = V.type = type;
    K.rotated = V.rotated = RotatedSide(type, d, true);
  }
};

// Args: d, rows, storage (0 f32, 1 f16, 2 bf16, 3 q8, 4 q4, 5 q4a), group
// size. Quantized rows are rotated as the engine stores them by default.
void BM_Attend(benchmark::State& state) {
  const size_t d = state.range(0), n = state.range(1), G = state.range(3);
  const Storage type = Storage(state.range(2));
  const KVRows kv(d, n, type);
  const RowsView &K = kv.K, &V = kv.V;
  const auto q = Random(G * d, 7);
  std::vector<float> m(G), z(G), N(G * d);
  for (auto _ : state) {
    AttendGroup(K, V, nullptr, q.data(), G, 0.125f, m.data(), z.data(),
                N.data());
    benchmark::DoNotOptimize(N.data());
  }
  state.SetBytesProcessed(int64_t(state.iterations()) *
                          int64_t(kv.bytes.size()));
  state.SetLabel(std::string(ChosenTargetName()) + " " + StorageName(type));
}
BENCHMARK(BM_Attend)
    ->Args({64, 4096, 0, 1})
    ->Args({128, 4096, 0, 1})
    ->Args({128, 4096, 1, 1})
    ->Args({128, 4096, 2, 1})
    ->Args({128, 4096, 0, 4})
    ->Args({64, 4096, 1, 1})
    ->Args({64, 4096, 3, 1})
    ->Args({64, 4096, 4, 1})
    ->Args({128, 4096, 3, 1})
    ->Args({128, 4096, 4, 1})
    ->Args({128, 4096, 3, 4})
    ->Args({64, 4096, 3, 4})
    ->Args({64, 4096, 3, 8})
    ->Args({128, 4096, 3, 8})
    ->Args({64, 4096, 1, 4})
    ->Args({64, 4096, 1, 8})
    ->Args({128, 4096, 1, 4})
    ->Args({64, 4096, 0, 4})
    ->Args({64, 4096, 1, 2})
    ->Args({64, 4096, 1, 7})
    ->Args({128, 512, 0, 4})
    ->Args({128, 512, 0, 1})
    ->Args({128, 512, 1, 4})
    ->Args({128, 512, 1, 1});

// Args: d, rows, storage, queries P, 1 = AttendMany (0 = AttendGroup in
// groups of 16): risk's probe pass over its pool (P = 96 with RoPE).
void BM_AttendMany(benchmark::State& state) {
  const size_t d = state.range(0), n = state.range(1), P = state.range(3);
  const Storage type = Storage(state.range(2));
  const bool many = state.range(4) != 0;
  const KVRows kv(d, n, type);
  const RowsView &K = kv.K, &V = kv.V;
  const auto q = Random(P * d, 7);
  std::vector<float> m(P), z(P), N(P * d);
  std::vector<float> ws(AttendManyScratchFloats(P, d, d, d, d) + 16);
  float* wsa = reinterpret_cast<float*>(
      (reinterpret_cast<uintptr_t>(ws.data()) + 63) & ~uintptr_t{63});
  for (auto _ : state) {
    if (many) {
      AttendMany(K, V, nullptr, q.data(), P, 0.125f, m.data(), z.data(),
                 N.data(), wsa);
    } else {
      for (size_t p0 = 0; p0 < P; p0 += kMaxGroup) {
        const size_t g = std::min(kMaxGroup, P - p0);
        AttendGroup(K, V, nullptr, q.data() + p0 * d, g, 0.125f, m.data() + p0,
                    z.data() + p0, N.data() + p0 * d);
      }
    }
    benchmark::DoNotOptimize(N.data());
  }
  state.SetItemsProcessed(int64_t(state.iterations()) * int64_t(n * P));
  state.SetLabel(std::string(ChosenTargetName()) + " " + StorageName(type) +
                 (many ? " many" : " groups of 16"));
}
BENCHMARK(BM_AttendMany)
    ->Args({64, 1024, 1, 96, 0})
    ->Args({64, 1024, 1, 96, 1})
    ->Args({64, 1024, 1, 32, 0})
    ->Args({64, 1024, 1, 32, 1})
    ->Args({128, 1024, 1, 96, 0})
    ->Args({128, 1024, 1, 96, 1})
    ->Args({8, 256, 1, 96, 0})
    ->Args({8, 256, 1, 96, 1});

// Args: d, storage. Quantize (EncodeRow) then decode a row.
void BM_QuantizeRow(benchmark::State& state) {
  const size_t d = state.range(0);
  const Storage type = Storage(state.range(1));
  const auto f = Random(d);
  std::vector<uint8_t> row(StorageRowBytes(type, d));
  std::vector<float> back(PaddedCols(d));
  for (auto _ : state) {
    EncodeRow(f.data(), d, type, row.data());
    DecodeRow(type, row.data(), d, back.data());
    benchmark::DoNotOptimize(back.data());
  }
  state.SetLabel(std::string(ChosenTargetName()) + " " + StorageName(type));
}
BENCHMARK(BM_QuantizeRow)->Args({128, 3})->Args({128, 4})->Args({128, 5});

// Args: d. The normalised Walsh-Hadamard transform of 64 rows.
void BM_Hadamard(benchmark::State& state) {
  const size_t d = state.range(0);
  auto x = Random(64 * d);
  for (auto _ : state) {
    HadamardRows(x.data(), 64, d, d);
    benchmark::DoNotOptimize(x.data());
  }
  state.SetItemsProcessed(int64_t(state.iterations()) * 64);
  state.SetLabel(ChosenTargetName());
}
BENCHMARK(BM_Hadamard)->Arg(64)->Arg(128);

void BM_GramLower(benchmark::State& state) {
  const size_t m = state.range(0), d = state.range(1);
  const auto A = Random(m * d);
  std::vector<float> C(GramRows(m) * GramStride(m)),
      scratch(GramScratchFloats(m, d));
  for (auto _ : state) {
    GramLower(A.data(), m, d, d, C.data(), scratch.data());
    benchmark::DoNotOptimize(C.data());
  }
  state.counters["GFLOPs"] =
      benchmark::Counter(double(state.iterations()) * m * (m + 1) * d,
                         benchmark::Counter::kIsRate);
}
BENCHMARK(BM_GramLower)->Args({64, 128})->Args({128, 128})->Args({256, 128});

// risk's selection: m candidates (Gram of rank min(m, d)), m - m / 16
// pivots (one compaction round); the factor's rows m rounded up to 16 plus
// the third argument floats apart.
void BM_PivotedCholesky(benchmark::State& state) {
  const size_t m = state.range(0), d = state.range(1);
  const auto A = Random(m * d);
  const size_t gs = GramStride(m);
  std::vector<float> G(GramRows(m) * gs), scratch(GramScratchFloats(m, d));
  GramLower(A.data(), m, d, d, G.data(), scratch.data());
  const size_t keep = m - m / 16, ls = (m + 15) / 16 * 16 + state.range(2);
  std::vector<float> L(keep * ls), diag(2 * m);
  std::vector<uint32_t> piv(m);
  for (auto _ : state) {
    benchmark::DoNotOptimize(PivotedCholesky(G.data(), m, gs, keep, 1e-7f,
                                             L.data(), ls, diag.data(),
                                             piv.data(), nullptr, false));
  }
}
BENCHMARK(BM_PivotedCholesky)
    ->Args({128, 256, 0})
    ->Args({128, 256, 16})
    ->Args({256, 256, 16});

void BM_Balance(benchmark::State& state) {
  const size_t m = state.range(0), d = state.range(1);
  const auto K = Random(m * d, 1), V = Random(m * d, 2);
  std::vector<float> scratch(BalanceScratchFloats(m, d, d));
  std::vector<int8_t> eta(m);
  std::vector<uint32_t> kept(m);
  BalanceParams p;
  p.scale = 0.1f;
  for (auto _ : state) {
    benchmark::DoNotOptimize(Balance(K.data(), d, d, V.data(), d, d, nullptr, m,
                                     p, scratch.data(), eta.data(),
                                     kept.data()));
  }
}
BENCHMARK(BM_Balance)->Args({128, 64})->Args({256, 128});

void BM_Walk(benchmark::State& state) {
  const size_t m = state.range(0);
  std::vector<float> G(GramRows(m) * GramStride(m), 0.01f);
  for (size_t i = 0; i < m; ++i) G[i * GramStride(m) + i] = 1.0f;
  std::vector<int8_t> eta(m);
  uint64_t stream = 0;
  for (auto _ : state) {
    BalanceWalk(G.data(), m, 1.0f, 4.0f, 1, stream++, eta.data());
    benchmark::DoNotOptimize(eta.data());
  }
}
BENCHMARK(BM_Walk)->Arg(64)->Arg(128)->Arg(256);

// Args: d, degree.
void BM_PolyAccumulate(benchmark::State& state) {
  const size_t d = state.range(0), n = kPolyBlock;
  const int degree = int(state.range(1));
  const size_t F = PolyFeatureCount(d, degree);
  const auto K = Random(n * d, 1), V = Random(n * d, 2);
  std::vector<float> M(F * d), z(F), scratch(PolyScratchFloats(d, degree));
  for (auto _ : state) {
    PolyAccumulate(K.data(), d, d, nullptr, nullptr, V.data(), d, n, degree,
                   M.data(), z.data(), scratch.data());
    benchmark::DoNotOptimize(M.data());
  }
  state.SetItemsProcessed(int64_t(state.iterations()) * n);  // tokens
}
BENCHMARK(BM_PolyAccumulate)->Args({64, 1})->Args({64, 2})->Args({128, 2});

void BM_PolyQuery(benchmark::State& state) {
  const size_t d = state.range(0);
  const int degree = int(state.range(1));
  const size_t F = PolyFeatureCount(d, degree);
  const auto M = Random(F * d), z = Random(F), q = Random(d);
  std::vector<float> N(d), psi(F);
  float Z;
  for (auto _ : state) {
    PolyQuery(q.data(), d, degree, 0.1f, M.data(), z.data(), d, N.data(), &Z,
              psi.data());
    benchmark::DoNotOptimize(N.data());
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * F * d * 4);
}
BENCHMARK(BM_PolyQuery)->Args({64, 1})->Args({64, 2})->Args({128, 2});

void BM_SimHash(benchmark::State& state) {
  const size_t d = 128, n = 256, bits = state.range(0);
  const auto X = Random(n * d), P = Random(bits * d, 3);
  std::vector<uint64_t> codes(n * ((bits + 63) / 64));
  for (auto _ : state) {
    SimHash(X.data(), n, d, d, P.data(), bits, codes.data());
    benchmark::DoNotOptimize(codes.data());
  }
  state.SetItemsProcessed(int64_t(state.iterations()) * n);
}
BENCHMARK(BM_SimHash)->Arg(16)->Arg(64);

void BM_Fwht(benchmark::State& state) {
  const size_t len = state.range(0);
  auto x = Random(len);
  for (auto _ : state) {
    Fwht(x.data(), len);
    benchmark::DoNotOptimize(x.data());
  }
  state.SetItemsProcessed(int64_t(state.iterations()) * len);
}
BENCHMARK(BM_Fwht)->Arg(64)->Arg(128)->Arg(1024);

void BM_CrossPolytope(benchmark::State& state) {
  const size_t d = 128, n = 256, rounds = 3;
  const auto X = Random(n * d);
  std::vector<float> signs(rounds * d), scratch(d);
  for (size_t i = 0; i < signs.size(); ++i)
    signs[i] = (i * 7919) % 3 ? 1.f : -1.f;
  std::vector<uint32_t> buckets(n);
  for (auto _ : state) {
    CrossPolytopeHash(X.data(), n, d, d, signs.data(), rounds, d,
                      scratch.data(), buckets.data());
    benchmark::DoNotOptimize(buckets.data());
  }
  state.SetItemsProcessed(int64_t(state.iterations()) * n);
}
BENCHMARK(BM_CrossPolytope);

void BM_Convert(benchmark::State& state) {
  const size_t n = 1 << 16;
  const Storage type = Storage(state.range(0));
  const auto x = Random(n);
  std::vector<uint16_t> h(n);
  std::vector<float> back(n);
  for (auto _ : state) {
    ConvertRow(x.data(), type, h.data(), n);
    ConvertRowToF32(type, h.data(), back.data(), n);
    benchmark::DoNotOptimize(back.data());
  }
  state.SetItemsProcessed(int64_t(state.iterations()) * n);
  state.SetLabel(StorageName(type));
}
BENCHMARK(BM_Convert)->Arg(1)->Arg(2);

}  // namespace
}  // namespace kvsketch

BENCHMARK_MAIN();
