// Microbenchmarks of the arch/ kernels (Google Benchmark).
#include <random>
#include <vector>

#include "arch/dot.h"
#include "arch/targets.h"
#include "benchmark/benchmark.h"

namespace kvsketch {
namespace {

std::vector<float> Random(size_t n) {
  std::mt19937 rng(42);
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
BENCHMARK(BM_MatVec)->Args({64, 4096})->Args({128, 4096})->Args({128, 65536});

}  // namespace
}  // namespace kvsketch

BENCHMARK_MAIN();
