#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "arch/reference.h"
#include "arch/risk.h"
#include "doctest/doctest.h"
#include "tests/all_targets.h"

namespace kvsketch {
namespace {

// G = A A^T (+ eps I) for A [m][r] Gaussian with column scales 1, 1/2, ...
std::vector<float> LowRankGram(size_t m, size_t r, float eps, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<double> A(m * r);
  for (size_t i = 0; i < m; ++i)
    for (size_t c = 0; c < r; ++c) A[i * r + c] = g(rng) / double(c + 1);
  std::vector<float> G(m * m);
  for (size_t i = 0; i < m; ++i)
    for (size_t j = 0; j < m; ++j) {
      double s = i == j ? eps : 0.0;
      for (size_t c = 0; c < r; ++c) s += A[i * r + c] * A[j * r + c];
      G[i * m + j] = float(s);
    }
  return G;
}

TEST_CASE("PivotedCholesky finds the rank and matches the reference") {
  test::ForEachTarget("PivotedCholesky", [](const char*) {
    for (size_t m : {1u, 7u, 40u, 97u}) {
      const size_t r = std::min<size_t>(m, 6);
      const std::vector<float> G = LowRankGram(m, r, 0.0f, uint32_t(m));
      std::vector<float> L(m * m), diag(2 * m), residual(m);
      std::vector<uint32_t> piv(m);
      const size_t rank =
          PivotedCholesky(G.data(), m, m, m, 1e-5f, L.data(), m, diag.data(),
                          piv.data(), residual.data());
      std::vector<double> ref_res;
      const auto ref_piv =
          ref::PivotedCholesky(G.data(), m, m, m, 1e-5, &ref_res);
      INFO("m=" << m);
      CHECK(rank == r);
      REQUIRE(ref_piv.size() == rank);
      double trace = 0;
      for (size_t i = 0; i < m; ++i) trace += G[i * m + i];
      for (size_t k = 0; k < rank; ++k) {
        CHECK(piv[k] == ref_piv[k]);
        CHECK(test::Near(residual[k], ref_res[k], 1e-3, 1e-5 * trace));
      }
      // L'L reproduces G.
      for (size_t i = 0; i < m; ++i)
        for (size_t j = 0; j <= i; ++j) {
          double s = 0;
          for (size_t k = 0; k < rank; ++k)
            s += double(L[k * m + i]) * L[k * m + j];
          CHECK(test::Near(s, G[i * m + j], 1e-3, 1e-4 * trace / double(m)));
        }
    }
    // Both triangles read (`full`) or the lower one alone (the upper one
    // NaN): the same pivots and factor, bit for bit.
    for (size_t m : {7u, 40u, 97u, 130u}) {
      std::vector<float> G = LowRankGram(m, m, 1e-2f, uint32_t(m + 1));
      const size_t keep = m - std::max<size_t>(1, m / 16);
      std::vector<float> L0(m * m), L1(m * m), d0(2 * m), d1(2 * m);
      std::vector<uint32_t> p0(m), p1(m);
      const size_t r1 =
          PivotedCholesky(G.data(), m, m, keep, 1e-7f, L1.data(), m, d1.data(),
                          p1.data(), nullptr, false, 0, 0, /*full=*/true);
      for (size_t i = 0; i < m; ++i)
        for (size_t j = i + 1; j < m; ++j)
          G[i * m + j] = std::numeric_limits<float>::quiet_NaN();
      const size_t r0 =
          PivotedCholesky(G.data(), m, m, keep, 1e-7f, L0.data(), m, d0.data(),
                          p0.data(), nullptr, false);
      INFO("m=" << m);
      CHECK(r0 == keep);
      CHECK(r1 == r0);
      CHECK(p0 == p1);
      for (size_t t = 0; t < r0; ++t)
        for (size_t j = t; j < m; ++j) CHECK(L0[t * m + j] == L1[t * m + j]);
    }
    // max_rank caps the factor; residual trace decreases.
    const size_t m = 50;
    const std::vector<float> G = LowRankGram(m, 20, 1e-3f, 5);
    std::vector<float> L(m * m), diag(2 * m), residual(m);
    std::vector<uint32_t> piv(m);
    CHECK(PivotedCholesky(G.data(), m, m, 8, 0.0f, L.data(), m, diag.data(),
                          piv.data(), residual.data()) == 8);
    for (size_t k = 1; k < 8; ++k) CHECK(residual[k] <= residual[k - 1]);
  });
}

// A later round of risk's selection: the survivors of a factorization of m0
// items (its pivots plus `extra` others) and `fresh` new items, renumbered
// (survivors in index order, then the new ones). Resuming the first call's
// state gives the pivots of a fresh factorization (reference) and a factor
// that reproduces the Gram on the pivots' columns.
TEST_CASE("PivotedCholesky resumes a previous factorization") {
  test::ForEachTarget("PivotedCholesky resume", [](const char*) {
    struct Case {
      size_t m0, keep0, extra, fresh;
      float fresh_scale;  // the new items' scale: small ones win no pivot
    };
    for (const Case& c :
         {Case{40, 36, 0, 4, 1.0f}, Case{40, 36, 0, 4, 0.05f},
          Case{128, 120, 0, 8, 1.0f}, Case{128, 120, 0, 8, 0.1f},
          Case{128, 120, 0, 8, 4.0f}, Case{128, 100, 12, 16, 1.0f},
          Case{33, 30, 0, 0, 1.0f}, Case{20, 12, 3, 17, 1.0f}}) {
      const size_t m0 = c.m0, total = m0 + c.fresh;
      std::vector<float> A =
          LowRankGram(total, total, 1e-2f, uint32_t(total + c.extra));
      for (size_t i = 0; i < total; ++i)
        for (size_t j = 0; j < total; ++j) {
          if (i >= m0) A[i * total + j] *= c.fresh_scale;
          if (j >= m0) A[i * total + j] *= c.fresh_scale;
        }
      const size_t ls = (std::max(m0, total) + 15) / 16 * 16 + 16;
      std::vector<float> L(total * ls), diag(2 * total);
      std::vector<uint32_t> piv(total);
      const size_t rank0 =
          PivotedCholesky(A.data(), m0, total, c.keep0, 1e-7f, L.data(), ls,
                          diag.data(), piv.data(), nullptr, false);
      REQUIRE(rank0 == c.keep0);
      // Survivors: the pivots and the first `extra` others (by position).
      std::vector<bool> kept(m0, false);
      for (size_t j = 0; j < rank0 + c.extra; ++j) kept[piv[j]] = true;
      std::vector<uint32_t> remap(m0), items;
      for (size_t i = 0; i < m0; ++i)
        if (kept[i]) remap[i] = uint32_t(items.size()), items.push_back(i);
      const size_t known = items.size();
      for (size_t i = m0; i < total; ++i) items.push_back(uint32_t(i));
      const size_t m = items.size();
      std::vector<float> G(m * m);
      for (size_t i = 0; i < m; ++i)
        for (size_t j = 0; j < m; ++j)
          G[i * m + j] = A[items[i] * total + items[j]];
      // The state restricted to the survivors, by position.
      std::vector<float> keep_pos((m0 + 15) / 16 * 16, 0.0f);
      size_t k = 0;
      for (size_t j = 0; j < m0; ++j) {
        keep_pos[j] = kept[piv[j]] ? 1.0f : 0.0f;
        if (kept[piv[j]]) piv[k++] = remap[piv[j]];
      }
      REQUIRE(k == known);
      REQUIRE(CompressColumns(L.data(), rank0, ls, keep_pos.data(), m0) ==
              known);
      const size_t keep = m - std::max<size_t>(1, m / 16);
      // The same resumed call reading both triangles (`full`), on a copy.
      std::vector<float> L_full = L, diag_full = diag;
      std::vector<uint32_t> piv_full = piv;
      const size_t rank_full = PivotedCholesky(
          G.data(), m, m, keep, 1e-7f, L_full.data(), ls, diag_full.data(),
          piv_full.data(), nullptr, false, rank0, known, /*full=*/true);
      // Without `full` only the lower triangle is read.
      for (size_t i = 0; i < m; ++i)
        for (size_t j = i + 1; j < m; ++j)
          G[i * m + j] = std::numeric_limits<float>::quiet_NaN();
      const size_t rank = PivotedCholesky(G.data(), m, m, keep, 1e-7f, L.data(),
                                          ls, diag.data(), piv.data(), nullptr,
                                          false, rank0, known);
      for (size_t i = 0; i < m; ++i)
        for (size_t j = i + 1; j < m; ++j) G[i * m + j] = G[j * m + i];
      CHECK(rank_full == rank);
      CHECK(std::equal(piv.begin(), piv.begin() + m, piv_full.begin()));
      for (size_t t = 0; t < rank; ++t)
        for (size_t j = t; j < m; ++j)
          CHECK(L[t * ls + j] == L_full[t * ls + j]);
      const auto ref_piv =
          ref::PivotedCholesky(G.data(), m, m, keep, 1e-7, nullptr);
      INFO("m0=" << m0 << " extra=" << c.extra << " fresh=" << c.fresh
                 << " scale=" << c.fresh_scale);
      REQUIRE(rank == ref_piv.size());
      for (size_t r = 0; r < rank; ++r) CHECK(piv[r] == ref_piv[r]);
      // Every item is listed once.
      std::vector<uint32_t> all(piv.begin(), piv.begin() + m);
      std::sort(all.begin(), all.end());
      for (size_t i = 0; i < m; ++i) CHECK(all[i] == i);
      double trace = 0;
      for (size_t i = 0; i < m; ++i) trace += G[i * m + i];
      // Pivoted order: G(piv[j], piv[a]) = sum_{t <= a} L_t[a] L_t[j], j >= a.
      for (size_t a = 0; a < rank; ++a)
        for (size_t j = a; j < m; ++j) {
          double sum = 0;
          for (size_t t = 0; t <= a; ++t)
            sum += double(L[t * ls + a]) * L[t * ls + j];
          const size_t i0 = std::max(piv[a], piv[j]),
                       i1 = std::min(piv[a], piv[j]);
          CHECK(
              test::Near(sum, G[i0 * m + i1], 1e-3, 1e-4 * trace / double(m)));
        }
    }
  });
}

TEST_CASE("CompressColumns keeps the marked columns in order") {
  test::ForEachTarget("CompressColumns", [](const char*) {
    for (size_t n : {1u, 5u, 16u, 17u, 40u, 128u}) {
      const size_t padded = (n + 15) / 16 * 16, stride = padded + 16;
      for (int pattern = 0; pattern < 4; ++pattern) {
        std::mt19937 rng(uint32_t(n * 7 + pattern));
        std::vector<float> keep(padded, 0.0f);
        for (size_t j = 0; j < n; ++j) {
          // all kept, one in two, a few dropped, random
          keep[j] = pattern == 0   ? 1.0f
                    : pattern == 1 ? float(j % 2)
                    : pattern == 2 ? float(j % 9 != 4)
                                   : float(rng() % 3 != 0);
        }
        const size_t rowsn = 3;
        std::vector<float> rows(rowsn * stride);
        for (size_t i = 0; i < rows.size(); ++i) rows[i] = float(i) + 0.5f;
        const std::vector<float> before = rows;
        const size_t count =
            CompressColumns(rows.data(), rowsn, stride, keep.data(), n);
        INFO("n=" << n << " pattern=" << pattern);
        size_t expect = 0;
        for (size_t r = 0; r < rowsn; ++r) {
          size_t out = 0;
          for (size_t j = 0; j < n; ++j) {
            if (keep[j] == 0.0f) continue;
            CHECK(rows[r * stride + out] == before[r * stride + j]);
            ++out;
          }
          expect = out;
          // Nothing past the padded width is touched.
          for (size_t j = padded; j < stride; ++j)
            CHECK(rows[r * stride + j] == before[r * stride + j]);
        }
        CHECK(count == expect);
      }
    }
  });
}

TEST_CASE("NonNegativeLeastSquares satisfies the KKT conditions") {
  test::ForEachTarget("NonNegativeLeastSquares", [](const char*) {
    for (size_t s : {1u, 5u, 16u, 33u}) {
      std::mt19937 rng{uint32_t(s)};
      std::normal_distribution<float> g(0.0f, 1.0f);
      const std::vector<float> H = LowRankGram(s, s + 3, 0.05f, 77 + s);
      std::vector<float> b(s), w0(s, 1.0f), w(s, 1.0f), grad(s);
      for (auto& x : b) x = g(rng);
      const float ridge = 0.01f;
      NonNegativeLeastSquares(H.data(), s, s, b.data(), ridge, w0.data(), 500,
                              1e-7f, w.data(), grad.data());
      INFO("s=" << s);
      double hmax = 0;
      for (size_t i = 0; i < s; ++i)
        hmax = std::max(hmax, double(H[i * s + i]));
      for (size_t i = 0; i < s; ++i) {
        double gi = -b[i] + ridge * (w[i] - w0[i]);
        for (size_t j = 0; j < s; ++j) gi += double(H[i * s + j]) * w[j];
        CHECK(w[i] >= 0.0f);
        if (w[i] > 0.0f) {
          CHECK(std::fabs(gi) <= 1e-3 * (hmax + 1));
        } else {
          CHECK(gi >= -1e-3 * (hmax + 1));
        }
      }
    }
  });
}

}  // namespace
}  // namespace kvsketch
