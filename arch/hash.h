// Space-partitioning hashes: SimHash (sign random projections) and the
// cross-polytope hash (random signs + fast Walsh-Hadamard transform).
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvsketch {

// codes[r * words + b/64] bit (b % 64) = (<x_r, P_b> >= 0) for b < bits,
// words = ceil(bits / 64); X [n][stride], P [bits][stride] (zero padding).
void SimHash(const float* X, size_t n, size_t d, size_t stride, const float* P,
             size_t bits, uint64_t* codes);

// In-place normalised Walsh-Hadamard transform (H / sqrt(len), so applying
// it twice is the identity); len a power of two.
void Fwht(float* x, size_t len);

// Cross-polytope hash of each row: y = x zero-padded to len (a power of two
// >= d), then `rounds` times y = FWHT(signs[r] * y); bucket = 2 * argmax_i
// |y_i| + (y_i < 0), in [0, 2 len). signs [rounds][len] of +-1.
// scratch: len floats.
void CrossPolytopeHash(const float* X, size_t n, size_t d, size_t stride,
                       const float* signs, size_t rounds, size_t len,
                       float* scratch, uint32_t* buckets);

}  // namespace kvsketch
