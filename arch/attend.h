// Decode attention over retained rows: the hot path. One pass over K and V
// (online softmax over tiles of rows), returning the partial (m, Z, N):
//   s_i = scale * <k_i, q> + logw_i,  m = max_i s_i,
//   Z = sum_i exp(s_i - m),           N = sum_i exp(s_i - m) * v_i.
// The true denominator is e^m * Z and the true numerator e^m * N.
#pragma once

#include <cstddef>

#include "arch/types.h"

namespace kvsketch {

inline constexpr size_t kMaxGroup = 16;  // queries per KV head (GQA)
inline constexpr size_t kMaxHeadDim = 512;

// Storage pairs (keys, values) the kernels take: equal types, or any mix of
// f16 and the quantized storages (q8, q4, q4a).
bool SupportedViewPair(Storage k, Storage v);

// G queries that share one KV head, answered reading each K/V row once
// (G >= 2: one key conversion and one value load per tile for the whole
// group; the answers equal G single-query calls up to rounding).
//  K, V: row views (same rows; a SupportedViewPair; padding lanes zero;
//  quantized views may be `rotated`, see RowsView).
//  q: [G][K.stride] f32, padding lanes zero. logw: [rows] or nullptr (= 0).
//  m, z: [G]; N: [G][V.stride] (padding lanes written as zero).
//  scores: [G][rows] raw s_i, or nullptr; for heavy-hitter statistics
//  (weight of row i for query g = exp(scores[g][i] - m[g]) / z[g]).
// Requires G <= kMaxGroup, K.cols and V.cols <= kMaxHeadDim.
void AttendGroup(const RowsView& K, const RowsView& V, const float* logw,
                 const float* q, size_t G, float scale, float* m, float* z,
                 float* N, float* scores = nullptr);

inline void Attend(const RowsView& K, const RowsView& V, const float* logw,
                   const float* q, float scale, float* m, float* z, float* N,
                   float* scores = nullptr) {
  AttendGroup(K, V, logw, q, 1, scale, m, z, N, scores);
}

// P queries over the same rows, any P (risk's probes, up to 96 per pass over
// its pool): the partials AttendGroup gives for each query (up to rounding),
// with the queries in vector lanes, so each tile's rows are read and decoded
// once for all P and the scores and weighted values are outer products
// (broadcast row element x query vector), without the per-query reduction
// and per-block row conversion of the grouped kernel.
//  K, V, logw, scale: as AttendGroup; q: [P][K.stride]; m, z: [P];
//  N: [P][V.stride]; ws: AttendManyScratchFloats(P, K.cols, V.cols,
//  K.stride, V.stride) floats, 64-byte aligned. Never allocates.
size_t AttendManyScratchFloats(size_t P, size_t dk, size_t dv, size_t kstride,
                               size_t vstride);
void AttendMany(const RowsView& K, const RowsView& V, const float* logw,
                const float* q, size_t P, float scale, float* m, float* z,
                float* N, float* ws);

// Residual part of a Taylor-split attention: for rows j with
//   x_j = scale * <k_j, q> - shift_j   (shift_j = shifts[j], or `shift`),
//   w_j = exp(logw_j + shift_j - ref) * (exp(x_j) - sum_{l<=degree} x_j^l/l!)
// adds sum_j w_j v_j to N [V.stride] and sum_j w_j to *Z. Rows whose factor
// exp(logw_j + shift_j - ref) underflows to 0 contribute exactly 0.
// degree -1 subtracts nothing (plain exp), for tokens held verbatim.
void ResidualAccumulate(const RowsView& K, const RowsView& V, const float* logw,
                        const float* q, float scale, float shift,
                        const float* shifts, float ref, int degree, float* N,
                        float* Z);

// The same two kernels for views with a quantized side (arch/attend_quant.cc;
// AttendGroup and ResidualAccumulate forward to them).
void AttendGroupQuant(const RowsView& K, const RowsView& V, const float* logw,
                      const float* q, size_t G, float scale, float* m, float* z,
                      float* N, float* scores);
void AttendManyQuant(const RowsView& K, const RowsView& V, const float* logw,
                     const float* q, size_t P, float scale, float* m, float* z,
                     float* N, float* ws);
void ResidualAccumulateQuant(const RowsView& K, const RowsView& V,
                             const float* logw, const float* q, float scale,
                             float shift, const float* shifts, float ref,
                             int degree, float* N, float* Z);

// Merges partial 2 into partial 1 exactly: (m1, z1, N1) <- (m1,z1,N1) (+)
// (m2,z2,N2). Empty partials have m = -inf and z = 0.
void MergePartials(float* m1, float* z1, float* N1, float m2, float z2,
                   const float* N2, size_t dv);

// y[i] = exp(x[i]) with the vector exp used by the kernels (Highway's
// contrib Exp: max error 1 ulp, i.e. relative error <= 1.2e-7, for
// x in [-87, 88]); exposed for tests and benchmarks.
void ExpArray(const float* x, float* y, size_t n);

}  // namespace kvsketch
