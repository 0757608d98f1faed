#include <cmath>
#include <random>
#include <vector>

#include "arch/balance.h"
#include "arch/random.h"
#include "arch/reference.h"
#include "arch/targets.h"
#include "doctest/doctest.h"
#include "tests/all_targets.h"

namespace kvsketch {
namespace {

std::vector<float> RandomRows(size_t m, size_t cols, size_t stride,
                              uint32_t seed, bool unit) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g;
  std::vector<float> a(m * stride, 0.0f);
  for (size_t i = 0; i < m; ++i) {
    double norm = 0;
    for (size_t c = 0; c < cols; ++c) {
      a[i * stride + c] = g(rng);
      norm += double(a[i * stride + c]) * a[i * stride + c];
    }
    if (unit) {
      for (size_t c = 0; c < cols; ++c) a[i * stride + c] /= std::sqrt(norm);
    }
  }
  return a;
}

// Symmetric quadratic form eta^T G eta from the lower triangle.
double Energy(const std::vector<float>& G, size_t m, const int8_t* eta) {
  const size_t ms = GramStride(m);
  double e = 0;
  for (size_t i = 0; i < m; ++i) {
    e += G[i * ms + i];
    for (size_t j = 0; j < i; ++j) e += 2.0 * eta[i] * eta[j] * G[i * ms + j];
  }
  return e;
}

TEST_CASE("GramLower equals the lower triangle of A A^T") {
  test::ForEachTarget("GramLower", [](const char*) {
    for (size_t m : {1u, 5u, 17u, 64u, 100u, 256u}) {
      for (size_t cols : {3u, 8u, 64u, 128u}) {
        const size_t stride = PaddedCols(cols);
        const auto A = RandomRows(m, cols, stride, unsigned(m + cols), false);
        std::vector<float> C(GramRows(m) * GramStride(m), -7.0f);
        std::vector<float> scratch(GramScratchFloats(m, cols));
        GramLower(A.data(), m, cols, stride, C.data(), scratch.data());
        for (size_t i = 0; i < m; ++i) {
          for (size_t j = 0; j <= i; ++j) {
            const double want =
                ref::Dot(A.data() + i * stride, A.data() + j * stride, cols);
            INFO("m=" << m << " cols=" << cols << " i=" << i << " j=" << j);
            CHECK(test::Near(C[i * GramStride(m) + j], want, 1e-5,
                             1e-5 * std::sqrt(double(cols))));
          }
        }
      }
    }
  });
}

TEST_CASE("GramLowerTransposed equals GramLower bit for bit") {
  test::ForEachTarget("GramLowerTransposed", [](const char*) {
    for (size_t m : {1u, 5u, 17u, 64u, 100u, 128u}) {
      for (size_t cols : {3u, 8u, 96u}) {
        const size_t stride = PaddedCols(cols), ms = GramStride(m);
        const auto A =
            RandomRows(m, cols, stride, unsigned(m * 7 + cols), false);
        std::vector<float> At(cols * ms, 0.0f);
        for (size_t i = 0; i < m; ++i)
          for (size_t k = 0; k < cols; ++k) At[k * ms + i] = A[i * stride + k];
        std::vector<float> C(GramRows(m) * ms, -7.0f), C2(C);
        std::vector<float> scratch(GramScratchFloats(m, cols));
        GramLower(A.data(), m, cols, stride, C.data(), scratch.data());
        GramLowerTransposed(At.data(), m, cols, C2.data());
        for (size_t i = 0; i < m; ++i) {
          for (size_t j = 0; j <= i; ++j) {
            INFO("m=" << m << " cols=" << cols << " i=" << i << " j=" << j);
            CHECK(C2[i * ms + j] == C[i * ms + j]);
            const double want =
                ref::Dot(A.data() + i * stride, A.data() + j * stride, cols);
            CHECK(test::Near(C2[i * ms + j], want, 1e-5,
                             1e-5 * std::sqrt(double(cols))));
          }
        }
      }
    }
  });
}

TEST_CASE("Balance kernel matches the reference (exp and Taylor residual)") {
  test::ForEachTarget("BuildBalanceKernel", [](const char*) {
    const size_t m = 37, dk = 12, dv = 8, ks = PaddedCols(dk),
                 vs = PaddedCols(dv);
    const auto K = RandomRows(m, dk, ks, 3, false);
    const auto V = RandomRows(m, dv, vs, 4, false);
    std::vector<float> w(m);
    for (size_t i = 0; i < m; ++i) w[i] = float(1 << (i % 3));
    for (KernelKind kind : {KernelKind::kExp, KernelKind::kTaylorResidual}) {
      for (int t : {1, 2}) {
        BalanceParams p;
        p.scale = 0.3f;
        p.tau = 0.5f;
        p.kind = kind;
        p.taylor_degree = t;
        p.value_offset = 0.1f;
        std::vector<float> G(GramRows(m) * GramStride(m));
        std::vector<float> scratch(BalanceScratchFloats(m, ks, vs));
        const float maxd =
            BuildBalanceKernel(K.data(), ks, dk, V.data(), vs, dv, w.data(), m,
                               p, G.data(), scratch.data());
        // Reference with the same centring and overflow shift.
        std::vector<double> mean(dk, 0.0);
        for (size_t i = 0; i < m; ++i)
          for (size_t c = 0; c < dk; ++c) mean[c] += K[i * ks + c] / double(m);
        auto kk = [&](size_t i, size_t j) {
          double s = 0;
          for (size_t c = 0; c < dk; ++c)
            s += (K[i * ks + c] - mean[c]) * (K[j * ks + c] - mean[c]);
          return s;
        };
        const double a = double(p.scale) * p.tau;
        double shift = -1e300;
        for (size_t i = 0; i < m; ++i) shift = std::max(shift, a * kk(i, i));
        double want_max = 0;
        for (size_t i = 0; i < m; ++i) {
          for (size_t j = 0; j <= i; ++j) {
            const double x = a * kk(i, j);
            const double kap = kind == KernelKind::kExp
                                   ? std::exp(x - shift)
                                   : ref::TaylorResidual(x, t);
            const double want =
                kap * (w[i] * w[j] *
                           ref::Dot(V.data() + i * vs, V.data() + j * vs, dv) +
                       p.value_offset);
            if (i == j) want_max = std::max(want_max, want);
            INFO("kind=" << int(kind) << " t=" << t << " i=" << i
                         << " j=" << j);
            // Absolute slack for cancellation inside the value term.
            const double vmag =
                w[i] * w[j] *
                    std::sqrt(
                        ref::Dot(V.data() + i * vs, V.data() + i * vs, dv) *
                        ref::Dot(V.data() + j * vs, V.data() + j * vs, dv)) +
                p.value_offset;
            // ...and for float rounding of the key Gram entry x itself,
            // amplified by the kernel's slope (which is exp or r_{t-1}).
            const double slope =
                kind == KernelKind::kExp ? kap : ref::TaylorResidual(x, t - 1);
            const double dx = 1e-6 * a * std::sqrt(kk(i, i) * kk(j, j));
            CHECK(test::Near(
                G[i * GramStride(m) + j], want, 1e-4,
                (1e-5 * std::fabs(kap) + std::fabs(slope) * dx) * vmag));
          }
        }
        CHECK(maxd == doctest::Approx(want_max).epsilon(1e-4));
      }
    }
  });
}

TEST_CASE("Taylor residual stays accurate for tiny and large arguments") {
  test::ForEachTarget("TaylorResidual", [](const char*) {
    // dk = 1, no centring, unit values, c = 0: G_ij = r(a k_i k_j).
    const size_t m = 64, ks = 4, vs = 4;
    std::vector<float> K(m * ks, 0.0f), V(m * vs, 0.0f);
    for (size_t i = 0; i < m; ++i) {
      K[i * ks] =
          std::pow(10.0f, -3.0f + 4.0f * float(i) / m) * (i % 2 ? -1.0f : 1.0f);
      V[i * vs] = 1.0f;
    }
    for (int t : {1, 2}) {
      BalanceParams p;
      p.kind = KernelKind::kTaylorResidual;
      p.taylor_degree = t;
      p.centre_keys = false;
      p.scale = 0.25f;
      std::vector<float> G(GramRows(m) * GramStride(m));
      std::vector<float> scratch(BalanceScratchFloats(m, ks, vs));
      BuildBalanceKernel(K.data(), ks, 1, V.data(), vs, 1, nullptr, m, p,
                         G.data(), scratch.data());
      for (size_t i = 0; i < m; ++i) {
        for (size_t j = 0; j <= i; ++j) {
          const double y = 0.25 * double(K[i * ks]) * K[j * ks];
          const double want = ref::TaylorResidual(y, t);
          INFO("t=" << t << " y=" << y);
          CHECK(test::Near(G[i * GramStride(m) + j], want, 2e-5, 1e-30));
        }
      }
    }
  });
}

TEST_CASE("walk: each sign follows its probability; deterministic per seed") {
  test::ForEachTarget("BalanceWalk", [](const char*) {
    const size_t m = 128, d = 16, ks = PaddedCols(d);
    const auto K = RandomRows(m, d, ks, 9, true);
    const auto V = RandomRows(m, d, ks, 10, true);
    BalanceParams p;
    p.seed = 77;
    p.stream = 3;
    std::vector<float> G(GramRows(m) * GramStride(m));
    std::vector<float> scratch(BalanceScratchFloats(m, ks, ks));
    const float maxd =
        BuildBalanceKernel(K.data(), ks, d, V.data(), ks, d, nullptr, m, p,
                           G.data(), scratch.data());
    std::vector<int8_t> eta(m), eta2(m), eta3(m);
    BalanceWalk(G.data(), m, maxd, p.gamma, p.seed, p.stream, eta.data());
    BalanceWalk(G.data(), m, maxd, p.gamma, p.seed, p.stream, eta2.data());
    BalanceWalk(G.data(), m, maxd, p.gamma, p.seed + 1, p.stream, eta3.data());
    CHECK(eta == eta2);
    CHECK(eta != eta3);
    CHECK(eta[0] == 1);
    size_t checked = 0;
    for (size_t i = 1; i < m; ++i) {
      double g = 0;
      for (size_t j = 0; j < i; ++j) g += G[i * GramStride(m) + j] * eta[j];
      const double prob =
          std::min(1.0, std::max(0.0, 0.5 - p.gamma * g / maxd));
      const double u = CounterUniform(p.seed, p.stream, i);
      if (std::fabs(u - prob) < 1e-4) continue;  // float rounding may decide
      ++checked;
      INFO("i=" << i << " p=" << prob << " u=" << u);
      CHECK(eta[i] == (u < prob ? 1 : -1));
    }
    CHECK(checked > m - 5);
  });
}

TEST_CASE("walk: signed sum far smaller than with random signs") {
  test::ForEachTarget("BalanceQuality", [](const char*) {
    // Many more points than the kernel's effective dimension (unit vectors
    // in d = 4): the regime where balancing can beat random signs.
    const size_t m = 128, d = 4, ks = PaddedCols(d);
    double walk = 0, random = 0;
    for (uint32_t trial = 0; trial < 40; ++trial) {
      const auto K = RandomRows(m, d, ks, 100 + trial, true);
      const auto V = RandomRows(m, d, ks, 200 + trial, true);
      BalanceParams p;
      p.seed = trial;
      std::vector<float> G(GramRows(m) * GramStride(m));
      std::vector<float> scratch(BalanceScratchFloats(m, ks, ks));
      std::vector<int8_t> eta(m);
      std::vector<uint32_t> kept(m);
      const size_t n = Balance(K.data(), ks, d, V.data(), ks, d, nullptr, m, p,
                               scratch.data(), eta.data(), kept.data());
      CHECK(n <= m / 2);
      for (size_t i = 0; i < n; ++i) CHECK(eta[kept[i]] == eta[kept[0]]);
      // Balance's scratch starts with G: reuse it for the energy.
      G.assign(scratch.begin(), scratch.begin() + G.size());
      walk += Energy(G, m, eta.data());
      std::vector<int8_t> rnd(m);
      for (size_t i = 0; i < m; ++i)
        rnd[i] = CounterUniform(999, trial, i) < 0.5f ? 1 : -1;
      random += Energy(G, m, rnd.data());
    }
    MESSAGE("eta^T G eta: walk " << walk / 40 << " random " << random / 40);
    CHECK(walk * 3 < random);
  });
}

}  // namespace
}  // namespace kvsketch
