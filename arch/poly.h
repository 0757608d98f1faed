// Polynomial (Taylor) features of the softmax kernel, degree t <= 2:
//   <phi(k), psi(q)> = sum_{l<=t} (scale <k,q>)^l / l!.
// Packed symmetric monomials: phi(k) = [1, k_i, k_i k_j (i <= j)],
// psi(q) = [1, s q_i, s^2/2 q_i^2 (i == j), s^2 q_i q_j (i < j)].
// Moments M = sum_r w_r phi(k_r - centre) v_r^T, z = sum_r w_r phi(k_r -
// centre) give the numerator psi(q)^T M and denominator psi(q)^T z of the
// Taylor-approximated attention over every accumulated token at once.
#pragma once

#include <cstddef>

namespace kvsketch {

inline constexpr size_t kPolyMaxDim1 = 256;  // degree 1 supports d <= 256
inline constexpr size_t kPolyMaxDim2 = 128;  // degree 2 supports d <= 128
inline constexpr size_t kPolyBlock = 64;     // rows per accumulation block

// Number of features F for dimension d and degree t (0, 1 or 2).
size_t PolyFeatureCount(size_t d, int degree);

// phi(k - centre) (centre may be nullptr) into phi[F]; psi(q) into psi[F].
void PolyKeyFeatures(const float* k, const float* centre, size_t d, int degree,
                     float* phi);
void PolyQueryFeatures(const float* q, size_t d, int degree, float scale,
                       float* psi);

// Scratch floats PolyAccumulate needs.
size_t PolyScratchFloats(size_t d, int degree);

// M [F][v_stride] += Phi(K - centre)^T diag(w) V and z[F] += Phi^T w for n
// rows (any n; processed in blocks of kPolyBlock so M is read once per block).
// K [n][k_stride], V [n][v_stride] f32; w [n] or nullptr (= 1).
void PolyAccumulate(const float* K, size_t k_stride, size_t d,
                    const float* centre, const float* w, const float* V,
                    size_t v_stride, size_t n, int degree, float* M, float* z,
                    float* scratch);

// N [v_stride] = psi(q)^T M, *Z = psi(q)^T z. psi_scratch holds F floats.
void PolyQuery(const float* q, size_t d, int degree, float scale,
               const float* M, const float* z, size_t v_stride, float* N,
               float* Z, float* psi_scratch);

}  // namespace kvsketch
