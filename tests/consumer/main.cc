// C++ embedding: two layers, GQA 2:1, a 1 MiB total budget; a prompt through
// Prefill, decoding, a regenerate through Truncate, the state to caller
// memory, and a second conversation as a sequence of a context.
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
    // A prompt of 900 tokens, one Prefill per layer.
    const size_t n = 900;
    std::vector<float> pk(n * 2 * 16), pv(n * 2 * 16), pq(n * 4 * 16, 0.1f),
        pout(n * 4 * 16);
    for (size_t i = 0; i < pk.size(); ++i) {
      pk[i] = std::sin(0.01f * float(i / 32) + float(i % 32));
      pv[i] = std::cos(0.02f * float(i / 32) + float(i % 32));
    }
    for (size_t l = 0; l < cfg.layers; ++l)
      s.Prefill(l, pq.data(), pk.data(), pv.data(), n, pout.data());
    // Decode 100 tokens, then drop them again ("regenerate") when possible.
    std::vector<float> k(2 * 16), v(2 * 16), q(4 * 16, 0.1f), out(4 * 16);
    for (int t = 0; t < 100; ++t) {
      for (size_t i = 0; i < k.size(); ++i) {
        k[i] = std::sin(0.01f * float(t) + float(i));
        v[i] = std::cos(0.02f * float(t) + float(i));
      }
      for (size_t l = 0; l < cfg.layers; ++l) {
        s.Append(l, k.data(), v.data());
        s.Attend(l, q.data(), out.data());
      }
    }
    const bool rolled_back = s.MinTruncatePosition() <= n;
    if (rolled_back) s.Truncate(n);
    std::vector<char> state(s.StateSize());
    s.SaveState(state.data(), state.size());
    s.Attend(1, q.data(), out.data());
    const kvsketch::SessionStats st = s.Stats();
    std::printf(
        "C++ consumer: %s; out[0] = %.4f; %zu of %zu bytes accounted; "
        "rollback %s; state %zu B\n",
        kvsketch::Version(), out[0], st.accounted_bytes, cfg.budget_bytes,
        rolled_back ? "yes" : "no", state.size());
    // Two conversations in one context.
    kvsketch::SessionConfig per_head = cfg;
    per_head.budget_bytes = 0;
    per_head.budget_tokens_per_head = 64;
    kvsketch::ContextConfig cc;
    cc.base = per_head;
    cc.max_sequences = 2;
    kvsketch::Context ctx(cc);
    auto a = ctx.NewSequence(), b = ctx.NewSequence();
    for (size_t l = 0; l < cfg.layers; ++l) {
      a->Prefill(l, pq.data(), pk.data(), pv.data(), 40, pout.data());
      b->Append(l, k.data(), v.data());
    }
    // Both conversations saved in one buffer, then restored.
    std::vector<char> saved(ctx.StateSize());
    ctx.SaveState(saved.data(), saved.size());
    for (size_t l = 0; l < cfg.layers; ++l) b->Append(l, k.data(), v.data());
    ctx.LoadState(saved.data(), saved.size());
    std::printf(
        "C++ consumer: context of %zu sequences, %zu B; tokens %zu "
        "and %zu; context state %zu B\n",
        ctx.sequences(), ctx.bytes(), a->Stats().tokens, b->Stats().tokens,
        saved.size());
  } catch (const kvsketch::Error& e) {
    std::fprintf(stderr, "kvsketch: %s\n", e.what());
    return 1;
  }
  return 0;
}
