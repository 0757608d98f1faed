#include <cmath>
#include <random>
#include <vector>

#include "arch/dot.h"
#include "arch/reference.h"
#include "arch/targets.h"
#include "doctest/doctest.h"
#include "tests/all_targets.h"

namespace kvsketch {
namespace {

std::vector<float> RandomVector(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = g(rng);
  return v;
}

TEST_CASE("Dot matches the scalar reference on every target") {
  test::ForEachTarget("Dot", [](const char*) {
    for (size_t n : {1u, 3u, 4u, 7u, 8u, 15u, 16u, 17u, 31u, 33u, 64u, 100u,
                     128u, 1000u}) {
      const auto a = RandomVector(n, 1 + n);
      const auto b = RandomVector(n, 1000 + n);
      const double want = ref::Dot(a.data(), b.data(), n);
      const double got = Dot(a.data(), b.data(), n);
      // Error of a float sum of n products ~ n * eps * sum|a_i b_i|.
      double mag = 0;
      for (size_t i = 0; i < n; ++i) mag += std::fabs(double(a[i]) * b[i]);
      INFO("n=" << n);
      CHECK(test::Near(got, want, 0, 1e-6 * mag * std::sqrt(double(n)) + 1e-7));
    }
  });
}

TEST_CASE("MatVec over padded rows matches the reference on every target") {
  test::ForEachTarget("MatVec", [](const char*) {
    for (size_t d : {1u, 3u, 5u, 8u, 12u, 13u, 20u, 24u, 64u, 100u, 128u}) {
      const size_t stride = PaddedCols(d);
      const size_t rows = 37;
      std::vector<float> K(rows * stride, 0.0f), q(stride, 0.0f);
      const auto src = RandomVector(rows * d + d, 7 * d);
      for (size_t r = 0; r < rows; ++r)
        for (size_t c = 0; c < d; ++c) K[r * stride + c] = src[r * d + c];
      for (size_t c = 0; c < d; ++c) q[c] = src[rows * d + c];
      std::vector<float> y(rows);
      std::vector<double> want(rows);
      MatVec(K.data(), rows, d, stride, q.data(), y.data());
      ref::MatVec(K.data(), rows, d, stride, q.data(), want.data());
      for (size_t r = 0; r < rows; ++r) {
        INFO("d=" << d << " row=" << r);
        CHECK(test::Near(y[r], want[r], 1e-5, 1e-5 * std::sqrt(double(d))));
      }
    }
  });
}

}  // namespace
}  // namespace kvsketch
