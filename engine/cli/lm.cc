#include "engine/cli/lm.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <numeric>
#include <sstream>
#include <vector>

#include "arch/random.h"
#include "arch/targets.h"
#include "engine/cli/machine.h"
#include "engine/io/file.h"
#include "engine/lm/llama2c.h"
#include "engine/session/cores.h"
#include "engine/sketch/sketch.h"  // StorageSummary
#include "fmt/core.h"
#include "kvsketch/error.h"

namespace kvsketch {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

SessionConfig Compressed(const LlamaWeights& w, const LmOptions& o) {
  SessionConfig s = LlamaSessionConfig(w.cfg);
  s.method = o.method.empty() ? SessionConfig{}.method : o.method;
  if (o.budget_bytes) {
    s.budget_bytes_per_head = o.budget_bytes;
  } else {
    s.budget_tokens_per_head = o.budget_tokens;
  }
  s.storage = o.storage;
  s.storage_k = o.storage_k;
  s.storage_v = o.storage_v;
  s.rotate = o.rotate;
  s.sinks = o.sinks;
  s.window = o.window;
  s.threads = o.threads;
  s.seed = o.seed;
  return s;
}

// Short ("q8/q4+rot") and long (with bits per element) labels of the rows.
std::pair<std::string, std::string> RowsConfig(const SessionConfig& s,
                                               size_t head_dim) {
  SketchConfig c;
  c.storage_k = ParseStorage(s.storage_k.empty() ? s.storage : s.storage_k);
  c.storage_v = ParseStorage(s.storage_v.empty() ? s.storage : s.storage_v);
  c.rotate = s.rotate;
  c.dk = c.dv = head_dim;
  const bool rot = RotatedSide(c.storage_k, c.dk, c.rotate) ||
                   RotatedSide(c.storage_v, c.dv, c.rotate);
  return {StorageLabel(c.storage_k, c.storage_v) + (rot ? "+rot" : ""),
          StorageSummary(c)};
}

SessionConfig Full(const LlamaWeights& w, const LmOptions& o) {
  SessionConfig s = LlamaSessionConfig(w.cfg);
  s.method = "exact";
  s.storage = "f32";  // the reference: the model's own f32 cache, unrounded
  s.budget_tokens_per_head = w.cfg.seq_len;
  s.threads = o.threads;
  return s;
}

// log-softmax in double.
void LogSoftmax(const float* logits, size_t n, std::vector<double>* out) {
  out->resize(n);
  double mx = -INFINITY;
  for (size_t i = 0; i < n; ++i) mx = std::max(mx, double(logits[i]));
  double z = 0;
  for (size_t i = 0; i < n; ++i) z += std::exp(double(logits[i]) - mx);
  const double lz = mx + std::log(z);
  for (size_t i = 0; i < n; ++i) (*out)[i] = double(logits[i]) - lz;
}

size_t Argmax(const float* x, size_t n) {
  return size_t(std::max_element(x, x + n) - x);
}

struct Progress {
  bool on;
  explicit Progress(bool quiet) : on(!quiet && isatty(2)) {}
  void Show(size_t done, size_t total, const char* what) const {
    if (!on) return;
    std::fprintf(stderr, "\r%s %zu/%zu", what, done, total);
    if (done == total) std::fprintf(stderr, "\n");
    std::fflush(stderr);
  }
};

int Eval(const LmOptions& o, const LlamaWeights& w, const Tokenizer& tok) {
  const std::vector<int> tokens = tok.EncodeDocuments(
      ReadRegularFile(o.eval, "eval text", uint64_t(1) << 30));
  const size_t ctx = w.cfg.seq_len;
  if (ctx < 2) {
    throw Error("the model's context (seq_len " + std::to_string(ctx) +
                ") is shorter than two tokens: nothing to evaluate");
  }
  // Consecutive windows of the model's context; a shorter tail counts when
  // it has at least two tokens (one prediction).
  std::vector<std::pair<size_t, size_t>> windows;
  for (size_t b = 0; b + 1 < tokens.size(); b += ctx)
    windows.push_back({b, std::min(tokens.size(), b + ctx)});
  if (o.max_windows && windows.size() > o.max_windows)
    windows.resize(o.max_windows);
  if (windows.empty()) throw Error("eval text has fewer than two tokens");

  const SessionConfig comp_cfg = Compressed(w, o);
  const SessionConfig full_cfg = Full(w, o);
  // `window` at the same budget and storage runs beside the method, timed
  // only: its decode speed is the reference for a compressed cache.
  SessionConfig win_cfg = comp_cfg;
  win_cfg.method = "window";
  const bool with_window = comp_cfg.method != "window";
  const size_t V = w.cfg.vocab;
  std::vector<double> lp_full, lp_comp, kls;
  std::vector<float> full_logits;  // [window tokens][V] for the prefill run
  double nll_full = 0, nll_comp = 0, t_comp = 0, t_full = 0, t_win = 0;
  double kl_pre = 0, nll_pre = 0, t_pre = 0;
  size_t predicted = 0, agree = 0, total_tokens = 0, state_bytes = 0;
  for (const auto& win : windows) total_tokens += win.second - win.first;
  const Progress progress(o.quiet || o.json || o.csv);
  const bool table = !o.json && !o.csv;
  if (table) {
    fmt::print(
        "## kvsketch lm --eval\n\nmachine: {} | SIMD: {} | threads: {} | "
        "model: dim {} layers {} heads {}/{} (q/kv) head_dim {} vocab {} "
        "context {}\ntext: {} ({} tokens, {} windows) | method: {} | storage: "
        "{} | budget: {} per KV head\n\n",
        CpuModel(), ChosenTargetName(),
        o.threads > 0 ? o.threads : int(DefaultThreads()), w.cfg.dim,
        w.cfg.layers, w.cfg.n_heads, w.cfg.n_kv_heads, w.cfg.head_dim(), V, ctx,
        o.eval, tokens.size(), windows.size(), comp_cfg.method,
        RowsConfig(comp_cfg, w.cfg.head_dim()).second,
        o.budget_bytes ? std::to_string(o.budget_bytes) + " B"
                       : std::to_string(o.budget_tokens) + " tokens");
    fmt::print(
        "| window | tokens | ppl full | ppl {} | mean KL | top-1 agree |\n"
        "|---|---|---|---|---|---|\n",
        comp_cfg.method);
  }
  size_t done = 0;
  std::unique_ptr<LlamaRunner> block_runner;  // the prefill run's
  for (size_t wi = 0; wi < windows.size(); ++wi) {
    LlamaRunner full(w, full_cfg), comp(w, comp_cfg);
    std::unique_ptr<LlamaRunner> win;
    if (with_window) win = std::make_unique<LlamaRunner>(w, win_cfg);
    const size_t b = windows[wi].first, e = windows[wi].second;
    double wf = 0, wc = 0, wkl = 0;
    size_t wn = 0, wa = 0;
    if (o.prefill_block) full_logits.resize((e - b) * V);
    for (size_t j = b; j < e; ++j) {
      const auto t0 = Clock::now();
      const float* lf = full.Forward(tokens[j]);
      if (o.prefill_block) std::copy_n(lf, V, full_logits.data() + (j - b) * V);
      const auto t1 = Clock::now();
      const float* lc = comp.Forward(tokens[j]);
      const auto t2 = Clock::now();
      t_full += Seconds(t0, t1);
      t_comp += Seconds(t1, t2);
      if (win) {
        win->Forward(tokens[j]);
        t_win += Seconds(t2, Clock::now());
      }
      if (j + 1 < e) {
        LogSoftmax(lf, V, &lp_full);
        LogSoftmax(lc, V, &lp_comp);
        double kl = 0;
        for (size_t i = 0; i < V; ++i)
          kl += std::exp(lp_full[i]) * (lp_full[i] - lp_comp[i]);
        kl = std::max(kl, 0.0);
        kls.push_back(kl);
        const size_t next = size_t(tokens[j + 1]);
        wf -= lp_full[next];
        wc -= lp_comp[next];
        wkl += kl;
        wa += Argmax(lf, V) == Argmax(lc, V);
        ++wn;
      }
      progress.Show(++done, total_tokens, "tokens");
    }
    if (o.prefill_block) {
      // The method again, fed in blocks: one Prefill per layer and block,
      // by one runner reset between windows (as an engine serving one
      // conversation after another keeps its buffers).
      if (!block_runner)
        block_runner = std::make_unique<LlamaRunner>(w, comp_cfg);
      block_runner->Reset();
      for (size_t j0 = b; j0 < e; j0 += o.prefill_block) {
        const size_t nb = std::min(o.prefill_block, e - j0);
        const auto t0 = Clock::now();
        const float* lb = block_runner->ForwardBlock(tokens.data() + j0, nb);
        t_pre += Seconds(t0, Clock::now());
        for (size_t j = j0; j < j0 + nb && j + 1 < e; ++j) {
          LogSoftmax(full_logits.data() + (j - b) * V, V, &lp_full);
          LogSoftmax(lb + (j - j0) * V, V, &lp_comp);
          double kl = 0;
          for (size_t i = 0; i < V; ++i)
            kl += std::exp(lp_full[i]) * (lp_full[i] - lp_comp[i]);
          kl_pre += std::max(kl, 0.0);
          nll_pre -= lp_comp[size_t(tokens[j + 1])];
        }
      }
    }
    state_bytes = comp.session().Stats().state_bytes;
    nll_full += wf;
    nll_comp += wc;
    agree += wa;
    predicted += wn;
    if (o.json) {
      fmt::print(
          "{{\"window\":{},\"tokens\":{},\"ppl_full\":{:.6f},\"ppl\":{:.6f},"
          "\"kl_mean\":{:.6g},\"top1_agree\":{:.6f}}}\n",
          wi, e - b, std::exp(wf / double(wn)), std::exp(wc / double(wn)),
          wkl / double(wn), double(wa) / double(wn));
    } else if (table) {
      fmt::print("| {} | {} | {:.4f} | {:.4f} | {:.5f} | {:.4f} |\n", wi, e - b,
                 std::exp(wf / double(wn)), std::exp(wc / double(wn)),
                 wkl / double(wn), double(wa) / double(wn));
    }
    std::fflush(stdout);
  }
  if (kls.empty() || predicted == 0) throw Error("eval: nothing was predicted");
  std::vector<double> sorted = kls;
  std::sort(sorted.begin(), sorted.end());
  const double kl_mean =
      std::accumulate(kls.begin(), kls.end(), 0.0) / double(kls.size());
  const double kl_p99 = sorted[std::min(
      sorted.size() - 1, size_t(0.99 * double(sorted.size() - 1) + 0.5))];
  const double ppl_full = std::exp(nll_full / double(predicted));
  const double ppl = std::exp(nll_comp / double(predicted));
  const double tps = double(total_tokens) / t_comp;
  const double tps_full = double(total_tokens) / t_full;
  const double tps_win = with_window ? double(total_tokens) / t_win : tps;
  const bool pre = o.prefill_block > 0;
  const double tps_pre = pre ? double(total_tokens) / t_pre : 0.0;
  const double kl_mean_pre = pre ? kl_pre / double(predicted) : 0.0;
  const double ppl_pre = pre ? std::exp(nll_pre / double(predicted)) : 0.0;
  if (o.csv) {
    fmt::print(
        "method,storage,budget_tokens,budget_bytes,tokens,ppl_full,ppl,kl_mean,"
        "kl_p99,top1_agree,tokens_per_s,tokens_per_s_full,threads,"
        "tokens_per_s_window,prefill_block,kl_mean_prefill,"
        "tokens_per_s_prefill\n{},{},{},{},"
        "{},{:.6f},{:.6f},{:.6g},{:.6g},{:.6f},{:.1f},{:.1f},{},{:.1f},{},"
        "{:.6g},{:.1f}\n",
        comp_cfg.method, RowsConfig(comp_cfg, w.cfg.head_dim()).first,
        o.budget_bytes ? 0 : o.budget_tokens, o.budget_bytes, total_tokens,
        ppl_full, ppl, kl_mean, kl_p99, double(agree) / double(predicted), tps,
        tps_full, o.threads > 0 ? o.threads : int(DefaultThreads()), tps_win,
        o.prefill_block, kl_mean_pre, tps_pre);
  } else if (o.json) {
    fmt::print(
        "{{\"method\":\"{}\",\"storage\":\"{}\",\"budget_tokens\":{},"
        "\"budget_bytes\":{},\"tokens\":{},\"predicted\":{},\"ppl_full\":{:.6f}"
        ",\"ppl\":{:.6f},"
        "\"kl_mean\":{:.6g},\"kl_p99\":{:.6g},\"top1_agree\":{:.6f},"
        "\"tokens_per_s\":{:.1f},\"tokens_per_s_full\":{:.1f},"
        "\"tokens_per_s_window\":{:.1f},\"prefill_block\":{},"
        "\"kl_mean_prefill\":{:.6g},\"ppl_prefill\":{:.6f},"
        "\"tokens_per_s_prefill\":{:.1f},"
        "\"state_bytes\":{},\"peak_rss_bytes\":{}}}\n",
        comp_cfg.method, RowsConfig(comp_cfg, w.cfg.head_dim()).first,
        o.budget_bytes ? 0 : o.budget_tokens, o.budget_bytes, total_tokens,
        predicted, ppl_full, ppl, kl_mean, kl_p99,
        double(agree) / double(predicted), tps, tps_full, tps_win,
        o.prefill_block, kl_mean_pre, ppl_pre, tps_pre, state_bytes,
        PeakRssBytes());
  } else {
    fmt::print(
        "\nsummary: {} tokens ({} predicted) | ppl full {:.4f} | ppl {} "
        "{:.4f} ({:+.2f}%) | KL mean {:.5f} p99 {:.5f} | top-1 agree {:.4f} "
        "| {:.0f} tokens/s ({:.0f} window, {:.0f} full cache) | KV state {} B "
        "| peak RSS {:.1f} MiB\n",
        total_tokens, predicted, ppl_full, comp_cfg.method, ppl,
        (ppl / ppl_full - 1) * 100, kl_mean, kl_p99,
        double(agree) / double(predicted), tps, tps_win, tps_full, state_bytes,
        PeakRssBytes() / 1048576.0);
    if (pre) {
      fmt::print(
          "prefill ({} tokens per Session::Prefill): ppl {} {:.4f} ({:+.2f}%) "
          "| KL mean {:.5f} | {:.0f} tokens/s ({:.2f}x token by token, "
          "{:.2f}x the full cache token by token)\n",
          o.prefill_block, comp_cfg.method, ppl_pre,
          (ppl_pre / ppl_full - 1) * 100, kl_mean_pre, tps_pre, tps_pre / tps,
          tps_pre / tps_full);
    }
  }
  return 0;
}

// One sampled token from logits (greedy at temperature 0; else nucleus
// sampling with a counter-based uniform keyed by (seed, stream, position)).
int Sample(const LmOptions& o, const float* logits, size_t V, uint64_t stream,
           uint64_t position, std::vector<std::pair<float, int>>* probs) {
  if (o.temperature == 0.0f) return int(Argmax(logits, V));
  const float mx = *std::max_element(logits, logits + V);
  double z = 0;
  for (size_t i = 0; i < V; ++i) {
    (*probs)[i] = {std::exp((logits[i] - mx) / o.temperature), int(i)};
    z += (*probs)[i].first;
  }
  std::sort(probs->begin(), probs->end(),
            [](const auto& a, const auto& b) { return a.first > b.first; });
  double cum = 0;
  size_t keep = 0;
  while (keep < V && cum < o.top_p * z) cum += (*probs)[keep++].first;
  const double u = CounterUniform(o.seed, stream, position) * cum;
  double acc = 0;
  for (size_t i = 0; i < keep; ++i) {
    acc += (*probs)[i].first;
    if (u < acc) return (*probs)[i].second;
  }
  return (*probs)[keep - 1].second;
}

// Multi-turn generation on the embedding API: each turn through one Prefill,
// answers token by token, "/regenerate" through Truncate, the KV memory
// after every turn.
int Chat(const LmOptions& o, const LlamaWeights& w, const Tokenizer& tok) {
  if (!(o.temperature >= 0.0f) || !(o.top_p > 0.0f && o.top_p <= 1.0f)) {
    throw Error("temperature must be >= 0 and top-p in (0, 1]");
  }
  LlamaRunner run(w, Compressed(w, o));
  const size_t V = w.cfg.vocab, ctx = w.cfg.seq_len;
  std::vector<std::pair<float, int>> probs(V);
  size_t answer_start = SIZE_MAX;       // position where the last answer began
  std::vector<float> answer_logits(V);  // logits that began it
  int prev = 1;                         // BOS
  int turn_last = 1;  // the last token of the turn the answer follows
  uint64_t regenerations = 0;
  auto memory = [&] {
    const SessionStats st = run.session().Stats();
    fmt::print(
        "[kv: {} tokens, {} rows held (all heads), state {} B of {} B arena | "
        "rollback "
        "to position {}]\n",
        run.position(), st.retained, st.state_bytes, st.arena_bytes,
        run.session().MinTruncatePosition());
  };
  auto answer = [&](const float* logits) {
    std::vector<float> cur(logits, logits + V);
    for (size_t g = 0; g < o.n && run.position() < ctx; ++g) {
      const int next = Sample(o, cur.data(), V, 0x63686174 + regenerations,
                              run.position(), &probs);
      if (next == 1) break;  // BOS ends a story
      fmt::print("{}", tok.Decode(prev, next));
      std::fflush(stdout);
      prev = next;
      const float* l = run.Forward(next);
      cur.assign(l, l + V);
    }
    fmt::print("\n");
  };
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line == "/quit") break;
    if (line == "/stats") {
      memory();
      continue;
    }
    if (line == "/reset") {
      run.Reset();
      answer_start = SIZE_MAX;
      prev = 1;
      fmt::print("[reset]\n");
      memory();
      continue;
    }
    if (line == "/regenerate") {
      if (answer_start == SIZE_MAX) {
        fmt::print("[nothing to regenerate]\n");
        continue;
      }
      try {
        run.Truncate(answer_start);
      } catch (const Error& e) {
        fmt::print("[cannot regenerate: {}]\n", e.what());
        continue;
      }
      ++regenerations;
      prev = turn_last;
      answer(answer_logits.data());
      memory();
      continue;
    }
    if (line.empty()) continue;
    const std::vector<int> t = tok.Encode(line, run.position() == 0);
    if (t.empty()) continue;
    if (run.position() + t.size() >= ctx) {
      fmt::print("[context full ({} of {} positions): /reset]\n",
                 run.position(), ctx);
      continue;
    }
    const float* logits =
        run.ForwardBlock(t.data(), t.size()) + (t.size() - 1) * V;
    prev = turn_last = t.back();
    answer_start = run.position();
    answer_logits.assign(logits, logits + V);
    answer(logits);
    memory();
  }
  return 0;
}

int Generate(const LmOptions& o, const LlamaWeights& w, const Tokenizer& tok) {
  const std::vector<int> prompt = tok.Encode(o.prompt, true);
  const size_t ctx = w.cfg.seq_len;
  if (prompt.size() >= ctx) {
    throw Error("prompt has " + std::to_string(prompt.size()) +
                " tokens; the model's context is " + std::to_string(ctx));
  }
  if (!(o.temperature >= 0.0f) || !(o.top_p > 0.0f && o.top_p <= 1.0f)) {
    throw Error("temperature must be >= 0 and top-p in (0, 1]");
  }
  LlamaRunner run(w, Compressed(w, o));
  const size_t V = w.cfg.vocab;
  std::vector<std::pair<float, int>> probs(V);
  int prev = prompt[0];
  const float* logits = nullptr;
  const auto tp = Clock::now();
  if (o.prefill_block > 0) {
    // The whole prompt in one Prefill per layer.
    logits = run.ForwardBlock(prompt.data(), prompt.size()) +
             (prompt.size() - 1) * V;
  }
  for (size_t i = 0; i < prompt.size(); ++i) {
    if (o.prefill_block == 0) logits = run.Forward(prompt[i]);
    if (i > 0) std::fputs(tok.Decode(prev, prompt[i]).c_str(), stdout);
    prev = prompt[i];
  }
  const double prompt_s = Seconds(tp, Clock::now());
  std::fflush(stdout);
  const auto t0 = Clock::now();
  size_t generated = 0;
  for (; generated < o.n && run.position() < ctx; ++generated) {
    // Greedy, or nucleus sampling keyed by (seed, position): deterministic.
    const int next =
        Sample(o, logits, V, 0x6c6d, uint64_t(run.position()), &probs);
    if (next == 1) break;  // BOS ends a story
    std::fputs(tok.Decode(prev, next).c_str(), stdout);
    std::fflush(stdout);
    prev = next;
    logits = run.Forward(next);
  }
  const double s = Seconds(t0, Clock::now());
  std::fputs("\n", stdout);
  std::fflush(stdout);
  if (!o.quiet) {
    std::fprintf(
        stderr,
        "[%zu prompt (%s, %.1f tokens/s) + %zu generated tokens | %s | "
        "%.1f tokens/s | KV state %zu B]\n",
        prompt.size(), o.prefill_block ? "one prefill" : "token by token",
        prompt.size() / std::max(prompt_s, 1e-9), generated,
        run.session().config().method.c_str(), generated / std::max(s, 1e-9),
        run.session().Stats().state_bytes);
  }
  return 0;
}

}  // namespace

int RunLm(const LmOptions& o) {
  if (o.model.empty() || o.tokenizer.empty()) {
    throw Error("lm needs --model FILE and --tokenizer FILE");
  }
  if (int(!o.eval.empty()) + int(o.prompt_set) + int(o.chat) != 1) {
    throw Error("lm needs exactly one of --eval FILE, --prompt TEXT, --chat");
  }
  const LlamaWeights w = LoadCheckpoint(o.model);
  const Tokenizer tok = Tokenizer::Load(o.tokenizer, w.cfg.vocab);
  if (o.chat) return Chat(o, w, tok);
  return o.eval.empty() ? Generate(o, w, tok) : Eval(o, w, tok);
}

}  // namespace kvsketch
