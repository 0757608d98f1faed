// Dot product and matrix-vector product: the first dispatched kernels.
#pragma once

#include <cstddef>

namespace kvsketch {

// Returns sum_i a[i] * b[i] for any n (remainder handled without overrun).
float Dot(const float* a, const float* b, size_t n);

// y[r] = <K[r * stride .. r * stride + d), q> for r < rows.
// K: [rows, stride], stride a multiple of kRowAlignFloats and >= d; lanes
// d..stride of each row and of q must be zero (the padding contract).
void MatVec(const float* K, size_t rows, size_t d, size_t stride,
            const float* q, float* y);

// C[i][j] = sum_{x<k} A[i * astride + x] * Bt[x * bstride + j] for i < m and
// j < RoundUp(n, 16): a product with the right operand given transposed
// (Bt [k][bstride]), computed as broadcast-FMA outer products. Columns
// [n, RoundUp(n, 16)) of Bt are read and those of C written (zero when Bt is
// zero there); bstride and cstride must be >= RoundUp(n, 16).
void MatMulTransposed(const float* A, size_t m, size_t k, size_t astride,
                      const float* Bt, size_t n, size_t bstride, float* C,
                      size_t cstride);

}  // namespace kvsketch
