// Drives a Session over a trace token by token (every layer: Append, then
// Attend) and writes every output as raw float32 [seq][layers][heads][dv]:
// the C++ side of the Python package's bit-for-bit test.
//   session_drive TRACE_DIR METHOD BUDGET_TOKENS THREADS OUT_FILE
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

#include "engine/io/trace.h"
#include "kvsketch/kvsketch.h"

int main(int argc, char** argv) {
  if (argc != 6) {
    std::fprintf(stderr,
                 "usage: session_drive TRACE_DIR METHOD BUDGET_TOKENS THREADS "
                 "OUT_FILE\n");
    return 2;
  }
  try {
    const kvsketch::Trace t = kvsketch::LoadTrace(argv[1]);
    kvsketch::SessionConfig c;
    c.layers = t.layers;
    c.n_heads = t.n_heads;
    c.n_kv_heads = t.n_kv_heads;
    c.dk = t.dk;
    c.dv = t.dv;
    c.scale = t.scale;
    c.method = argv[2];
    c.budget_tokens_per_head = std::strtoul(argv[3], nullptr, 10);
    c.threads = std::atoi(argv[4]);
    if (t.rope.present) {
      c.rope_theta = t.rope.theta;
      c.rope_interleaved = t.rope.interleaved;
      c.rope_dims = t.rope.dims;
    }
    kvsketch::Session s(c);
    std::vector<float> k(t.n_kv_heads * t.dk), v(t.n_kv_heads * t.dv),
        q(t.n_heads * t.dk), out(t.n_heads * t.dv), all;
    for (size_t j = 0; j < t.seq; ++j) {
      for (size_t l = 0; l < t.layers; ++l) {
        for (size_t h = 0; h < t.n_kv_heads; ++h) {
          for (size_t x = 0; x < t.dk; ++x) k[h * t.dk + x] = t.K(l, h, j)[x];
          for (size_t x = 0; x < t.dv; ++x) v[h * t.dv + x] = t.V(l, h, j)[x];
        }
        for (size_t h = 0; h < t.n_heads; ++h)
          for (size_t x = 0; x < t.dk; ++x) q[h * t.dk + x] = t.Q(l, h, j)[x];
        s.Append(l, k.data(), v.data());
        s.Attend(l, q.data(), out.data());
        all.insert(all.end(), out.begin(), out.end());
      }
    }
    FILE* f = std::fopen(argv[5], "wb");
    if (!f || std::fwrite(all.data(), 4, all.size(), f) != all.size()) {
      std::fprintf(stderr, "session_drive: cannot write %s\n", argv[5]);
      return 1;
    }
    std::fclose(f);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "session_drive: %s\n", e.what());
    return 1;
  }
  return 0;
}
