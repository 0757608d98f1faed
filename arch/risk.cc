#include "arch/risk.h"

#include <algorithm>
#include <cmath>
#include <utility>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "arch/risk.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace kvsketch {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// y[0..n) += a * x[0..n): whole vectors, then vectors of 4, then scalars.
HWY_INLINE void Axpy(float a, const float* HWY_RESTRICT x,
                     float* HWY_RESTRICT y, size_t n) {
  const hn::CappedTag<float, 16> d;
  const size_t N = hn::Lanes(d);
  const auto va = hn::Set(d, a);
  size_t i = 0;
  for (; i + N <= n; i += N) {
    hn::StoreU(hn::MulAdd(va, hn::LoadU(d, x + i), hn::LoadU(d, y + i)), d,
               y + i);
  }
  const hn::CappedTag<float, 4> d4;
  const size_t N4 = hn::Lanes(d4);
  const auto va4 = hn::Set(d4, a);
  for (; i + N4 <= n; i += N4) {
    hn::StoreU(hn::MulAdd(va4, hn::LoadU(d4, x + i), hn::LoadU(d4, y + i)), d4,
               y + i);
  }
  for (; i < n; ++i) y[i] += a * x[i];
}

// col[j] -= sum_{t < rank} L_t[p] L_t[j] for j in [from, m): each block of
// columns stays in registers across the rank updates (one load and one FMA per
// vector and update; no stores in between).
HWY_INLINE void UpdateColumn(const float* HWY_RESTRICT L, size_t lstride,
                             size_t rank, size_t p, size_t from, size_t m,
                             float* HWY_RESTRICT col) {
  const hn::CappedTag<float, 16> d;
  const size_t N = hn::Lanes(d);
  size_t j = from;
  for (; j + 4 * N <= m; j += 4 * N) {
    auto c0 = hn::LoadU(d, col + j), c1 = hn::LoadU(d, col + j + N),
         c2 = hn::LoadU(d, col + j + 2 * N), c3 = hn::LoadU(d, col + j + 3 * N);
    const float* lt = L + j;
    for (size_t t = 0; t < rank; ++t, lt += lstride) {
      const auto s = hn::Set(d, -L[t * lstride + p]);
      c0 = hn::MulAdd(s, hn::LoadU(d, lt), c0);
      c1 = hn::MulAdd(s, hn::LoadU(d, lt + N), c1);
      c2 = hn::MulAdd(s, hn::LoadU(d, lt + 2 * N), c2);
      c3 = hn::MulAdd(s, hn::LoadU(d, lt + 3 * N), c3);
    }
    hn::StoreU(c0, d, col + j);
    hn::StoreU(c1, d, col + j + N);
    hn::StoreU(c2, d, col + j + 2 * N);
    hn::StoreU(c3, d, col + j + 3 * N);
  }
  // Fewer than 4 vectors left: four chains over t for each (one chain
  // would wait on the multiply-add latency at every update).
  for (; j + N <= m; j += N) {
    auto c0 = hn::LoadU(d, col + j);
    auto c1 = hn::Zero(d), c2 = hn::Zero(d), c3 = hn::Zero(d);
    const float* lt = L + j;
    size_t t = 0;
    for (; t + 4 <= rank; t += 4, lt += 4 * lstride) {
      c0 = hn::MulAdd(hn::Set(d, -L[t * lstride + p]), hn::LoadU(d, lt), c0);
      c1 = hn::MulAdd(hn::Set(d, -L[(t + 1) * lstride + p]),
                      hn::LoadU(d, lt + lstride), c1);
      c2 = hn::MulAdd(hn::Set(d, -L[(t + 2) * lstride + p]),
                      hn::LoadU(d, lt + 2 * lstride), c2);
      c3 = hn::MulAdd(hn::Set(d, -L[(t + 3) * lstride + p]),
                      hn::LoadU(d, lt + 3 * lstride), c3);
    }
    for (; t < rank; ++t, lt += lstride)
      c0 = hn::MulAdd(hn::Set(d, -L[t * lstride + p]), hn::LoadU(d, lt), c0);
    hn::StoreU(hn::Add(hn::Add(c0, c1), hn::Add(c2, c3)), d, col + j);
  }
  // The last m - j < N entries: t outer, so their chains interleave (one
  // entry at a time waited on the multiply-add latency at every t: 38 % of
  // the factorization at 235 candidates). Same operations per entry.
  if (j < m) {
    const size_t rem = m - j;
    float c[hn::MaxLanes(d)];
    for (size_t i = 0; i < rem; ++i) c[i] = col[j + i];
    for (size_t t = 0; t < rank; ++t) {
      const float s = L[t * lstride + p];
      const float* HWY_RESTRICT lt = L + t * lstride + j;
      for (size_t i = 0; i < rem; ++i) c[i] -= s * lt[i];
    }
    for (size_t i = 0; i < rem; ++i) col[j + i] = c[i];
  }
}

// col *= inv; diag = max(diag - col^2, 0) over [from, m). Returns the
// largest new diag (0 when none is larger; NaN may pass through).
HWY_INLINE float ScaleAndDeflate(float inv, size_t from, size_t m,
                                 float* HWY_RESTRICT col,
                                 float* HWY_RESTRICT diag) {
  const hn::CappedTag<float, 16> d;
  const size_t N = hn::Lanes(d);
  const auto vinv = hn::Set(d, inv);
  const auto zero = hn::Zero(d);
  auto vmax = zero;
  size_t j = from;
  for (; j + N <= m; j += N) {
    const auto c = hn::Mul(hn::LoadU(d, col + j), vinv);
    hn::StoreU(c, d, col + j);
    const auto r = hn::Max(hn::NegMulAdd(c, c, hn::LoadU(d, diag + j)), zero);
    hn::StoreU(r, d, diag + j);
    vmax = hn::Max(vmax, r);
  }
  float b = hn::GetLane(hn::MaxOfLanes(d, vmax));
  for (; j < m; ++j) {
    col[j] *= inv;
    diag[j] -= col[j] * col[j];
    if (diag[j] < 0.0f) diag[j] = 0.0f;
    if (!(diag[j] <= b)) b = diag[j];
  }
  return b;
}

// The position in [r, m) of residual b (ties: the lowest item index
// perm[j]); m when there is none.
HWY_INLINE size_t FindResidual(const float* HWY_RESTRICT diag,
                               const uint32_t* HWY_RESTRICT perm, size_t r,
                               size_t m, float b) {
  const hn::CappedTag<float, 16> d;
  const size_t N = hn::Lanes(d);
  // Whole vectors without it are skipped.
  const auto vb = hn::Set(d, b);
  size_t p = m;
  for (size_t j = r; j < m; j += N) {
    const size_t end = j + N <= m ? j + N : m;
    if (j + N <= m && hn::AllFalse(d, hn::Eq(hn::LoadU(d, diag + j), vb)))
      continue;
    for (size_t i = j; i < end; ++i)
      if (diag[i] == b && (p == m || perm[i] < perm[p])) p = i;
  }
  return p;
}

// The position in [r, m) of the largest residual diag (ties: the lowest
// item index perm[j]); m when there is none (NaN). *best: its value.
HWY_INLINE size_t ArgMaxResidual(const float* HWY_RESTRICT diag,
                                 const uint32_t* HWY_RESTRICT perm, size_t r,
                                 size_t m, float* best) {
  const hn::CappedTag<float, 16> d;
  const size_t N = hn::Lanes(d);
  auto vmax = hn::Set(d, -1.0f);
  size_t j = r;
  for (; j + N <= m; j += N) vmax = hn::Max(vmax, hn::LoadU(d, diag + j));
  float b = hn::GetLane(hn::MaxOfLanes(d, vmax));
  for (; j < m; ++j)
    if (diag[j] > b) b = diag[j];
  *best = b;
  return FindResidual(diag, perm, r, m, b);
}

// diag[0..n) -= row[0..n)^2 (no clamp).
HWY_INLINE void Deflate(const float* HWY_RESTRICT row, size_t n,
                        float* HWY_RESTRICT diag) {
  const hn::CappedTag<float, 16> d;
  const size_t N = hn::Lanes(d);
  size_t j = 0;
  for (; j + N <= n; j += N) {
    const auto c = hn::LoadU(d, row + j);
    hn::StoreU(hn::NegMulAdd(c, c, hn::LoadU(d, diag + j)), d, diag + j);
  }
  for (; j < n; ++j) diag[j] -= row[j] * row[j];
}

// Resumes a previous factorization (see PivotedCholesky in risk.h): replays
// its pivots while none of the new items (positions [known, m)) has a larger
// residual, computing only the new items' entries of each column. Returns
// how many pivots were replayed (s); L, diag and perm are then as the loop
// of PivotedCholeskyImpl leaves them after s steps.
HWY_INLINE size_t ResumePivots(const float* HWY_RESTRICT G, size_t m,
                               size_t stride, size_t max_rank, double stop,
                               size_t resume, size_t known,
                               float* HWY_RESTRICT L, size_t lstride,
                               float* HWY_RESTRICT diag,
                               uint32_t* HWY_RESTRICT perm, bool full) {
  const size_t N = hn::Lanes(hn::CappedTag<float, 16>());
  // Positions [known, m): the items not listed yet, in index order.
  float* gcol = diag + m;  // scratch [m]
  std::fill(gcol, gcol + m, 0.0f);
  for (size_t j = 0; j < known; ++j) gcol[perm[j]] = 1.0f;
  size_t k = known;
  for (size_t i = 0; i < m; ++i)
    if (gcol[i] == 0.0f) perm[k++] = uint32_t(i);
  for (size_t j = 0; j < m; ++j) diag[j] = G[perm[j] * stride + perm[j]];
  auto g = [&](size_t i, size_t j) {
    return full || i >= j ? G[i * stride + j] : G[j * stride + i];
  };
  const size_t lim = std::min(resume, max_rank);
  size_t s = 0;
  for (; s < lim; ++s) {
    // The previous factor's diagonal entry is the root of the pivot's
    // residual.
    const float fp = L[s * lstride + s];
    const float best = fp * fp;
    if (!(best > 0.0f) || double(best) <= stop) break;
    float bn = -1.0f;  // the new items' largest residual (a tie keeps s)
    for (size_t j = known; j < m; ++j) bn = std::max(bn, diag[j]);
    if (bn > best) break;
    if (known == m) continue;
    // The new entries, whole vectors from a multiple of the lanes below
    // `known` (the known entries computed on the way are put back).
    float* row = L + s * lstride;
    const size_t from = known / N * N, p = perm[s];
    std::copy(row + from, row + known, gcol);
    for (size_t j = from; j < m; ++j) row[j] = g(perm[j], p);
    UpdateColumn(L, lstride, s, s, from, m, row);
    std::copy(gcol, gcol + (known - from), row + from);
    ScaleAndDeflate(1.0f / fp, known, m, row, diag);
  }
  // The known items' residuals: their diagonal minus their squared entries.
  for (size_t t = 0; t < s; ++t) Deflate(L + t * lstride, known, diag);
  for (size_t j = 0; j < known; ++j)
    diag[j] = j < s ? 0.0f : std::max(diag[j], 0.0f);
  return s;
}

// Works in pivoted order, as LAPACK's pstrf: position r holds the r-th
// pivot once chosen, so step r updates only the m - r items not yet chosen
// (about a third of the multiply-adds of updating all m at every step). The
// pivots' order, the factor and the residuals are those of the unpermuted
// algorithm (ties go to the lowest original index); the factor is permuted
// back at the end when asked for.
size_t PivotedCholeskyImpl(const float* HWY_RESTRICT G, size_t m, size_t stride,
                           size_t max_rank, float tol, float* HWY_RESTRICT L,
                           size_t lstride, float* HWY_RESTRICT diag,
                           uint32_t* HWY_RESTRICT piv,
                           float* HWY_RESTRICT residual, bool factor,
                           size_t resume, size_t known, bool full) {
  uint32_t* perm = piv;  // perm[j]: the item at position j
  const size_t N = hn::Lanes(hn::CappedTag<float, 16>());
  double trace = 0;
  const bool resuming = resume && !factor && residual == nullptr && known <= m;
  for (size_t i = 0; i < m; ++i) {
    if (!resuming) perm[i] = uint32_t(i);  // else it lists the known items
    diag[i] = G[i * stride + i];
    trace += diag[i];
  }
  const double stop = double(tol) * trace;
  size_t rank = 0;
  if (max_rank > m) max_rank = m;
  float* gcol = diag + m;  // one column of G in the items' order
  if (resuming)
    rank = ResumePivots(G, m, stride, max_rank, stop, resume, known, L, lstride,
                        diag, perm, full);
  // The largest residual after a step, from its deflation pass (the same
  // maximum as a pass of its own; NaN: that pass decides).
  float next = -1.0f;
  bool have_next = false;
  while (rank < max_rank) {
    const size_t r = rank;
    float best = next;
    size_t p = m;
    if (have_next && next == next) {
      if (best > 0.0f) p = FindResidual(diag, perm, r, m, best);
    } else {
      p = ArgMaxResidual(diag, perm, r, m, &best);
    }
    if (p == m || !(best > 0.0f) || double(best) <= stop) break;
    if (p != r) {
      std::swap(perm[p], perm[r]);
      std::swap(diag[p], diag[r]);
      for (size_t t = 0; t < r; ++t)
        std::swap(L[t * lstride + p], L[t * lstride + r]);
    }
    float* col = L + r * lstride;
    // col_j = G(j, p) - sum_{t<rank} L_t[j] L_t[p], then / sqrt(d_p), for
    // the items not chosen yet (j >= r). The column of G is read in the
    // items' order (its first part is a row of the lower triangle; with
    // `full`, all of it is the pivot's row) and then permuted in cache. The
    // vectors start at a multiple of the lanes below r: the entries before r
    // are computed but never read (their diag stays 0).
    const size_t pr = perm[r], from = r / N * N;
    const float* HWY_RESTRICT grow = G + pr * stride;
    if (!full) {
      std::copy(grow, grow + pr + 1, gcol);
      for (size_t i = pr + 1; i < m; ++i) gcol[i] = G[i * stride + pr];
      grow = gcol;
    }
    for (size_t j = from; j < r; ++j) col[j] = 0.0f;
    for (size_t j = r; j < m; ++j) col[j] = grow[perm[j]];
    UpdateColumn(L, lstride, r, r, from, m, col);
    const float inv = 1.0f / std::sqrt(best);
    // The pivot's residual is 0 before the pass (so the maximum it returns
    // is over the others) and after it (should col_r be NaN).
    diag[r] = 0.0f;
    next = ScaleAndDeflate(inv, from, m, col, diag);
    diag[r] = 0.0f;
    have_next = true;
    if (residual) {
      double left = 0;
      for (size_t j = r + 1; j < m; ++j) left += diag[j];
      residual[r] = float(left);
    }
    ++rank;
  }
  if (factor) {
    // Back to the items' order; a column is zero at the items chosen before
    // it. diag is free now.
    for (size_t t = 0; t < rank; ++t) {
      float* col = L + t * lstride;
      for (size_t j = 0; j < m; ++j) diag[perm[j]] = j < t ? 0.0f : col[j];
      std::copy(diag, diag + m, col);
    }
  }
  return rank;
}

size_t CompressColumnsImpl(float* HWY_RESTRICT rows, size_t nrows,
                           size_t stride, const float* HWY_RESTRICT keep,
                           size_t n) {
  const hn::CappedTag<float, 16> d;
  const size_t N = hn::Lanes(d);
  const auto zero = hn::Zero(d);
  // Chunk by chunk across the rows: a chunk's compressed lanes land before
  // its start (at most N lanes from the kept count so far), so no row's
  // later chunk is overwritten before it is read.
  size_t out = 0;
  for (size_t j = 0; j < n; j += N) {
    const auto m = hn::Ne(hn::LoadU(d, keep + j), zero);
    const size_t c = hn::CountTrue(d, m);
    if (c == N && out == j) {
      out += N;  // nothing to move
      continue;
    }
    if (c) {
      float* r = rows;
      for (size_t i = 0; i < nrows; ++i, r += stride)
        hn::CompressStore(hn::LoadU(d, r + j), m, d, r + out);
    }
    out += c;
  }
  return out;
}

float NonNegativeLeastSquaresImpl(const float* HWY_RESTRICT H, size_t s,
                                  size_t stride, const float* HWY_RESTRICT b,
                                  float ridge, const float* HWY_RESTRICT w0,
                                  int sweeps, float tol, float* HWY_RESTRICT w,
                                  float* HWY_RESTRICT grad) {
  // grad = H w - b (+ ridge (w - w0)), kept up to date column by column.
  for (size_t i = 0; i < s; ++i) grad[i] = -b[i] + ridge * (w[i] - w0[i]);
  for (size_t j = 0; j < s; ++j) {
    if (w[j] != 0.0f) Axpy(w[j], H + j * stride, grad, s);
  }
  for (int it = 0; it < sweeps; ++it) {
    float moved = 0.0f, scale = 0.0f;
    for (size_t i = 0; i < s; ++i) {
      const float hii = H[i * stride + i] + ridge;
      if (!(hii > 0.0f)) continue;
      float wi = w[i] - grad[i] / hii;
      if (wi < 0.0f) wi = 0.0f;
      const float delta = wi - w[i];
      if (delta != 0.0f) {
        Axpy(delta, H + i * stride, grad, s);
        grad[i] += ridge * delta;
        w[i] = wi;
        moved = std::fmax(moved, std::fabs(delta));
      }
      scale = std::fmax(scale, std::fabs(wi));
    }
    if (moved <= tol * (scale + 1e-30f)) break;
  }
  // Objective 1/2 w'Hw - b'w + ridge/2 |w-w0|^2 = 1/2 w'(grad - b') ...
  double obj = 0;
  for (size_t i = 0; i < s; ++i) {
    const double r = double(w[i]) - w0[i];
    // grad_i = (Hw)_i - b_i + ridge r_i
    obj += 0.5 * double(w[i]) * (double(grad[i]) + b[i] - ridge * r) -
           double(b[i]) * w[i] + 0.5 * ridge * r * r;
  }
  return float(obj);
}

}  // namespace HWY_NAMESPACE
}  // namespace kvsketch
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace kvsketch {
HWY_EXPORT(PivotedCholeskyImpl);
HWY_EXPORT(NonNegativeLeastSquaresImpl);
HWY_EXPORT(CompressColumnsImpl);

size_t CompressColumns(float* rows, size_t nrows, size_t stride,
                       const float* keep, size_t n) {
  return HWY_DYNAMIC_DISPATCH(CompressColumnsImpl)(rows, nrows, stride, keep,
                                                   n);
}

size_t PivotedCholesky(const float* G, size_t m, size_t stride, size_t max_rank,
                       float tol, float* L, size_t lstride, float* diag,
                       uint32_t* piv, float* residual, bool factor,
                       size_t resume, size_t known, bool full) {
  return HWY_DYNAMIC_DISPATCH(PivotedCholeskyImpl)(
      G, m, stride, max_rank, tol, L, lstride, diag, piv, residual, factor,
      resume, known, full);
}

float NonNegativeLeastSquares(const float* H, size_t s, size_t stride,
                              const float* b, float ridge, const float* w0,
                              int sweeps, float tol, float* w, float* grad) {
  return HWY_DYNAMIC_DISPATCH(NonNegativeLeastSquaresImpl)(
      H, s, stride, b, ridge, w0, sweeps, tol, w, grad);
}

}  // namespace kvsketch
#endif  // HWY_ONCE
