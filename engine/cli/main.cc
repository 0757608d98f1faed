// The `kvsketch` command-line tool.
#include <cstdio>
#include <exception>
#include <new>
#include <string>

#include "CLI/CLI.hpp"
#include "arch/targets.h"  // GetTargetInfo
#include "engine/cli/analyze.h"
#include "engine/cli/bench.h"
#include "engine/cli/decode.h"
#include "engine/cli/lm.h"
#include "engine/cli/oracle.h"
#include "engine/cli/speed.h"
#include "fmt/core.h"
#include "kvsketch/error.h"
#include "kvsketch/kvsketch.h"

namespace kvsketch {
namespace {

std::string Join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : " ") + x;
  return s;
}

// "4096", "64KiB", "4MiB", "1GiB", "4KB" -> bytes.
size_t ParseBytes(const std::string& text) {
  size_t pos = 0;
  double value = 0;
  try {
    value = std::stod(text, &pos);
  } catch (...) {
    throw Error("budget '" + text + "' is not a number with an optional unit");
  }
  const std::string unit = text.substr(pos);
  double mult = 1;
  if (unit.empty() || unit == "B") {
  } else if (unit == "KiB" || unit == "K" || unit == "k") {
    mult = 1024.0;
  } else if (unit == "MiB" || unit == "M") {
    mult = 1048576.0;
  } else if (unit == "GiB" || unit == "G") {
    mult = 1073741824.0;
  } else if (unit == "KB" || unit == "kB") {
    mult = 1e3;
  } else if (unit == "MB") {
    mult = 1e6;
  } else if (unit == "GB") {
    mult = 1e9;
  } else {
    throw Error("budget '" + text + "': unknown unit '" + unit + "'");
  }
  if (!(value > 0) || value * mult > 1e15) {
    throw Error("budget '" + text + "' must be positive and below 1 PB");
  }
  return size_t(value * mult);
}

// --storage / --storage-k / --storage-v / --rotate.
struct StorageFlags {
  std::string all = "f16", k, v, rotate = "on";
  Storage K() const { return ParseStorage(k.empty() ? all : k); }
  Storage V() const { return ParseStorage(v.empty() ? all : v); }
  void ApplyTo(SketchConfig& c) const {
    c.storage_k = K();
    c.storage_v = V();
    CheckStoragePair(c.storage_k, c.storage_v);
    c.rotate = rotate == "on";
  }
};

void AddStorageOptions(CLI::App* c, StorageFlags& f) {
  c->add_option("--storage", f.all,
                "rows of keys and values: f16, f32, bf16, q8, q4 or q4a")
      ->capture_default_str();
  c->add_option("--storage-k", f.k, "storage of the keys (default: --storage)");
  c->add_option("--storage-v", f.v,
                "storage of the values (default: --storage)");
  c->add_option("--rotate", f.rotate,
                "Hadamard rotation of quantized rows of a power-of-two head "
                "dimension: on or off")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
}

// --trace / --synthetic / --length / --kv-heads of bench, analyze, oracle.
void AddWorkloadOptions(CLI::App* c, bench::Workload& w) {
  c->add_option("--trace", w.trace,
                "trace directory or folder of traces (docs/DESIGN.md)");
  c->add_option("--synthetic", w.synthetic,
                "built-in workload: default, d128, long, needle")
      ->capture_default_str();
  c->add_option("--length", w.length, "synthetic length override");
  c->add_option("--kv-heads", w.kv_heads,
                "synthetic KV heads override (default 4)");
}

// A count that must be at least 1 (CLI11's PositiveNumber message prints
// the whole double range).
CLI::Validator AtLeastOne() {
  return CLI::Validator(
      [](std::string& s) -> std::string {
        try {
          size_t pos = 0;
          if (std::stoll(s, &pos) >= 1 && pos == s.size()) return "";
        } catch (...) {
        }
        return "must be a whole number >= 1, got '" + s + "'";
      },
      "INT>=1");
}

int RunTargets() {
  const TargetInfo info = GetTargetInfo();
  fmt::print("compiled:  {}\n", Join(info.compiled));
  fmt::print("supported: {}\n",
             info.supported.empty()
                 ? "(CPU detection unavailable; static baseline target only)"
                 : Join(info.supported));
  fmt::print("chosen:    {} ({} float lanes per vector, capped at 16)\n",
             info.chosen, ChosenFloatLanes());
  return 0;
}

}  // namespace
}  // namespace kvsketch

int main(int argc, char** argv) {
  CLI::App app{"kvsketch: attention KV cache inside a fixed memory budget"};
  app.set_version_flag("--version", kvsketch::BuildDescription());
  app.require_subcommand(1);
  auto* targets = app.add_subcommand(
      "targets", "SIMD targets compiled in, supported by this CPU, chosen");
  kvsketch::SpeedOptions speed_opt;
  auto* speed = app.add_subcommand(
      "speed",
      "attend GB/s vs measured read bandwidth, Gram GFLOP/s vs FMA peak");
  speed->add_flag("--json", speed_opt.json, "one JSON object per line");
  speed->add_flag("--quick", speed_opt.quick, "small sizes only");
  speed->add_option("--cold-mib", speed_opt.cold_mib,
                    "MiB cycled through for cold data (default 2x LLC, "
                    "64..1024)");
  speed->add_option("--n", speed_opt.lengths, "attend rows (comma-separated)")
      ->delimiter(',');
  speed->add_option("--d", speed_opt.dims, "head dims (comma-separated)")
      ->delimiter(',');
  speed
      ->add_option("--storage", speed_opt.storages,
                   "storages (comma-separated; f16 is always measured as "
                   "the baseline)")
      ->delimiter(',');
  speed->add_option("--reps", speed_opt.reps, "repetitions (median)")
      ->check(CLI::PositiveNumber);
  kvsketch::DecodeOptions dec_opt;
  auto* decode = app.add_subcommand(
      "decode",
      "per-token time of a decode loop (append + attend, all layers) on a "
      "model's attention shapes at growing contexts");
  decode
      ->add_option("--preset", dec_opt.preset,
                   "llama-3.2-1b, qwen2.5-0.5b or llama-3.1-8b")
      ->capture_default_str();
  decode->add_option("--layers", dec_opt.layers, "layers (default: preset)");
  decode->add_option("--heads", dec_opt.heads, "query heads (default: preset)");
  decode->add_option("--kv-heads", dec_opt.kv_heads,
                     "KV heads (default: preset)");
  decode->add_option("--head-dim", dec_opt.head_dim,
                     "head dimension (default: preset)");
  auto* dec_rope = decode->add_option(
      "--rope-theta", dec_opt.rope_theta,
      "RoPE theta given to the sessions, as serving the model would (risk "
      "rotates its probes to future positions with it; default: the "
      "preset's, 0 = none)");
  decode->add_option("--method", dec_opt.methods, "methods (comma-separated)")
      ->delimiter(',')
      ->capture_default_str();
  decode
      ->add_option("--budget-tokens", dec_opt.budgets,
                   "budgets in tokens per KV head (comma-separated)")
      ->delimiter(',')
      ->capture_default_str();
  decode
      ->add_option("--contexts", dec_opt.contexts,
                   "context checkpoints in tokens (comma-separated)")
      ->delimiter(',')
      ->capture_default_str();
  decode
      ->add_option("--threads", dec_opt.threads,
                   "thread counts (comma-separated; 0 = all cores)")
      ->delimiter(',')
      ->capture_default_str();
  decode->add_option("--steps", dec_opt.steps, "timed steps per checkpoint")
      ->capture_default_str();
  decode
      ->add_option("--timed-layers", dec_opt.timed_layers,
                   "layers actually run, times scaled to all (0 = all)")
      ->capture_default_str();
  decode->add_option("--storage", dec_opt.storage, "row storage")
      ->capture_default_str();
  decode->add_option("--seed", dec_opt.seed, "synthetic seed")
      ->capture_default_str();
  decode->add_flag("--json", dec_opt.json, "one JSON object per line");
  decode->add_flag("--csv", dec_opt.csv, "CSV rows (bench/plot.py --decode)");
  kvsketch::BenchOptions bench_opt;
  std::string budget_bytes_text, risk_summary = "on";
  kvsketch::StorageFlags bench_storage;
  auto* bench = app.add_subcommand(
      "bench", "accuracy, memory and speed of the sketches under a budget");
  kvsketch::AddWorkloadOptions(bench, bench_opt.workload);
  bench->add_option("--method", bench_opt.methods, "methods (comma-separated)")
      ->delimiter(',')
      ->capture_default_str();
  bench
      ->add_option("--budget-tokens", bench_opt.budgets,
                   "budgets in tokens per KV head (comma-separated)")
      ->delimiter(',')
      ->capture_default_str();
  bench->add_option("--budget", budget_bytes_text,
                    "budget in bytes per KV head, e.g. 4096, 64KiB, 4MiB");
  bench->add_option("--sinks", bench_opt.base.sinks, "exact first tokens")
      ->capture_default_str();
  bench
      ->add_option("--window", bench_opt.base.window,
                   "exact recent tokens (-1: method default)")
      ->capture_default_str();
  bench
      ->add_option(
          "--window-share", bench_opt.base.window_share,
          "default window as a share of the budget (-1: method default)")
      ->capture_default_str();
  kvsketch::AddStorageOptions(bench, bench_storage);
  bench
      ->add_option("--block", bench_opt.base.block,
                   "balance: items per halving")
      ->capture_default_str();
  bench->add_option("--tau", bench_opt.base.tau, "balance: kernel temperature")
      ->capture_default_str();
  bench->add_option("--gamma", bench_opt.base.gamma, "balance: walk step")
      ->capture_default_str();
  bench
      ->add_option("--value-offset", bench_opt.base.value_offset,
                   "balance: denominator weight in the kernel")
      ->capture_default_str();
  bench
      ->add_option("--risk-summary", risk_summary,
                   "risk: freed tokens merge into summary slots (on) or are "
                   "dropped and the kept reweighted (off)")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
  bench->add_option("--degree", bench_opt.base.degree, "taylor/hashed: degree")
      ->capture_default_str();
  bench
      ->add_option("--hash-bits", bench_opt.base.hash_bits,
                   "hashed: SimHash bits")
      ->capture_default_str();
  bench->add_option("--seed", bench_opt.base.seed, "random seed")
      ->capture_default_str();
  bench->add_option("--threads", bench_opt.threads, "threads (0 = all cores)")
      ->capture_default_str();
  bench
      ->add_option("--eval-max", bench_opt.eval_max,
                   "max evaluated positions per head")
      ->check(kvsketch::AtLeastOne())
      ->capture_default_str();
  bench->add_flag("--json", bench_opt.json, "one JSON object per line");
  bench->add_flag("--csv", bench_opt.csv, "CSV rows (for bench/plot.py)");
  bench->add_flag("-q,--quiet", bench_opt.quiet, "no progress on stderr");
  bench
      ->add_option("--budget-split", bench_opt.budget_split,
                   "uniform: every head gets the budget; adaptive: the total "
                   "is split by the diagnostic of `kvsketch analyze`")
      ->check(CLI::IsMember({"uniform", "adaptive"}))
      ->capture_default_str();
  kvsketch::AnalyzeOptions an_opt;
  auto* analyze = app.add_subcommand(
      "analyze",
      "per-head compressibility diagnostic vs the measured error of a method");
  kvsketch::AddWorkloadOptions(analyze, an_opt.workload);
  analyze->add_option("--method", an_opt.method,
                      "method whose error is measured (default: recommended)");
  analyze
      ->add_option("--budget-tokens", an_opt.budgets,
                   "budgets in tokens per KV head (comma-separated)")
      ->delimiter(',')
      ->capture_default_str();
  analyze->add_option("--sinks", an_opt.base.sinks, "exact first tokens")
      ->capture_default_str();
  kvsketch::StorageFlags an_storage;
  kvsketch::AddStorageOptions(analyze, an_storage);
  analyze->add_option("--eval-max", an_opt.eval_max, "positions per head")
      ->check(kvsketch::AtLeastOne())
      ->capture_default_str();
  analyze->add_option("--threads", an_opt.threads, "threads (0 = all cores)");
  analyze->add_flag("--json", an_opt.json, "one JSON object per line");
  kvsketch::OracleOptions or_opt;
  kvsketch::StorageFlags or_storage;
  auto* oracle = app.add_subcommand(
      "oracle",
      "clairvoyant eviction (knows every future query) vs sinks + window: "
      "the bound of selection alone");
  kvsketch::AddWorkloadOptions(oracle, or_opt.workload);
  oracle
      ->add_option("--budget-tokens", or_opt.budgets,
                   "budgets in tokens per KV head (comma-separated)")
      ->delimiter(',')
      ->capture_default_str();
  oracle->add_option("--sinks", or_opt.sinks, "exact first tokens")
      ->capture_default_str();
  kvsketch::AddStorageOptions(oracle, or_storage);  // the tokens a budget holds
  oracle->add_option("--eval-max", or_opt.eval_max, "positions per head")
      ->check(kvsketch::AtLeastOne())
      ->capture_default_str();
  oracle->add_option("--threads", or_opt.threads, "threads (0 = all cores)");
  oracle->add_flag("--json", or_opt.json, "one JSON object per budget");
  kvsketch::LmOptions lm_opt;
  std::string lm_budget_text;
  auto* lm = app.add_subcommand(
      "lm", "run a llama2.c checkpoint with its KV cache in kvsketch");
  lm->add_option("--model", lm_opt.model, "llama2.c checkpoint (.bin)")
      ->required();
  lm->add_option("--tokenizer", lm_opt.tokenizer, "llama2.c tokenizer (.bin)")
      ->required();
  lm->add_option("--eval", lm_opt.eval,
                 "text file: perplexity and KL vs the full cache");
  auto* prompt_opt =
      lm->add_option("--prompt", lm_opt.prompt, "generate from this text");
  lm->add_flag("--chat", lm_opt.chat,
               "multi-turn: each stdin line is a turn (one Prefill), then up "
               "to -n generated tokens; /regenerate drops the last answer "
               "(Truncate) and samples it again, /reset, /stats, /quit");
  lm->add_option("-n", lm_opt.n, "tokens to generate")->capture_default_str();
  lm->add_option("--temperature", lm_opt.temperature, "0 = greedy")
      ->capture_default_str();
  lm->add_option("--top-p", lm_opt.top_p, "nucleus sampling mass")
      ->capture_default_str();
  lm->add_option("--method", lm_opt.method,
                 "KV cache method (default: the recommended one, " +
                     kvsketch::SessionConfig{}.method + ")");
  lm->add_option("--budget-tokens", lm_opt.budget_tokens,
                 "budget in tokens per KV head")
      ->capture_default_str();
  lm->add_option("--budget", lm_budget_text,
                 "budget in bytes per KV head, e.g. 4KiB");
  kvsketch::StorageFlags lm_storage;
  kvsketch::AddStorageOptions(lm, lm_storage);
  lm->add_option("--sinks", lm_opt.sinks, "exact first tokens")
      ->capture_default_str();
  lm->add_option("--window", lm_opt.window, "exact recent tokens (-1: default)")
      ->capture_default_str();
  lm->add_option("--threads", lm_opt.threads, "threads (0 = all cores)")
      ->capture_default_str();
  lm->add_option("--seed", lm_opt.seed, "random seed")->capture_default_str();
  lm->add_option("--max-windows", lm_opt.max_windows,
                 "evaluate at most this many context windows (0 = all)");
  lm->add_option("--prefill-block", lm_opt.prefill_block,
                 "--eval: also run the method with the text fed in blocks of "
                 "this many tokens (Session::Prefill; 0: skip); --prompt: the "
                 "prompt goes in one Prefill when > 0")
      ->capture_default_str();
  lm->add_flag("--json", lm_opt.json, "one JSON object per line");
  lm->add_flag("--csv", lm_opt.csv, "one CSV summary row (bench/plot.py)");
  lm->add_flag("-q,--quiet", lm_opt.quiet, "no progress on stderr");
  CLI11_PARSE(app, argc, argv);
  // Every failure ends here with a message and a non-zero status: nothing
  // aborts (out of memory and library errors included).
  try {
    if (bench->parsed()) {
      if (!budget_bytes_text.empty()) {
        bench_opt.budget_bytes = kvsketch::ParseBytes(budget_bytes_text);
      }
      bench_storage.ApplyTo(bench_opt.base);
      bench_opt.base.risk_summary = risk_summary == "on";
      return kvsketch::RunBench(bench_opt);
    }
    if (analyze->parsed()) {
      an_storage.ApplyTo(an_opt.base);
      return kvsketch::RunAnalyze(an_opt);
    }
    if (oracle->parsed()) {
      or_storage.ApplyTo(or_opt.rows);
      return kvsketch::RunOracle(or_opt);
    }
    if (lm->parsed()) {
      if (!lm_budget_text.empty()) {
        lm_opt.budget_bytes = kvsketch::ParseBytes(lm_budget_text);
      }
      lm_opt.prompt_set = prompt_opt->count() > 0;
      lm_opt.storage = lm_storage.all;
      lm_opt.storage_k = lm_storage.k;
      lm_opt.storage_v = lm_storage.v;
      lm_opt.rotate = lm_storage.rotate == "on";
      return kvsketch::RunLm(lm_opt);
    }
    if (targets->parsed()) return kvsketch::RunTargets();
    if (speed->parsed()) return kvsketch::RunSpeed(speed_opt);
    if (decode->parsed()) {
      dec_opt.rope_theta_given = dec_rope->count() > 0;
      return kvsketch::RunDecode(dec_opt);
    }
  } catch (const kvsketch::Error& e) {
    std::fprintf(stderr, "kvsketch: %s\n", e.what());
    return 2;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr,
                 "kvsketch: out of memory (the workload or file is larger "
                 "than this machine can hold)\n");
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvsketch: internal error: %s\n", e.what());
    return 2;
  } catch (...) {
    std::fprintf(stderr, "kvsketch: unknown internal error\n");
    return 2;
  }
  return 0;
}
