// Causal attention of a prefill block to itself, flash-attention style: the
// block's keys and values are read in place (f32, the caller's rows), each
// query keeps an online softmax, and the answers are partials (see
// attend.h) that the caller merges with the state's.
#pragma once

#include <cstddef>

namespace kvsketch {

// Floats of scratch CausalBlockAttend needs for head dimensions dk, dv.
size_t CausalBlockScratchFloats(size_t dk, size_t dv);

// The queries of block tokens [t0, t0 + tn), G per token: query i (i < tn*G)
// is q + (i / G) * q_stride + (i % G) * dk (dk floats), belongs to block
// token t = t0 + i / G and attends to the block's tokens 0..t (keys at
// k + j * k_stride, dk floats; values at v + j * v_stride, dv floats):
//   s_j = scale * <q, k_j>,  m = max_j s_j,  z = sum_j e^(s_j - m),
//   N = sum_j e^(s_j - m) v_j.
// Writes m[i], z[i] and N[i * n_stride + c] (c < dv; columns dv..n_stride
// are set to zero). Requires tn >= 1, 1 <= dk, dv <= kMaxHeadDim,
// t0 + tn < 2^31, n_stride >= dv; `scratch` has CausalBlockScratchFloats
// floats. The scores are matrix products with the queries as lanes (no
// horizontal sums, no transposed keys), 8 keys per step.
void CausalBlockAttend(const float* q, size_t q_stride, size_t G, size_t dk,
                       size_t t0, size_t tn, const float* k, size_t k_stride,
                       const float* v, size_t v_stride, size_t dv, float scale,
                       float* m, float* z, float* N, size_t n_stride,
                       float* scratch);

}  // namespace kvsketch
