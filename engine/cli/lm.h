// `kvsketch lm`: run a llama2.c checkpoint with its KV cache in a kvsketch
// session -- perplexity / KL evaluation against the full cache, or
// generation.
#pragma once

#include <cstdint>
#include <string>

#include "kvsketch/kvsketch.h"

namespace kvsketch {

struct LmOptions {
  std::string model, tokenizer;
  std::string eval;    // text file (teacher-forced evaluation)
  std::string prompt;  // generation
  bool prompt_set = false;
  // Multi-turn generation from stdin: each line a turn (prefilled), then up
  // to n generated tokens; /regenerate, /reset, /stats, /quit.
  bool chat = false;
  size_t n = 128;  // tokens to generate
  float temperature = 0.0f;
  float top_p = 0.9f;
  std::string method;  // empty: the recommended default
  size_t budget_tokens = 128;
  size_t budget_bytes = 0;  // per KV head, alternative to budget_tokens
  std::string storage = "f16";
  std::string storage_k, storage_v;  // empty: `storage`
  bool rotate = true;
  size_t sinks = 4;
  long window = -1;
  int threads = 0;
  uint64_t seed = 0;
  size_t max_windows = 0;  // 0 = all
  // Tokens per Session::Prefill call: --eval runs the method a second time
  // fed in blocks (KL and speed reported beside the token-by-token run);
  // --prompt feeds the prompt in one call. 0: token by token only.
  size_t prefill_block = 64;
  bool json = false;
  bool csv = false;  // one summary row (for bench/plot.py)
  bool quiet = false;
};

int RunLm(const LmOptions& opt);

}  // namespace kvsketch
