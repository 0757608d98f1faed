// Coreset halving by the kernelised self-balancing walk (BalanceKV's
// SoftmaxBalance): Gram products, the point kernel, and the walk.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvsketch {

// kExp: kappa(x) = exp(tau * x); kTaylorResidual: kappa(x) = exp(y) -
// sum_{l<=t} y^l / l! with y = tau * x (series for small |y|, so it stays
// accurate where the difference cancels).
enum class KernelKind : uint8_t { kExp = 0, kTaylorResidual = 1 };

struct BalanceParams {
  float scale = 1.0f;  // score scale (1/sqrt(d) for transformers)
  float tau = 1.0f;    // kernel temperature on top of `scale`
  KernelKind kind = KernelKind::kExp;
  int taylor_degree = 1;      // t for kTaylorResidual
  float value_offset = 0.0f;  // c in (w_i w_j <v_i, v_j> + c)
  float gamma = 4.0f;         // walk step: p = 1/2 - gamma * g / max G_jj
  bool centre_keys = true;    // subtract the block's key mean first
  uint64_t seed = 0;          // (seed, stream) key the walk's uniforms
  uint64_t stream = 0;
};

// The m x m Gram/kernel matrices have GramRows(m) rows (padding rows are
// scratch) of GramStride(m) floats.
size_t GramStride(size_t m);
size_t GramRows(size_t m);

// Floats of scratch that GramLower needs for m rows of `cols` columns.
size_t GramScratchFloats(size_t m, size_t cols);

// Lower triangle of C = A A^T: C[i][j] = <a_i, a_j> for j <= i < m. A
// [m][stride] f32 (cols valid); C [GramRows(m)][GramStride(m)]; entries with
// j > i are unspecified (the symmetric upper half is never needed).
void GramLower(const float* A, size_t m, size_t cols, size_t stride, float* C,
               float* scratch);

// The same Gram from A given transposed: At [cols][GramStride(m)], columns
// past m zero (callers that build their rows column-wise skip the transpose).
void GramLowerTransposed(const float* At, size_t m, size_t cols, float* C);
// Floats of scratch Balance needs (centred keys, two Grams, walk state).
size_t BalanceScratchFloats(size_t m, size_t k_stride, size_t v_stride);

// Builds G_ij = kappa(scale * <k~_i, k~_j>) * (w_i w_j <v_i, v_j> + c) for
// j <= i into G [GramRows(m)][GramStride(m)] (k~ = centred keys when requested)
// and returns max_j G_jj. For kExp the kernel is divided by exp(max_j
// tau*scale* |k~_j|^2) to avoid overflow: the walk only uses ratios G_ij / max
// G_jj. K [m][k_stride], V [m][v_stride] f32; w [m] linear weights or nullptr
// (1).
float BuildBalanceKernel(const float* K, size_t k_stride, size_t dk,
                         const float* V, size_t v_stride, size_t dv,
                         const float* w, size_t m, const BalanceParams& p,
                         float* G, float* scratch);

// Self-balancing walk over G (lower triangle used): eta_0 = +1,
// p_i = 1/2 - gamma * sum_{j<i} G_ij eta_j / max_diag clipped to [0, 1],
// eta_i = +1 iff u_i < p_i with u_i = CounterUniform(seed, stream, i).
void BalanceWalk(const float* G, size_t m, float max_diag, float gamma,
                 uint64_t seed, uint64_t stream, int8_t* eta);

// Full halving: kernel + walk. Writes eta [m] and the indices of the kept
// (smaller; +1 on a tie) sign class to kept, returns how many were kept.
size_t Balance(const float* K, size_t k_stride, size_t dk, const float* V,
               size_t v_stride, size_t dv, const float* w, size_t m,
               const BalanceParams& p, float* scratch, int8_t* eta,
               uint32_t* kept);

}  // namespace kvsketch
