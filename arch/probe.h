// Machine probes for `kvsketch speed`: streaming read bandwidth and FMA peak,
// measured with the same dispatched SIMD target as the kernels.
#pragma once

#include <cstddef>

namespace kvsketch {

// Sum of n floats with several independent vector accumulators: a streaming
// read at the core's bandwidth limit once x is far larger than the caches.
// prefetch_bytes > 0 adds software prefetches that far ahead (the speed
// command takes the best of several distances, so the bandwidth it divides by
// is the best this core reaches, not a weak baseline).
float ReadSum(const float* x, size_t n, size_t prefetch_bytes = 0);

// Runs `iters` iterations of independent FMA chains in registers and returns
// the number of floating-point operations performed (2 per lane per FMA).
double FmaProbe(size_t iters, float* sink);

}  // namespace kvsketch
