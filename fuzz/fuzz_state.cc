// libFuzzer target: loading a state file into a session. Any input must be
// rejected cleanly (or accepted), and the session must stay usable.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "kvsketch/kvsketch.h"

namespace {

kvsketch::SessionConfig Config() {
  kvsketch::SessionConfig c;
  c.layers = 1;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.dk = c.dv = 8;
  c.method = "taylor";
  c.storage = "f32";  // the seed corpus (taylor_100.kvs) was saved with f32
  c.budget_tokens_per_head = 24;
  c.threads = 1;
  return c;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static kvsketch::Session* session = [] {
    auto* s = new kvsketch::Session(Config());
    std::vector<float> k(8), v(8);
    for (int t = 0; t < 100; ++t) {
      for (int i = 0; i < 8; ++i) {
        k[i] = float((t * 7 + i) % 11) - 5.0f;
        v[i] = float((t * 3 + i) % 5);
      }
      s->Append(0, k.data(), v.data());
    }
    return s;
  }();
  try {
    session->LoadBytes(std::string(reinterpret_cast<const char*>(data), size));
  } catch (const kvsketch::Error&) {
  }
  std::vector<float> q(16, 0.5f), out(16);
  session->Attend(0, q.data(), out.data());
  std::vector<float> k(8, 0.25f), v(8, 1.0f);
  session->Append(0, k.data(), v.data());
  return 0;
}
