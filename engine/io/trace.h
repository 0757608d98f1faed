// Attention traces (format in docs/DESIGN.md): per layer L{l}_q.npy
// [n_heads, seq, d], L{l}_k.npy / L{l}_v.npy [n_kv_heads, seq, d] float32,
// trace.json with "scale" and optionally "rope".
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace kvsketch {

struct RopeInfo {
  bool present = false;
  float theta = 10000.0f;
  bool interleaved = true;  // "interleaved" (x[2i], x[2i+1]) or "half"
  size_t dims = 0;          // rotated dims (0 = all)
  size_t first_position = 0;
};

struct Trace {
  std::string name;
  size_t layers = 0, n_heads = 0, n_kv_heads = 0, seq = 0, dk = 0, dv = 0;
  float scale = 0.0f;
  RopeInfo rope;
  // Per layer, row-major: q [n_heads][seq][dk], k [n_kv][seq][dk], v [...][dv].
  std::vector<std::vector<float>> q, k, v;
  // Positions whose queries the benchmarks evaluate (ascending, < seq);
  // empty: every position after the budget (strided). Set by workloads whose
  // point is a few queries (the synthetic `needle`), never by trace files.
  std::vector<size_t> eval_positions;

  const float* Q(size_t l, size_t h, size_t t) const {
    return q[l].data() + (h * seq + t) * dk;
  }
  const float* K(size_t l, size_t h, size_t t) const {
    return k[l].data() + (h * seq + t) * dk;
  }
  const float* V(size_t l, size_t h, size_t t) const {
    return v[l].data() + (h * seq + t) * dv;
  }
  size_t group() const { return n_heads / n_kv_heads; }
};

// The one validation of a trace's shape and settings, shared with the
// session's own checks (what a Session would reject, a trace may not hold):
// seq >= 2, head dims in [1, kMaxHeadDim], at most kMaxGroup query heads per
// KV head, scale positive and finite, RoPE as ValidateRope, every key,
// value and query within the input bound (1e8).
void ValidateTrace(const Trace& t, const std::string& what);

// RoPE settings: theta 0 (none) or positive and finite, dims even and <= dk.
void ValidateRope(double theta, size_t dims, size_t dk,
                  const std::string& what);

// Parses trace.json text (scale, rope); throws Error naming the problem.
void ParseTraceJson(const std::string& text, const std::string& what,
                    Trace* trace);

// Loads one trace directory; every array is checked for shape, consistency
// and finite values.
Trace LoadTrace(const std::string& dir);

// A trace directory itself, or the sorted trace directories inside a folder.
std::vector<std::string> FindTraceDirs(const std::string& path);

}  // namespace kvsketch
