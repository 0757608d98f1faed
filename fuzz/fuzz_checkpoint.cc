// libFuzzer target: the llama2.c checkpoint parser must reject anything
// malformed with kvsketch::Error; a model it accepts must run a few tokens.
#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/lm/llama2c.h"
#include "kvsketch/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const kvsketch::LlamaWeights w = kvsketch::ParseCheckpoint(
        std::string(reinterpret_cast<const char*>(data), size), "fuzz");
    if (w.cfg.dim * w.cfg.vocab > (1u << 16) || w.cfg.layers > 4) return 0;
    kvsketch::SessionConfig sc = kvsketch::LlamaSessionConfig(w.cfg);
    sc.method = "window";
    sc.budget_tokens_per_head = 8;
    sc.sinks = 1;
    sc.threads = 1;
    kvsketch::LlamaRunner run(w, sc);
    for (size_t i = 0; i < 3 && i < w.cfg.seq_len; ++i) {
      run.Forward(int(i % w.cfg.vocab));
    }
  } catch (const kvsketch::Error&) {
  }
  return 0;
}
