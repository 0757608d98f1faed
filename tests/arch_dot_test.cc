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

TEST_CASE("MatMulTransposed equals the double product on every target") {
  test::ForEachTarget("MatMulTransposed", [](const char*) {
    for (size_t m : {1u, 3u, 4u, 7u, 9u, 96u}) {
      for (size_t k : {1u, 5u, 8u, 64u}) {
        for (size_t n : {1u, 13u, 16u, 31u, 33u, 128u}) {
          const size_t nn = (n + 15) / 16 * 16;
          const size_t astride = k + 3, bstride = nn + 16, cstride = nn + 32;
          const auto A = RandomVector(m * astride, unsigned(m * 131 + k));
          auto Bt = RandomVector(k * bstride, unsigned(n * 17 + k));
          // The padding columns of Bt are zero (the contract callers keep).
          for (size_t x = 0; x < k; ++x)
            for (size_t j = n; j < bstride; ++j) Bt[x * bstride + j] = 0.0f;
          std::vector<float> C(m * cstride, -7.0f);
          MatMulTransposed(A.data(), m, k, astride, Bt.data(), n, bstride,
                           C.data(), cstride);
          for (size_t i = 0; i < m; ++i) {
            for (size_t j = 0; j < cstride; ++j) {
              INFO("m=" << m << " k=" << k << " n=" << n << " i=" << i
                        << " j=" << j);
              if (j >= nn) {  // beyond RoundUp(n, 16): untouched
                CHECK(C[i * cstride + j] == -7.0f);
                continue;
              }
              double want = 0, mag = 0;
              for (size_t x = 0; x < k; ++x) {
                const double t =
                    double(A[i * astride + x]) * Bt[x * bstride + j];
                want += t;
                mag += std::fabs(t);
              }
              CHECK(test::Near(C[i * cstride + j], want, 0,
                               1e-6 * mag * std::sqrt(double(k)) + 1e-7));
            }
          }
        }
      }
    }
  });
}

}  // namespace
}  // namespace kvsketch
