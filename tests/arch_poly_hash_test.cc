#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "arch/hash.h"
#include "arch/poly.h"
#include "arch/reference.h"
#include "arch/targets.h"
#include "doctest/doctest.h"
#include "tests/all_targets.h"

namespace kvsketch {
namespace {

std::vector<float> Gaussian(size_t n, uint32_t seed, float sigma = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, sigma);
  std::vector<float> v(n);
  for (auto& x : v) x = g(rng);
  return v;
}

TEST_CASE("poly features reproduce the truncated exponential series") {
  test::ForEachTarget("PolyFeatures", [](const char*) {
    for (int degree : {0, 1, 2}) {
      for (size_t d : {1u, 5u, 8u, 64u, 128u}) {
        const auto k = Gaussian(d, unsigned(d), 0.7f);
        const auto q = Gaussian(d, unsigned(d + 100), 0.7f);
        const auto c = Gaussian(d, unsigned(d + 200), 0.2f);
        const size_t F = PolyFeatureCount(d, degree);
        std::vector<float> phi(F), psi(F);
        const float scale = 1.0f / std::sqrt(float(d));
        PolyKeyFeatures(k.data(), c.data(), d, degree, phi.data());
        PolyQueryFeatures(q.data(), d, degree, scale, psi.data());
        double x = 0;
        for (size_t i = 0; i < d; ++i) x += (double(k[i]) - c[i]) * q[i];
        x *= scale;
        const double want =
            1 + (degree >= 1 ? x : 0) + (degree >= 2 ? x * x / 2 : 0);
        INFO("degree=" << degree << " d=" << d);
        CHECK(
            test::Near(ref::Dot(phi.data(), psi.data(), F), want, 1e-5, 1e-5));
      }
    }
  });
}

TEST_CASE("poly moments: accumulate then query equals the direct sums") {
  test::ForEachTarget("PolyAccumulate/Query", [](const char*) {
    for (int degree : {1, 2}) {
      for (size_t d : {3u, 8u, 32u}) {
        for (size_t n : {1u, 63u, 64u, 150u}) {
          const size_t ks = PaddedCols(d), dv = d + 1, vs = PaddedCols(dv);
          auto K = Gaussian(n * ks, unsigned(n + d), 0.5f);
          auto V = Gaussian(n * vs, unsigned(n + d + 1), 2.0f);
          for (size_t r = 0; r < n; ++r) {  // zero padding lanes
            for (size_t i = d; i < ks; ++i) K[r * ks + i] = 0;
            for (size_t i = dv; i < vs; ++i) V[r * vs + i] = 0;
          }
          const auto w = Gaussian(n, 7, 1.0f);
          const auto centre = Gaussian(d, 8, 0.1f);
          const auto q = Gaussian(d, 9, 0.5f);
          const size_t F = PolyFeatureCount(d, degree);
          std::vector<float> M(F * vs, 0.0f), z(F, 0.0f), N(vs), psi(F);
          std::vector<float> scratch(PolyScratchFloats(d, degree));
          // Two calls: accumulation adds to what is there.
          const size_t half = n / 2;
          PolyAccumulate(K.data(), ks, d, centre.data(), w.data(), V.data(), vs,
                         half, degree, M.data(), z.data(), scratch.data());
          PolyAccumulate(K.data() + half * ks, ks, d, centre.data(),
                         w.data() + half, V.data() + half * vs, vs, n - half,
                         degree, M.data(), z.data(), scratch.data());
          float Z;
          const float scale = 0.4f;
          PolyQuery(q.data(), d, degree, scale, M.data(), z.data(), vs,
                    N.data(), &Z, psi.data());
          double wz = 0, mag = 0;
          std::vector<double> wn(dv, 0.0);
          for (size_t r = 0; r < n; ++r) {
            double x = 0;
            for (size_t i = 0; i < d; ++i)
              x += (double(K[r * ks + i]) - centre[i]) * q[i];
            x *= scale;
            const double t = w[r] * (1 + x + (degree >= 2 ? x * x / 2 : 0));
            wz += t;
            mag += std::fabs(t);
            for (size_t c = 0; c < dv; ++c) wn[c] += t * V[r * vs + c];
          }
          INFO("degree=" << degree << " d=" << d << " n=" << n);
          CHECK(test::Near(Z, wz, 1e-4, 1e-5 * mag));
          for (size_t c = 0; c < dv; ++c) {
            CHECK(test::Near(N[c], wn[c], 1e-4, 1e-4 * mag));
          }
        }
      }
    }
  });
}

// Naive O(len^2) normalised Hadamard transform.
std::vector<double> RefHadamard(const std::vector<float>& x) {
  const size_t n = x.size();
  std::vector<double> y(n, 0.0);
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < n; ++j) {
      const int sign = __builtin_popcountll(i & j) % 2 ? -1 : 1;
      y[i] += sign * double(x[j]);
    }
    y[i] /= std::sqrt(double(n));
  }
  return y;
}

TEST_CASE("FWHT matches the Hadamard matrix and is an involution") {
  test::ForEachTarget("Fwht", [](const char*) {
    for (size_t len : {1u, 2u, 4u, 8u, 16u, 32u, 64u, 256u}) {
      const auto x = Gaussian(len, unsigned(len));
      auto y = x;
      Fwht(y.data(), len);
      const auto want = RefHadamard(x);
      INFO("len=" << len);
      for (size_t i = 0; i < len; ++i) {
        CHECK(test::Near(y[i], want[i], 1e-5, 1e-5));
      }
      Fwht(y.data(), len);
      for (size_t i = 0; i < len; ++i)
        CHECK(test::Near(y[i], x[i], 1e-5, 1e-5));
    }
  });
}

TEST_CASE("SimHash bits match the projections; collisions follow 1-theta/pi") {
  test::ForEachTarget("SimHash", [](const char*) {
    const size_t d = 20, stride = PaddedCols(d), bits = 100, words = 2;
    std::vector<float> P(bits * stride, 0.0f);
    const auto g = Gaussian(bits * d, 1);
    for (size_t b = 0; b < bits; ++b)
      for (size_t i = 0; i < d; ++i) P[b * stride + i] = g[b * d + i];
    // Pairs at known angles: x and cos(t) x + sin(t) y (y orthogonal to x).
    const size_t pairs = 40;
    std::vector<float> X(2 * pairs * stride, 0.0f);
    std::vector<double> theta(pairs);
    for (size_t p = 0; p < pairs; ++p) {
      const auto a = Gaussian(d, unsigned(1000 + p));
      auto b = Gaussian(d, unsigned(2000 + p));
      double ab = 0, aa = 0;
      for (size_t i = 0; i < d; ++i) {
        ab += a[i] * b[i];
        aa += a[i] * a[i];
      }
      for (size_t i = 0; i < d; ++i) b[i] -= float(ab / aa) * a[i];
      double bb = 0;
      for (size_t i = 0; i < d; ++i) bb += b[i] * b[i];
      theta[p] = 3.14159265358979 * double(p) / (pairs - 1);
      for (size_t i = 0; i < d; ++i) {
        X[2 * p * stride + i] = float(a[i] / std::sqrt(aa));
        X[(2 * p + 1) * stride + i] =
            float(std::cos(theta[p]) * a[i] / std::sqrt(aa) +
                  std::sin(theta[p]) * b[i] / std::sqrt(bb));
      }
    }
    std::vector<uint64_t> codes(2 * pairs * words);
    SimHash(X.data(), 2 * pairs, d, stride, P.data(), bits, codes.data());
    // Bits equal the sign of the projection.
    for (size_t r = 0; r < 2 * pairs; ++r) {
      for (size_t b = 0; b < bits; ++b) {
        const double s =
            ref::Dot(X.data() + r * stride, P.data() + b * stride, d);
        if (std::fabs(s) < 1e-5) continue;
        const bool bit = (codes[r * words + b / 64] >> (b % 64)) & 1;
        CHECK(bit == (s >= 0));
      }
    }
    // Collision rate over all (pair, bit) trials vs 1 - theta/pi: each pair
    // contributes `bits` Bernoulli trials; check the mean over pairs within
    // 4 binomial standard deviations.
    double observed = 0, expected = 0, var = 0;
    for (size_t p = 0; p < pairs; ++p) {
      size_t same = 0;
      for (size_t b = 0; b < bits; ++b) {
        const bool x = (codes[2 * p * words + b / 64] >> (b % 64)) & 1;
        const bool y = (codes[(2 * p + 1) * words + b / 64] >> (b % 64)) & 1;
        same += x == y;
      }
      const double pr = 1 - theta[p] / 3.14159265358979;
      observed += double(same) / bits;
      expected += pr;
      var += pr * (1 - pr) / bits;
    }
    INFO("observed " << observed / pairs << " expected " << expected / pairs);
    CHECK(std::fabs(observed - expected) <= 4 * std::sqrt(var) + 1e-9);
  });
}

TEST_CASE("cross-polytope buckets match the reference") {
  test::ForEachTarget("CrossPolytopeHash", [](const char*) {
    const size_t d = 12, stride = PaddedCols(d), len = 16, rounds = 3, n = 50;
    const auto X = Gaussian(n * stride, 5);
    std::vector<float> Xp(n * stride, 0.0f);
    for (size_t r = 0; r < n; ++r)
      for (size_t i = 0; i < d; ++i) Xp[r * stride + i] = X[r * stride + i];
    std::vector<float> signs(rounds * len);
    const auto s = Gaussian(rounds * len, 6);
    for (size_t i = 0; i < signs.size(); ++i)
      signs[i] = s[i] < 0 ? -1.0f : 1.0f;
    std::vector<float> scratch(len);
    std::vector<uint32_t> buckets(n);
    CrossPolytopeHash(Xp.data(), n, d, stride, signs.data(), rounds, len,
                      scratch.data(), buckets.data());
    for (size_t r = 0; r < n; ++r) {
      std::vector<float> y(len, 0.0f);
      for (size_t i = 0; i < d; ++i) y[i] = Xp[r * stride + i];
      std::vector<double> yd(y.begin(), y.end());
      for (size_t k = 0; k < rounds; ++k) {
        std::vector<float> t(len);
        for (size_t i = 0; i < len; ++i)
          t[i] = float(yd[i] * signs[k * len + i]);
        yd = RefHadamard(t);
      }
      size_t best = 0;
      for (size_t i = 1; i < len; ++i)
        if (std::fabs(yd[i]) > std::fabs(yd[best])) best = i;
      // Skip near-ties where float rounding may pick the other index.
      std::vector<double> a(len);
      for (size_t i = 0; i < len; ++i) a[i] = std::fabs(yd[i]);
      std::sort(a.rbegin(), a.rend());
      if (a[0] - a[1] < 1e-4) continue;
      CHECK(buckets[r] == 2 * best + (yd[best] < 0 ? 1 : 0));
      CHECK(buckets[r] < 2 * len);
    }
  });
}

}  // namespace
}  // namespace kvsketch
