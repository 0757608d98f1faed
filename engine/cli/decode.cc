#include "engine/cli/decode.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "arch/targets.h"  // ChosenTargetName
#include "engine/cli/machine.h"
#include "engine/io/synthetic.h"
#include "engine/io/trace.h"       // ValidateRope
#include "engine/sketch/sketch.h"  // ParseStorage
#include "fmt/core.h"
#include "kvsketch/error.h"
#include "kvsketch/kvsketch.h"

namespace kvsketch {
namespace {

using Clock = std::chrono::steady_clock;

struct Shape {
  const char* name;
  size_t layers, heads, kv_heads, head_dim;
  float rope_theta;  // the model's config.json rope_theta
};

constexpr Shape kPresets[] = {
    {"llama-3.2-1b", 16, 32, 8, 64, 500000.0f},
    {"qwen2.5-0.5b", 24, 14, 2, 64, 1000000.0f},
    {"llama-3.1-8b", 32, 32, 8, 128, 500000.0f},
};

Shape ResolveShape(const DecodeOptions& opt) {
  const Shape* base = nullptr;
  for (const Shape& s : kPresets) {
    if (opt.preset == s.name) base = &s;
  }
  if (!base) {
    throw Error("decode: unknown --preset '" + opt.preset +
                "' (known: llama-3.2-1b, qwen2.5-0.5b, llama-3.1-8b)");
  }
  Shape s = *base;
  if (opt.layers) s.layers = opt.layers;
  if (opt.heads) s.heads = opt.heads;
  if (opt.kv_heads) s.kv_heads = opt.kv_heads;
  if (opt.head_dim) s.head_dim = opt.head_dim;
  if (opt.rope_theta_given) s.rope_theta = opt.rope_theta;
  ValidateRope(s.rope_theta, 0, s.head_dim, "decode --rope-theta");
  if (s.heads % s.kv_heads != 0) {
    throw Error(
        fmt::format("decode: --heads {} is not a multiple of --kv-heads {}",
                    s.heads, s.kv_heads));
  }
  return s;
}

struct Row {
  std::string method;
  size_t budget;  // 0 for exact
  int threads;
  size_t context;
  double us_per_token;  // all layers
  double append_us;     // per token and KV head (appends alone)
  size_t state_bytes;   // all layers
  size_t retained;      // per KV head (mean)
  const char* how;
};

}  // namespace

int RunDecode(const DecodeOptions& opt) {
  const Shape shape = ResolveShape(opt);
  if (opt.contexts.empty() || opt.methods.empty()) {
    throw Error("decode: --contexts and --method need at least one value");
  }
  std::vector<size_t> contexts = opt.contexts;
  std::sort(contexts.begin(), contexts.end());
  contexts.erase(std::unique(contexts.begin(), contexts.end()), contexts.end());
  if (contexts.front() < 2) throw Error("decode: contexts must be >= 2");
  if (opt.steps < 1 || opt.steps >= contexts.front()) {
    throw Error(fmt::format(
        "decode: --steps {} must be in [1, the smallest context {})", opt.steps,
        contexts.front()));
  }
  const size_t max_ctx = contexts.back();
  const size_t run_layers = opt.timed_layers
                                ? std::min(opt.timed_layers, shape.layers)
                                : shape.layers;
  const double layer_scale = double(shape.layers) / double(run_layers);
  const size_t G = shape.heads / shape.kv_heads, d = shape.head_dim;
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  // Bytes of one held token of one KV head (key + value).
  const Storage st_type = ParseStorage(opt.storage);
  const size_t row_bytes = 2 * StorageRowBytes(st_type, d);

  // K/V/Q from the synthetic generator: a stream of `period` tokens with
  // LLM-like geometry, cycled (every layer reads the same tokens).
  SyntheticSpec spec;
  spec.d = d;
  spec.seq = std::min<size_t>(max_ctx, 8192);
  spec.n_kv_heads = shape.kv_heads;
  spec.group = G;
  spec.seed = opt.seed;
  const Trace tr = MakeSynthetic(spec);
  const size_t period = tr.seq;
  // Token-major copies: k/v [period][kv][d], q [period][heads][d].
  std::vector<float> K(period * shape.kv_heads * d),
      V(period * shape.kv_heads * d), Q(period * shape.heads * d);
  for (size_t t = 0; t < period; ++t) {
    for (size_t h = 0; h < shape.kv_heads; ++h) {
      std::copy_n(tr.K(0, h, t), d, K.begin() + (t * shape.kv_heads + h) * d);
      std::copy_n(tr.V(0, h, t), d, V.begin() + (t * shape.kv_heads + h) * d);
    }
    for (size_t h = 0; h < shape.heads; ++h) {
      std::copy_n(tr.Q(0, h, t), d, Q.begin() + (t * shape.heads + h) * d);
    }
  }
  // Bulk appends of `exact` go through in chunks of the stream.
  std::vector<float> out(shape.heads * d);

  if (!opt.json && !opt.csv) {
    fmt::print(
        "## kvsketch decode\n\nmachine: {} | SIMD target: {} | cores: {}\n"
        "shape: {} | layers {} | heads {}/{} (q/kv) | head_dim {} | storage "
        "{} | rope theta {}\n"
        "K/V/Q: synthetic (period {} tokens, cycled). Compressed methods "
        "decode every token (append + attend, every run layer) and report "
        "the mean over all tokens since the previous checkpoint (every "
        "compaction included); `exact` is bulk-appended between checkpoints "
        "and reports the mean of the last {} decode steps. {} of {} layers "
        "run; times and bytes are scaled to all layers. State: the sketch "
        "state (its whole budget) for compressed methods, the rows held for "
        "exact.\n\n",
        CpuModel(), ChosenTargetName(), cores, opt.preset, shape.layers,
        shape.heads, shape.kv_heads, d, opt.storage, shape.rope_theta, period,
        opt.steps, run_layers, shape.layers);
    fmt::print(
        "| method | budget | threads | context | us/token | append us/head | "
        "vs exact | state MiB | held/head |\n"
        "|---|---|---|---|---|---|---|---|---|\n");
  }
  if (opt.csv) {
    fmt::print(
        "method,budget_tokens,threads,context,us_per_token,"
        "append_us_per_head,vs_exact,state_bytes,retained_per_head\n");
  }
  std::fflush(stdout);

  // `exact` first: the others are reported relative to it.
  std::vector<std::string> methods = opt.methods;
  std::stable_partition(methods.begin(), methods.end(),
                        [](const std::string& m) { return m == "exact"; });
  if (opt.threads.empty()) throw Error("decode: --threads needs a value");
  for (int th : opt.threads) {
    if (th < 0) throw Error("decode: --threads must be >= 0 (0 = all cores)");
    const int nthreads = th > 0 ? th : int(cores);
    std::vector<double> exact_us(contexts.size(), 0.0);
    for (const std::string& method : methods) {
      const bool exact = method == "exact";
      const std::vector<size_t> budgets =
          exact ? std::vector<size_t>{0} : opt.budgets;
      for (size_t budget : budgets) {
        SessionConfig cfg;
        cfg.layers = run_layers;
        cfg.n_heads = shape.heads;
        cfg.n_kv_heads = shape.kv_heads;
        cfg.dk = cfg.dv = d;
        cfg.method = method;
        cfg.storage = opt.storage;
        cfg.threads = nthreads;
        cfg.seed = opt.seed;
        cfg.rope_theta = shape.rope_theta;
        // `exact` holds the whole context (f32-token units: room to spare).
        cfg.budget_tokens_per_head = exact ? max_ctx + 64 : budget;
        Session session(cfg);
        size_t t = 0;         // tokens appended
        double append_s = 0;  // time in the timed steps' appends
        const auto step = [&] {
          const size_t at = t % period;
          for (size_t l = 0; l < run_layers; ++l) {
            const auto a0 = Clock::now();
            session.Append(l, K.data() + at * shape.kv_heads * d,
                           V.data() + at * shape.kv_heads * d);
            append_s +=
                std::chrono::duration<double>(Clock::now() - a0).count();
            session.Attend(l, Q.data() + at * shape.heads * d, out.data());
          }
          ++t;
        };
        for (size_t ci = 0; ci < contexts.size(); ++ci) {
          const size_t target = contexts[ci];
          const size_t timed_from = target - opt.steps;
          if (exact) {
            // Bulk: whole runs of the period at once.
            while (t < timed_from) {
              const size_t at = t % period;
              const size_t n = std::min(period - at, timed_from - t);
              for (size_t l = 0; l < run_layers; ++l) {
                session.Append(l, K.data() + at * shape.kv_heads * d,
                               V.data() + at * shape.kv_heads * d, n);
              }
              t += n;
            }
          }
          // Compressed methods: every token from the previous checkpoint is
          // decoded and timed (the mean includes every compaction); exact:
          // the last `steps` tokens.
          const size_t from = exact ? timed_from : t;
          append_s = 0;
          const auto t0 = Clock::now();
          while (t < target) step();
          const double per_token =
              std::chrono::duration<double>(Clock::now() - t0).count() /
              double(target - from);
          const SessionStats st = session.Stats();
          Row row{
              method,
              budget,
              nthreads,
              target,
              per_token * 1e6 * layer_scale,
              append_s * 1e6 /
                  double((target - from) * run_layers * shape.kv_heads),
              size_t(double(exact ? st.retained * row_bytes : st.state_bytes) *
                     layer_scale),
              st.retained / (run_layers * shape.kv_heads),
              exact ? "bulk" : "decoded"};
          if (exact) exact_us[ci] = row.us_per_token;
          const double vs =
              exact_us[ci] > 0 ? row.us_per_token / exact_us[ci] : 0.0;
          if (opt.json) {
            fmt::print(
                "{{\"preset\":\"{}\",\"layers\":{},\"heads\":{},\"kv_heads\":"
                "{},\"head_dim\":{},\"storage\":\"{}\",\"rope_theta\":{},"
                "\"method\":\"{}\","
                "\"budget_tokens\":{},\"threads\":{},\"context\":{},"
                "\"us_per_token\":{:.3f},\"append_us_per_head\":{:.3f},\"vs_"
                "exact\":{:.4f},\"state_bytes\":"
                "{},\"retained_per_head\":{},\"history\":\"{}\"}}\n",
                opt.preset, shape.layers, shape.heads, shape.kv_heads, d,
                opt.storage, shape.rope_theta, method, budget, nthreads, target,
                row.us_per_token, row.append_us, vs, row.state_bytes,
                row.retained, row.how);
          } else if (opt.csv) {
            fmt::print("{},{},{},{},{:.3f},{:.3f},{:.4f},{},{}\n", method,
                       budget, nthreads, target, row.us_per_token,
                       row.append_us, vs, row.state_bytes, row.retained);
          } else {
            fmt::print(
                "| {} | {} | {} | {} | {:.1f} | {:.2f} | {} | {:.1f} | {} |\n",
                method, exact ? std::string("-") : fmt::format("{}", budget),
                nthreads, target, row.us_per_token, row.append_us,
                vs > 0 ? fmt::format("{:.3f}", vs) : std::string("-"),
                row.state_bytes / 1048576.0, row.retained);
          }
          std::fflush(stdout);
        }
      }
    }
  }
  return 0;
}

}  // namespace kvsketch
