// Minimal C++ embedding: two layers, GQA 2:1, a 1 MiB total budget.
#include <kvsketch/kvsketch.h>

#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  kvsketch::SessionConfig cfg;
  cfg.layers = 2;
  cfg.n_heads = 4;
  cfg.n_kv_heads = 2;
  cfg.dk = cfg.dv = 16;
  cfg.budget_bytes = 1024 * 1024;
  try {
    kvsketch::Session s(cfg);
    std::vector<float> k(2 * 16), v(2 * 16), q(4 * 16, 0.1f), out(4 * 16);
    for (int t = 0; t < 1000; ++t) {
      for (size_t i = 0; i < k.size(); ++i) {
        k[i] = std::sin(0.01f * t + i);
        v[i] = std::cos(0.02f * t + i);
      }
      for (size_t l = 0; l < cfg.layers; ++l) s.Append(l, k.data(), v.data());
    }
    s.Attend(1, q.data(), out.data());
    const kvsketch::SessionStats st = s.Stats();
    std::printf("C++ consumer: %s; out[0] = %.4f; %zu of %zu bytes accounted\n",
                kvsketch::Version(), out[0], st.accounted_bytes,
                cfg.budget_bytes);
  } catch (const kvsketch::Error& e) {
    std::fprintf(stderr, "kvsketch: %s\n", e.what());
    return 1;
  }
  return 0;
}
