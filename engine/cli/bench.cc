#include "engine/cli/bench.h"

#include <tbb/global_control.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <vector>

#include "arch/targets.h"
#include "engine/budget/arena.h"
#include "engine/cli/analyze.h"
#include "engine/cli/bench_units.h"
#include "engine/cli/machine.h"
#include "engine/io/file.h"  // PhysicalMemoryBytes
#include "engine/io/synthetic.h"
#include "engine/io/trace.h"
#include "engine/session/cores.h"
#include "fmt/core.h"
#include "kvsketch/error.h"

namespace kvsketch {
namespace bench {

using Clock = std::chrono::steady_clock;

// Exact causal attention outputs in double precision at the positions.
std::vector<double> ExactOutputs(const Trace& t, size_t l, size_t kvh,
                                 const std::vector<size_t>& pos) {
  const size_t G = t.group(), dk = t.dk, dv = t.dv;
  std::vector<double> out(pos.size() * G * dv);
  std::vector<double> s(t.seq);
  for (size_t pi = 0; pi < pos.size(); ++pi) {
    const size_t j = pos[pi];
    for (size_t g = 0; g < G; ++g) {
      const float* q = t.Q(l, kvh * G + g, j);
      double mx = -INFINITY;
      for (size_t i = 0; i <= j; ++i) {
        const float* k = t.K(l, kvh, i);
        double dot = 0;
        for (size_t c = 0; c < dk; ++c) dot += double(q[c]) * k[c];
        s[i] = dot * t.scale;
        mx = std::max(mx, s[i]);
      }
      double z = 0;
      double* o = out.data() + (pi * G + g) * dv;
      for (size_t c = 0; c < dv; ++c) o[c] = 0;
      for (size_t i = 0; i <= j; ++i) {
        const double p = std::exp(s[i] - mx);
        z += p;
        const float* v = t.V(l, kvh, i);
        for (size_t c = 0; c < dv; ++c) o[c] += p * v[c];
      }
      for (size_t c = 0; c < dv; ++c) o[c] /= z;
    }
  }
  return out;
}

std::vector<size_t> EvalPositions(size_t seq, size_t budget, size_t max) {
  std::vector<size_t> pos;
  if (max == 0) throw Error("--eval-max must be at least 1");
  if (budget >= seq) return pos;
  const size_t count = seq - budget;
  const size_t stride = std::max<size_t>(1, (count + max - 1) / max);
  for (size_t j = seq - 1 + 1; j-- > budget;) {
    if ((seq - 1 - j) % stride == 0) pos.push_back(j);
  }
  std::reverse(pos.begin(), pos.end());
  return pos;
}

std::vector<size_t> TracePositions(const Trace& t, size_t budget, size_t max) {
  if (t.eval_positions.empty()) return EvalPositions(t.seq, budget, max);
  if (max == 0) throw Error("--eval-max must be at least 1");
  std::vector<size_t> pos;
  for (size_t p : t.eval_positions) {
    if (p >= budget && p < t.seq) pos.push_back(p);
  }
  return pos;
}

Result RunUnit(const Unit& u, const SketchConfig& base, size_t budget_tokens,
               size_t budget_bytes, const std::vector<size_t>& pos,
               const std::vector<double>& exact) {
  const Trace& t = *u.trace;
  Result r;
  SketchConfig c = base;
  c.dk = t.dk;
  c.dv = t.dv;
  c.scale = t.scale;
  c.max_group = t.group();
  if (t.rope.present) {
    c.rope_theta = t.rope.theta;
    c.rope_dims = t.rope.dims;
    c.rope_interleaved = t.rope.interleaved;
    c.rope_first_position = t.rope.first_position;
  }
  c.budget_bytes = budget_bytes
                       ? budget_bytes
                       : BudgetBytesForTokens(budget_tokens, t.dk, t.dv);
  // The reference keeps everything: give it the whole sequence.
  if (c.method == Method::kExact) {
    c.budget_bytes = t.seq * StateRowBytes(c);
  }
  c.stream = (uint64_t(u.layer) << 32) | u.head;
  r.budget_bytes = c.budget_bytes;
  const size_t G = t.group(), dv = t.dv;
  try {
    Arena arena(c.budget_bytes);
    std::unique_ptr<Sketch> sk = Sketch::Create(c, arena);
    std::vector<float> ws(WorkspaceFloats(c));
    std::vector<float> q(G * t.dk), out(G * dv);
    size_t next = 0;
    for (size_t j = 0; j < t.seq; ++j) {
      auto t0 = Clock::now();
      sk->Append(t.K(u.layer, u.head, j), t.V(u.layer, u.head, j), ws.data());
      auto t1 = Clock::now();
      for (size_t g = 0; g < G; ++g) {
        const float* src = t.Q(u.layer, u.head * G + g, j);
        std::copy(src, src + t.dk, q.begin() + g * t.dk);
      }
      sk->Attend(q.data(), G, out.data(), ws.data());
      auto t2 = Clock::now();
      r.append_s += std::chrono::duration<double>(t1 - t0).count();
      r.attend_s += std::chrono::duration<double>(t2 - t1).count();
      ++r.appends;
      r.queries += G;
      if (next < pos.size() && pos[next] == j) {
        for (size_t g = 0; g < G; ++g) {
          const double* y = exact.data() + (next * G + g) * dv;
          double num = 0, den = 0;
          for (size_t c2 = 0; c2 < dv; ++c2) {
            const double e = out[g * dv + c2] - y[c2];
            num += e * e;
            den += y[c2] * y[c2];
          }
          r.errors.push_back(std::sqrt(num / std::max(den, 1e-300)));
        }
        ++next;
      }
    }
    r.bytes = sk->bytes();
    r.retained = sk->retained();
  } catch (const Error& e) {
    r.error = e.what();
  }
  return r;
}

// JSON has no NaN: null instead.
std::string JsonNum(double x) {
  return std::isfinite(x) ? fmt::format("{:.6g}", x) : "null";
}

double Quantile(std::vector<double> v, double q) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const size_t i =
      std::min(v.size() - 1, size_t(q * double(v.size() - 1) + 0.5));
  return v[i];
}

}  // namespace bench

namespace {

using namespace bench;

void PrintNorms(const std::vector<Trace>& traces, bool json) {
  double ks = 0, qs = 0, vs = 0, kmax = 0, qmax = 0, vmax = 0;
  size_t kn = 0, qn = 0;
  float scale = traces[0].scale;
  for (const Trace& t : traces) {
    for (size_t l = 0; l < t.layers; ++l) {
      for (size_t i = 0; i < t.n_kv_heads * t.seq; ++i) {
        double a = 0, b = 0;
        for (size_t c = 0; c < t.dk; ++c)
          a += double(t.k[l][i * t.dk + c]) * t.k[l][i * t.dk + c];
        for (size_t c = 0; c < t.dv; ++c)
          b += double(t.v[l][i * t.dv + c]) * t.v[l][i * t.dv + c];
        ks += std::sqrt(a);
        vs += std::sqrt(b);
        kmax = std::max(kmax, std::sqrt(a));
        vmax = std::max(vmax, std::sqrt(b));
        ++kn;
      }
      for (size_t i = 0; i < t.n_heads * t.seq; ++i) {
        double a = 0;
        for (size_t c = 0; c < t.dk; ++c)
          a += double(t.q[l][i * t.dk + c]) * t.q[l][i * t.dk + c];
        qs += std::sqrt(a);
        qmax = std::max(qmax, std::sqrt(a));
        ++qn;
      }
    }
  }
  const double range = scale * kmax * qmax;
  if (json) {
    fmt::print(
        "{{\"norms\":{{\"key_mean\":{:.4f},\"key_max\":{:.4f},\"query_mean\":{:"
        ".4f},"
        "\"query_max\":{:.4f},\"value_mean\":{:.4f},\"value_max\":{:.4f},"
        "\"scale\":{:.6f},\"logit_range\":{:.4f}}}}}\n",
        ks / kn, kmax, qs / qn, qmax, vs / kn, vmax, scale, range);
  } else {
    fmt::print(
        "norms: |k| mean {:.2f} max {:.2f} | |q| mean {:.2f} max {:.2f} | "
        "|v| mean {:.2f} max {:.2f} | logit range beta*max|k|*max|q| = "
        "{:.1f}\n\n",
        ks / kn, kmax, qs / qn, qmax, vs / kn, vmax, range);
  }
}

}  // namespace

std::vector<Trace> bench::LoadWorkload(const Workload& w, std::string* source) {
  std::vector<Trace> traces;
  if (!w.trace.empty()) {
    for (const std::string& dir : FindTraceDirs(w.trace))
      traces.push_back(LoadTrace(dir));
    *source = w.trace + " (" + std::to_string(traces.size()) + " traces)";
  } else {
    SyntheticSpec spec = SyntheticByName(w.synthetic, w.length, 0);
    if (w.kv_heads) {
      if (w.kv_heads > 4096) throw Error("--kv-heads must be at most 4096");
      spec.n_kv_heads = w.kv_heads;
    }
    // q, k, v in f32 plus the exact references: refuse what cannot fit in
    // this machine's memory before allocating it.
    const double bytes = double(spec.seq) * double(spec.n_kv_heads) *
                         double(spec.d) * double(spec.group + 2) * 4.0 * 1.5;
    const uint64_t mem = PhysicalMemoryBytes();
    if (spec.seq < 2 || (mem && bytes > double(mem) / 2)) {
      throw Error("synthetic workload of " + std::to_string(spec.seq) +
                  " tokens x " + std::to_string(spec.n_kv_heads) +
                  " KV heads needs about " + std::to_string(bytes / 1e9) +
                  " GB; this machine has " + std::to_string(double(mem) / 1e9) +
                  " GB (and at least 2 tokens are needed)");
    }
    traces.push_back(MakeSynthetic(spec));
    ValidateTrace(traces.back(), traces.back().name);
    *source = traces[0].name;
  }
  return traces;
}

void bench::CheckStorageRange(const std::vector<Trace>& traces,
                              const SketchConfig& c) {
  CheckStoragePair(c.storage_k, c.storage_v);
  for (const Trace& t : traces)
    for (size_t l = 0; l < t.layers; ++l)
      for (const auto* a : {&t.k[l], &t.v[l]}) {
        const Storage s = a == &t.k[l] ? c.storage_k : c.storage_v;
        const float limit = InputMaxAbs(s);
        for (float x : *a)
          if (std::fabs(x) > limit) {
            throw Error(t.name + ": layer " + std::to_string(l) + " has " +
                        (a == &t.k[l] ? "a key" : "a value") + " of " +
                        std::to_string(x) + ", beyond the " + StorageName(s) +
                        " storage range (|x| <= " + std::to_string(limit) +
                        "); use --storage f32");
          }
      }
}

namespace {

// What every bench run checks before it measures (and before RunBench
// prints anything).
void CheckBench(const std::vector<Trace>& traces, const BenchOptions& opt) {
  if (traces.empty()) throw Error("bench: no trace to evaluate");
  bench::CheckStorageRange(traces, opt.base);
  for (const Trace& t : traces) {
    if (t.dk != traces[0].dk || t.dv != traces[0].dv) {
      throw Error("all traces of a set must share head dimensions");
    }
  }
}

int BenchThreads(const BenchOptions& opt) {
  return opt.threads > 0 ? opt.threads : int(DefaultThreads());
}

}  // namespace

void EvaluateTraces(const std::vector<Trace>& traces, const BenchOptions& opt,
                    const std::function<void(const BenchRow&)>& on_row) {
  using namespace bench;
  CheckBench(traces, opt);
  std::vector<Unit> units;
  for (const Trace& t : traces)
    for (size_t l = 0; l < t.layers; ++l)
      for (size_t h = 0; h < t.n_kv_heads; ++h) units.push_back({&t, l, h});
  std::vector<Method> methods;
  for (const auto& m : opt.methods) methods.push_back(ParseMethod(m));
  std::vector<size_t> budgets = opt.budgets;
  if (opt.budget_bytes) budgets = {0};
  const bool adaptive = opt.budget_split == "adaptive";
  if (adaptive && opt.budget_bytes) {
    throw Error("--budget-split adaptive works with --budget-tokens");
  }
  if (opt.eval_max == 0) throw Error("--eval-max must be at least 1");
  for (size_t b : opt.budgets)
    if (b == 0 && !opt.budget_bytes)
      throw Error("--budget-tokens must be at least 1 (got 0)");
  tbb::task_arena pool(BenchThreads(opt));
  for (size_t budget : budgets) {
    // Exact references per unit at the positions this budget evaluates.
    const size_t eval_from =
        opt.budget_bytes
            ? opt.budget_bytes / ((traces[0].dk + traces[0].dv) * 4)
            : budget;
    std::vector<std::vector<size_t>> pos(units.size());
    std::vector<std::vector<double>> exact(units.size());
    pool.execute([&] {
      tbb::parallel_for(size_t(0), units.size(), [&](size_t i) {
        pos[i] = TracePositions(*units[i].trace, eval_from, opt.eval_max);
        exact[i] = ExactOutputs(*units[i].trace, units[i].layer, units[i].head,
                                pos[i]);
      });
    });
    // Adaptive split: the same total tokens, shared by the diagnostic of
    // `kvsketch analyze` (calibration queries from the first half).
    std::vector<size_t> unit_tokens(units.size(), budget);
    if (adaptive && budget > 0) {
      std::vector<HeadDiagnostic> diag(units.size());
      pool.execute([&] {
        tbb::parallel_for(size_t(0), units.size(), [&](size_t i) {
          diag[i] = SplitDiagnose(units[i], budget, opt.base.sinks, opt.base);
        });
      });
      unit_tokens = AdaptiveBudgetSplit(diag, budget, opt.base.sinks, opt.base,
                                        traces[0].dk, traces[0].dv);
    }
    for (Method m : methods) {
      SketchConfig base = opt.base;
      base.method = m;
      std::vector<Result> res(units.size());
      const auto wall0 = Clock::now();
      pool.execute([&] {
        tbb::parallel_for(size_t(0), units.size(), [&](size_t i) {
          res[i] = RunUnit(units[i], base, unit_tokens[i], opt.budget_bytes,
                           pos[i], exact[i]);
        });
      });
      BenchRow row;
      row.method = MethodName(m);
      row.budget_tokens = budget;
      row.wall_s = std::chrono::duration<double>(Clock::now() - wall0).count();
      std::vector<double> all;
      size_t retained = 0, appends = 0, queries = 0;
      double as = 0, qs = 0;
      for (const Result& r : res) {
        if (!r.error.empty() && row.error.empty()) row.error = r.error;
        all.insert(all.end(), r.errors.begin(), r.errors.end());
        row.bytes_used = std::max(row.bytes_used, r.bytes);
        retained += r.retained;
        appends += r.appends;
        queries += r.queries;
        as += r.append_s;
        qs += r.attend_s;
      }
      row.positions = all.size();
      // Mean budget per head (differs per head when adaptive).
      for (const Result& r : res) row.budget_bytes += r.budget_bytes;
      row.budget_bytes /= res.size();
      double mean = 0;
      for (double e : all) mean += e;
      row.mean = all.empty() ? NAN : mean / double(all.size());
      row.p50 = Quantile(all, 0.5);
      row.p95 = Quantile(all, 0.95);
      row.append_ns = appends ? as / appends * 1e9 : 0;
      row.attend_ns = queries ? qs / queries * 1e9 : 0;
      row.retained = double(retained) / double(units.size());
      on_row(row);
    }
  }
}

int RunBench(const BenchOptions& opt) {
  using namespace bench;
  std::string source;
  const std::vector<Trace> traces = LoadWorkload(opt.workload, &source);
  CheckBench(traces, opt);
  const int threads = BenchThreads(opt);
  const bool table = !opt.json && !opt.csv;
  SketchConfig with_dims = opt.base;
  with_dims.dk = traces[0].dk;
  with_dims.dv = traces[0].dv;
  const std::string storage_label =
      StorageLabel(opt.base.storage_k, opt.base.storage_v) +
      (RotatedSide(opt.base.storage_k, with_dims.dk, opt.base.rotate) ||
               RotatedSide(opt.base.storage_v, with_dims.dv, opt.base.rotate)
           ? "+rot"
           : "");
  if (table) {
    const Trace& t0 = traces[0];
    fmt::print(
        "## kvsketch bench\n\nmachine: {} | SIMD: {} | threads: {} | workload: "
        "{} | "
        "d_k={} d_v={} heads={}/{} (q/kv) layers={} seq={} | sinks={} "
        "seed={} storage={} (a budget of B tokens = the bytes of B f32 "
        "tokens)\n",
        CpuModel(), ChosenTargetName(), threads, source, t0.dk, t0.dv,
        t0.n_heads, t0.n_kv_heads, t0.layers, t0.seq, opt.base.sinks,
        opt.base.seed, StorageSummary(with_dims));
  }
  if (!opt.csv) PrintNorms(traces, opt.json);
  if (opt.csv) {
    fmt::print(
        "workload,split,storage,method,budget_tokens,budget_bytes,bytes_used,"
        "retained,"
        "mean_rel_err,p50_rel_err,p95_rel_err,append_ns_per_token,"
        "attend_ns_per_query,positions,wall_s,error\n");
  }
  std::vector<Method> methods;
  for (const auto& m : opt.methods) methods.push_back(ParseMethod(m));
  size_t measured_rows = 0;
  // Mean error of each (budget, method) row, for the error / best table.
  std::map<std::pair<size_t, Method>, double> means;
  std::string first_failure;
  const size_t steps =
      (opt.budget_bytes ? 1 : opt.budgets.size()) * methods.size();
  size_t step = 0;
  const bool progress = !opt.quiet && isatty(2);
  if (table) {
    fmt::print(
        "| method | budget tokens | budget B/head | used B/head | retained | "
        "mean err | p50 err | p95 err | append ns/tok | attend ns/query | "
        "positions | wall s |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  }
  EvaluateTraces(traces, opt, [&](const BenchRow& r) {
    const Method m = ParseMethod(r.method);
    const size_t budget = r.budget_tokens;
    const std::string& failure = r.error;
    // The exact reference alone is not a measurement of a method (unless
    // it is all that was asked for).
    const bool only_exact = methods.size() == 1 && m == Method::kExact;
    if (failure.empty() && r.positions > 0 &&
        (m != Method::kExact || only_exact))
      ++measured_rows;
    if (!failure.empty() && first_failure.empty()) first_failure = failure;
    if (progress) {
      std::fprintf(stderr, "\r[%zu/%zu] %s %zu tokens   ", ++step, steps,
                   MethodName(m), budget);
      if (step == steps) std::fprintf(stderr, "\n");
      std::fflush(stderr);
    }
    if (failure.empty() && r.positions > 0 && m != Method::kExact) {
      means[{budget, m}] = r.mean;
    }
    if (opt.csv) {
      std::string err = failure;
      for (char& ch : err)
        if (ch == ',' || ch == '"' || ch == '\n') ch = ' ';
      fmt::print(
          "{},{},{},{},{},{},{},{:.2f},{},{},{},{:.1f},{:.1f},{},{:.4f},{}\n",
          source, opt.budget_split, storage_label, MethodName(m), budget,
          r.budget_bytes, r.bytes_used, r.retained, JsonNum(r.mean),
          JsonNum(r.p50), JsonNum(r.p95), r.append_ns, r.attend_ns, r.positions,
          r.wall_s, err);
    } else if (opt.json) {
      fmt::print(
          "{{\"method\":\"{}\",\"storage\":\"{}\",\"budget_tokens\":{},"
          "\"budget_bytes\":{},"
          "\"bytes_used\":{},\"retained\":{:.1f},\"mean_rel_err\":{},"
          "\"p50_rel_err\":{},\"p95_rel_err\":{},"
          "\"append_ns_per_token\":{:.1f},\"attend_ns_per_query\":{:.1f},"
          "\"positions\":{},\"wall_s\":{:.4f}{}}}\n",
          MethodName(m), storage_label, budget, r.budget_bytes, r.bytes_used,
          r.retained, JsonNum(r.mean), JsonNum(r.p50), JsonNum(r.p95),
          r.append_ns, r.attend_ns, r.positions, r.wall_s,
          failure.empty() ? "" : ",\"error\":\"" + failure + "\"");
    } else if (!failure.empty()) {
      fmt::print("| {} | {} | {} | - | - | failed: {} | | | | | | |\n",
                 MethodName(m), budget, r.budget_bytes, failure);
    } else {
      fmt::print(
          "| {} | {} | {} | {} | {:.1f} | {:.4f} | {:.4f} | {:.4f} | {:.0f} "
          "| "
          "{:.0f} | {} | {:.3f} |\n",
          MethodName(m), budget, r.budget_bytes, r.bytes_used, r.retained,
          r.mean, r.p50, r.p95, r.append_ns, r.attend_ns, r.positions,
          r.wall_s);
    }
    std::fflush(stdout);
  });
  if (opt.json) {
    fmt::print("{{\"peak_rss_bytes\":{},\"peak_vm_bytes\":{}}}\n",
               PeakRssBytes(), PeakVirtualBytes());
  } else if (table) {
    // Each method's mean error over the best method's at the same budget
    // (exact excluded): "within 1.15x of the best" is one look.
    std::vector<size_t> cols;
    for (const auto& kv : means) {
      if (cols.empty() || cols.back() != kv.first.first)
        cols.push_back(kv.first.first);
    }
    if (!cols.empty()) {
      fmt::print("\n| error / best |");
      for (size_t b : cols) fmt::print(" {} |", b);
      fmt::print("\n|---|");
      for (size_t i = 0; i < cols.size(); ++i) fmt::print("---|");
      fmt::print("\n");
      for (Method m : methods) {
        if (m == Method::kExact) continue;
        fmt::print("| {} |", MethodName(m));
        for (size_t b : cols) {
          double best = INFINITY;
          for (const auto& kv : means) {
            if (kv.first.first == b) best = std::min(best, kv.second);
          }
          const auto it = means.find({b, m});
          if (it == means.end()) {
            fmt::print(" - |");
          } else if (best > 0) {
            fmt::print(" {:.2f} |", it->second / best);
          } else {
            fmt::print(" {} |", it->second == best ? "1.00" : "inf");
          }
        }
        fmt::print("\n");
      }
    }
    fmt::print(
        "\nerror: relative L2 error of each query head's output vs exact "
        "causal "
        "attention (double precision), at positions j >= budget; bytes are per "
        "KV head (state only; per-thread scratch is separate); peak RSS {:.1f} "
        "MiB, peak virtual {:.1f} MiB\n",
        PeakRssBytes() / 1048576.0, PeakVirtualBytes() / 1048576.0);
  }
  if (measured_rows == 0) {
    std::fprintf(stderr,
                 "kvsketch: bench measured nothing: every row failed or had "
                 "no position to evaluate%s%s\n",
                 first_failure.empty() ? "" : " (first error: ",
                 first_failure.empty() ? "" : (first_failure + ")").c_str());
    return 3;
  }
  return 0;
}

}  // namespace kvsketch
