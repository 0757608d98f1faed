// `kvsketch decode`: the per-token cost of a decode loop (append + attend,
// every layer) on a real model's attention shapes, at growing contexts.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace kvsketch {

struct DecodeOptions {
  // llama-3.2-1b, qwen2.5-0.5b, llama-3.1-8b; the four shape fields below
  // override the preset's when non-zero.
  std::string preset = "llama-3.2-1b";
  size_t layers = 0, heads = 0, kv_heads = 0, head_dim = 0;
  // The RoPE theta the sessions are given (risk rotates its probe queries
  // to future positions with it, as it would serving that model): the
  // preset's unless given; 0: none.
  float rope_theta = 0.0f;
  bool rope_theta_given = false;
  std::vector<std::string> methods = {"exact", "window", "risk"};
  std::vector<size_t> budgets = {512};  // f32-token units per KV head
  std::vector<size_t> contexts = {1024, 4096, 16384, 65536, 131072};
  std::vector<int> threads = {1, 0};  // 0 = all cores
  size_t steps = 8;                   // timed decode steps at each checkpoint
  // Layers actually run (the per-token time is scaled to all layers); 0 =
  // all of them.
  size_t timed_layers = 1;
  std::string storage = "f16";
  uint64_t seed = 1;
  bool json = false, csv = false;
};

int RunDecode(const DecodeOptions& opt);

}  // namespace kvsketch
