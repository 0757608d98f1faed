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

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace kvsketch {
namespace ref {

// Attention partial in double over f32 rows (callers convert stored f16/bf16
// rows to f32 first): m = max s_i, Z = sum e^(s_i - m), N = sum e^(s_i-m) v_i.
inline void Attend(const float* K, size_t k_stride, size_t dk, const float* V,
                   size_t v_stride, size_t dv, size_t n, const float* logw,
                   const float* q, double scale, double* m, double* Z,
                   double* N) {
  std::vector<double> s(n);
  double mx = -INFINITY;
  for (size_t i = 0; i < n; ++i) {
    s[i] = scale * Dot(K + i * k_stride, q, dk) + (logw ? logw[i] : 0.0);
    mx = s[i] > mx ? s[i] : mx;
  }
  *m = mx;
  *Z = 0;
  for (size_t c = 0; c < dv; ++c) N[c] = 0;
  for (size_t i = 0; i < n; ++i) {
    const double p = std::exp(s[i] - mx);
    *Z += p;
    for (size_t c = 0; c < dv; ++c) N[c] += p * V[i * v_stride + c];
  }
}

// Causal block attention (reference for CausalBlockAttend): query i of
// block tokens t0.. (G per token) over the block's rows 0..t0 + i / G.
inline void CausalBlock(const float* q, size_t q_stride, size_t G, size_t dk,
                        size_t t0, size_t tn, const float* K, size_t k_stride,
                        const float* V, size_t v_stride, size_t dv,
                        double scale, double* m, double* Z, double* N) {
  for (size_t i = 0; i < tn * G; ++i) {
    const float* qi = q + (i / G) * q_stride + (i % G) * dk;
    Attend(K, k_stride, dk, V, v_stride, dv, t0 + i / G + 1, nullptr, qi, scale,
           m + i, Z + i, N + i * dv);
  }
}

}  // namespace ref
}  // namespace kvsketch

namespace kvsketch {
namespace ref {

// exp(y) - sum_{l<=t} y^l / l! in long double (reference for the residual).
inline double TaylorResidual(double y, int t) {
  long double e = std::exp((long double)y), term = 1, poly = 0;
  for (int l = 0; l <= t; ++l) {
    poly += term;
    term *= (long double)y / (l + 1);
  }
  if (std::fabs(y) < 1) {  // tail series
    long double tail = 0, tt = 1;
    for (int l = 1; l <= t + 1; ++l) tt *= (long double)y / l;
    for (int l = t + 1; l < t + 40; ++l) {
      tail += tt;
      tt *= (long double)y / (l + 1);
    }
    return double(tail);
  }
  return double(e - poly);
}

// Greedy pivoted Cholesky in double (see arch/risk.h); returns pivots.
inline std::vector<uint32_t> PivotedCholesky(const float* G, size_t m,
                                             size_t stride, size_t max_rank,
                                             double tol,
                                             std::vector<double>* residual) {
  std::vector<double> d(m), L;
  double trace = 0;
  for (size_t i = 0; i < m; ++i) trace += d[i] = G[i * stride + i];
  std::vector<uint32_t> piv;
  while (piv.size() < std::min(max_rank, m)) {
    size_t p = 0;
    for (size_t i = 1; i < m; ++i)
      if (d[i] > d[p]) p = i;
    if (!(d[p] > 0) || d[p] <= tol * trace) break;
    const size_t k = piv.size();
    L.resize((k + 1) * m);
    for (size_t j = 0; j < m; ++j) {
      double c = j <= p ? G[p * stride + j] : G[j * stride + p];
      for (size_t t = 0; t < k; ++t) c -= L[t * m + j] * L[t * m + p];
      L[k * m + j] = c / std::sqrt(d[p]);
    }
    double left = 0;
    for (size_t j = 0; j < m; ++j) {
      d[j] = std::max(0.0, d[j] - L[k * m + j] * L[k * m + j]);
      if (j == p) d[j] = 0;
      left += d[j];
    }
    piv.push_back(uint32_t(p));
    if (residual) residual->push_back(left);
  }
  return piv;
}

}  // namespace ref
}  // namespace kvsketch

#include <cstring>

#include "arch/quant.h"  // MakeQuantParams, QuantGroup, ...

namespace kvsketch {
namespace ref {

// Quantized row by the definition (docs/quantization.md), element by
// element: the group's max / min, MakeQuantParams, codes by nearbyint.
inline void QuantizeRow(const float* src, size_t cols, Storage type,
                        uint8_t* dst) {
  const size_t g = QuantGroup(cols), qc = QuantCols(cols);
  const size_t bb = QuantBlockBytes(type, g);
  std::vector<float> x(qc, 0.0f);
  for (size_t c = 0; c < cols; ++c) x[c] = src[c];
  for (size_t j = 0; j < qc / g; ++j) {
    const float* xg = x.data() + j * g;
    float mx = xg[0], mn = xg[0];
    for (size_t i = 1; i < g; ++i) {
      mx = std::max(mx, xg[i]);
      mn = std::min(mn, xg[i]);
    }
    const QuantParams p = MakeQuantParams(type, mx, mn);
    uint8_t* blk = dst + j * bb;
    std::memcpy(blk, &p.scale_bits, 2);
    uint8_t* codes = blk + 2;
    if (type == Storage::kQ4A) {
      std::memcpy(blk + 2, &p.offset_bits, 2);
      codes = blk + 4;
    }
    auto code = [&](float v) -> int {
      if (type == Storage::kQ8) {
        return int(
            std::min(127.0f, std::max(-127.0f, std::nearbyint(v * p.inv))));
      }
      const float c = type == Storage::kQ4
                          ? std::nearbyint(v * p.inv) + 8.0f
                          : std::nearbyint((v - p.offset) * p.inv);
      return int(std::min(15.0f, std::max(0.0f, c)));
    };
    if (type == Storage::kQ8) {
      for (size_t i = 0; i < g; ++i) codes[i] = uint8_t(int8_t(code(xg[i])));
    } else {
      for (size_t i = 0; i < g / 2; ++i) {
        codes[i] = uint8_t(code(xg[i]) | (code(xg[i + g / 2]) << 4));
      }
    }
  }
}

// x_i = s * c_i (q8), s * (u_i - 8) (q4), s * u_i + o (q4a), in double.
inline void DequantizeRow(const uint8_t* src, size_t cols, Storage type,
                          double* dst) {
  const size_t g = QuantGroup(cols), qc = QuantCols(cols);
  const size_t bb = QuantBlockBytes(type, g);
  for (size_t j = 0; j < qc / g; ++j) {
    const uint8_t* blk = src + j * bb;
    uint16_t sb, ob = 0;
    std::memcpy(&sb, blk, 2);
    const double s = F16BitsToF32(sb);
    const uint8_t* codes = blk + 2;
    if (type == Storage::kQ4A) {
      std::memcpy(&ob, blk + 2, 2);
      codes = blk + 4;
    }
    const double o = F16BitsToF32(ob);
    for (size_t i = 0; i < g; ++i) {
      const size_t c = j * g + i;
      if (c >= cols) break;
      double v;
      if (type == Storage::kQ8) {
        v = s * double(int8_t(codes[i]));
      } else {
        const int u = i < g / 2 ? codes[i] & 0xF : codes[i - g / 2] >> 4;
        v = type == Storage::kQ4 ? s * double(u - 8) : s * double(u) + o;
      }
      dst[c] = v;
    }
  }
}

// y = H_d x / sqrt(d) by the matrix: H[i][j] = (-1)^popcount(i & j).
inline void Hadamard(const double* x, size_t d, double* y) {
  for (size_t i = 0; i < d; ++i) {
    double s = 0;
    for (size_t j = 0; j < d; ++j) {
      s += (__builtin_popcountll(i & j) & 1) ? -x[j] : x[j];
    }
    y[i] = s / std::sqrt(double(d));
  }
}

}  // namespace ref
}  // namespace kvsketch
