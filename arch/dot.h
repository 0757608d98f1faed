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

}  // namespace kvsketch
