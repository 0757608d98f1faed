// Kernels of the risk-guided selection (docs/risk.md): greedy pivoted
// Cholesky on a symmetric PSD Gram and non-negative least squares on the
// selected block. Both work on f32 matrices with rows `stride` floats apart.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvsketch {

// Greedy pivoted Cholesky of the symmetric PSD matrix G (m x m, lower
// triangle read: G[i * stride + j] for j <= i). Picks up to `max_rank`
// pivots, each time the index with the largest residual diagonal, and stops
// early when that residual is <= tol * (initial trace); ties go to the
// lowest index. Writes the pivots to piv ([m]: the first `rank` entries are
// the pivots in order, the rest is scratch), the residual trace after each
// pivot to residual ([rank], may be nullptr) and returns the rank. L
// ([max_rank][lstride], lstride >= m) and diag [2 m] are scratch; with
// `factor`, L holds the columns of the factor on return (row k = column k,
// indexed by item). Without it, L is left in pivoted order (cheaper: the
// selection needs only the pivots).
size_t PivotedCholesky(const float* G, size_t m, size_t stride, size_t max_rank,
                       float tol, float* L, size_t lstride, float* diag,
                       uint32_t* piv, float* residual, bool factor = true);

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
