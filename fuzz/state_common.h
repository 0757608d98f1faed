// Sessions of every method and storage for the state fuzzer and its corpus
// generator: one byte of the input picks the session, the rest is a state.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kvsketch/kvsketch.h"

namespace kvsketch_fuzz {

inline const char* const kMethods[] = {"exact",  "window", "uniform", "balance",
                                       "taylor", "hashed", "h2o",     "tova",
                                       "risk",   "blurry"};
inline const char* const kStorages[] = {"f32", "f16", "bf16",
                                        "q8",  "q4",  "q4a"};
constexpr size_t kStorageCount = 6;
constexpr size_t kSessions = 10 * kStorageCount;  // methods x storages

inline kvsketch::SessionConfig Config(size_t i) {
  kvsketch::SessionConfig c;
  c.layers = 1;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.dk = c.dv = 8;
  c.method = kMethods[i / kStorageCount];
  c.storage = kStorages[i % kStorageCount];
  c.budget_tokens_per_head = c.method == "exact" ? 160 : 24;
  c.threads = 1;
  c.rope_theta = 10000.0f;
  return c;
}

// 100 tokens, each followed by a query (risk's probes, h2o's scores).
inline std::unique_ptr<kvsketch::Session> Make(size_t i) {
  std::unique_ptr<kvsketch::Session> s(new kvsketch::Session(Config(i)));
  std::vector<float> k(8), v(8), q(16), out(16);
  for (int t = 0; t < 100; ++t) {
    for (int j = 0; j < 8; ++j) {
      k[j] = float((t * 7 + j) % 11) - 5.0f;
      v[j] = float((t * 3 + j) % 5);
      q[j] = q[j + 8] = float((t * 5 + j) % 7) - 3.0f;
    }
    s->Append(0, k.data(), v.data());
    s->Attend(0, q.data(), out.data());
  }
  return s;
}

}  // namespace kvsketch_fuzz
