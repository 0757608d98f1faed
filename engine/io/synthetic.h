// Built-in deterministic synthetic traces with LLM-like attention geometry
// (documented in docs/synthetic.md).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/io/trace.h"

namespace kvsketch {

struct SyntheticSpec {
  std::string name = "default";
  size_t d = 64;
  size_t seq = 4096;
  size_t n_kv_heads = 4;
  size_t group = 2;  // query heads per KV head
  uint64_t seed = 1;
};

// Names: "default" (d 64, 4096 tokens), "d128" (d 128, 4096 tokens),
// "long" (d 64, 65536 tokens). `seq` / `seed` override when non-zero.
SyntheticSpec SyntheticByName(const std::string& name, size_t seq,
                              uint64_t seed);
std::vector<std::string> SyntheticNames();
Trace MakeSynthetic(const SyntheticSpec& spec);

}  // namespace kvsketch
