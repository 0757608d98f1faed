// Scalar references for every kernel in arch/: plain loops in double precision,
// used by the tests as ground truth.
#pragma once

#include <cstddef>

namespace kvsketch {
namespace ref {

inline double Dot(const float* a, const float* b, size_t n) {
  double s = 0.0;
  for (size_t i = 0; i < n; ++i) s += double(a[i]) * double(b[i]);
  return s;
}

inline void MatVec(const float* K, size_t rows, size_t d, size_t stride,
                   const float* q, double* y) {
  for (size_t r = 0; r < rows; ++r) y[r] = Dot(K + r * stride, q, d);
}

}  // namespace ref
}  // namespace kvsketch
