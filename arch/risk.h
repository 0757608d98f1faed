// Kernels of the risk-guided selection (docs/risk.md): greedy pivoted
// Cholesky on a symmetric PSD Gram and non-negative least squares on the
// selected block. Both work on f32 matrices with rows `stride` floats apart.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvsketch {

// Greedy pivoted Cholesky of the symmetric PSD matrix G (m x m, lower
// triangle read: G[i * stride + j] for j <= i; with `full`, both triangles
// are there and each pivot's column is read as its row, without striding
// down the lower triangle: same results). Picks up to `max_rank`
// pivots, each time the index with the largest residual diagonal, and stops
// early when that residual is <= tol * (initial trace); ties go to the
// lowest index. Writes the pivots to piv ([m]: the first `rank` entries are
// the pivots in order, then the other items in some order), the residual trace
// after each pivot to residual ([rank], may be nullptr) and returns the rank. L
// ([max_rank][lstride], lstride >= m) and diag [2 m] are scratch; with
// `factor`, L holds the columns of the factor on return (row k = column k,
// indexed by item). Without it, L is left in pivoted order (cheaper: the
// selection needs only the pivots).
//
// Resuming (resume > 0; only without `factor` and `residual`): L and piv
// hold the state a previous call left (pivoted order, factor false) for a
// Gram whose items were renumbered and partly removed: piv[0, known) are the
// items (numbered for this G) at positions [0, known), the first `resume` of
// them the previous pivots in order, and L's rows [0, resume) hold their
// columns at those positions (the removed items' positions taken out, e.g.
// by CompressColumns). G's entries among those items must be unchanged; the
// items not listed are new. The previous pivots are the greedy ones again
// while no new item's residual exceeds theirs: those steps compute only the
// new items' entries, then the usual steps follow. Same pivots as a fresh
// call, up to rounding.
size_t PivotedCholesky(const float* G, size_t m, size_t stride, size_t max_rank,
                       float tol, float* L, size_t lstride, float* diag,
                       uint32_t* piv, float* residual, bool factor = true,
                       size_t resume = 0, size_t known = 0, bool full = false);

// Non-negative least squares in normal form by projected coordinate descent:
//   minimise 1/2 w'Hw - b'w + ridge/2 |w - w0|^2 over w >= 0,
// H symmetric PSD (s x s, full, rows `stride` apart). w holds the start on
// entry and the solution on exit; grad [s] is scratch. Stops after `sweeps`
// or when no coordinate moved by more than tol * max|w|. Returns the final
// objective (without the constant).
float NonNegativeLeastSquares(const float* H, size_t s, size_t stride,
                              const float* b, float ridge, const float* w0,
                              int sweeps, float tol, float* w, float* grad);

// Keeps, in each of `nrows` rows (`stride` floats apart), the entries j < n
// with keep[j] != 0, in order, at the front of the row (in place); returns
// how many. Entries from there up to RoundUp(n, 16) get unspecified values.
// keep and every row are read up to RoundUp(n, 16) (keep zero past n;
// stride >= RoundUp(n, 16)).
size_t CompressColumns(float* rows, size_t nrows, size_t stride,
                       const float* keep, size_t n);

}  // namespace kvsketch
