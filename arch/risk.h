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
// early when that residual is <= tol * (initial trace). Writes the pivots to
// piv, the columns of the factor to L ([rank][m], row k = column k of the
// factor, stride lstride >= m), the residual trace after each pivot to
// residual ([rank], may be nullptr) and returns the rank.
size_t PivotedCholesky(const float* G, size_t m, size_t stride, size_t max_rank,
                       float tol, float* L, size_t lstride, float* diag,
                       uint32_t* piv, float* residual);

// Non-negative least squares in normal form by projected coordinate descent:
//   minimise 1/2 w'Hw - b'w + ridge/2 |w - w0|^2 over w >= 0,
// H symmetric PSD (s x s, full, rows `stride` apart). w holds the start on
// entry and the solution on exit; grad [s] is scratch. Stops after `sweeps`
// or when no coordinate moved by more than tol * max|w|. Returns the final
// objective (without the constant).
float NonNegativeLeastSquares(const float* H, size_t s, size_t stride,
                              const float* b, float ridge, const float* w0,
                              int sweeps, float tol, float* w, float* grad);

}  // namespace kvsketch
