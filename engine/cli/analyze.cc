#include "engine/cli/analyze.h"

#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>

#include "arch/balance.h"  // GramLower, GramRows, GramStride
#include "arch/risk.h"     // PivotedCholesky
#include "arch/targets.h"
#include "engine/cli/machine.h"
#include "engine/io/synthetic.h"
#include "engine/session/cores.h"
#include "fmt/core.h"
#include "kvsketch/error.h"
#include "kvsketch/kvsketch.h"

namespace kvsketch {

using bench::Unit;

double HeadDiagnostic::Predicted(size_t b, size_t tokens) const {
  const std::vector<double>& r = residual[b];
  if (r.empty() || !(output_energy > 0)) return 0.0;
  const size_t fixed = sinks + window[b];
  const size_t s = std::min(tokens > fixed ? tokens - fixed : 0, r.size() - 1);
  return std::sqrt(std::max(0.0, r[s]) / output_energy);
}

HeadDiagnostic Diagnose(const Unit& u, const std::vector<size_t>& budgets,
                        size_t sinks, size_t max_rank) {
  const Trace& t = *u.trace;
  const size_t G = t.group(), dk = t.dk, dv = t.dv;
  HeadDiagnostic d;
  for (size_t i = 0; i < t.seq; ++i) {
    double k2 = 0;
    for (size_t c = 0; c < dk; ++c)
      k2 += double(t.K(u.layer, u.head, i)[c]) * t.K(u.layer, u.head, i)[c];
    d.key_max = std::max(d.key_max, std::sqrt(k2));
    for (size_t g = 0; g < G; ++g) {
      const float* q = t.Q(u.layer, u.head * G + g, i);
      double q2 = 0;
      for (size_t c = 0; c < dk; ++c) q2 += double(q[c]) * q[c];
      d.query_max = std::max(d.query_max, std::sqrt(q2));
    }
  }
  d.logit_range = double(t.scale) * d.key_max * d.query_max;
  // Calibration queries: 32 positions in [J/2, J) of every query head, J =
  // the first half of the stream (at most 1024), or more when the largest
  // budget would hold all of it (a diagnostic of nothing compressed).
  const size_t bmax =
      budgets.empty() ? 0 : *std::max_element(budgets.begin(), budgets.end());
  const size_t J = std::max<size_t>(
      2,
      std::min(t.seq, std::max(std::min<size_t>(t.seq / 2, 1024), 2 * bmax)));
  std::vector<size_t> pos;
  for (size_t p = 0; p < 32; ++p) {
    const size_t j = J / 2 + p * (J - J / 2) / 32;
    if (pos.empty() || pos.back() != j) pos.push_back(j);
  }
  const size_t Q = pos.size() * G, n = J;
  std::vector<double> a(Q * n, 0.0), o(Q * dv, 0.0);
  d.outside_mass.assign(budgets.size(), 0.0);
  for (size_t pi = 0; pi < pos.size(); ++pi) {
    const size_t j = pos[pi];
    for (size_t g = 0; g < G; ++g) {
      const size_t qi = pi * G + g;
      const float* q = t.Q(u.layer, u.head * G + g, j);
      double* aq = a.data() + qi * n;
      double mx = -INFINITY;
      for (size_t i = 0; i <= j; ++i) {
        double s = 0;
        for (size_t c = 0; c < dk; ++c)
          s += double(q[c]) * t.K(u.layer, u.head, i)[c];
        aq[i] = s * t.scale;
        mx = std::max(mx, aq[i]);
      }
      double z = 0;
      for (size_t i = 0; i <= j; ++i) z += aq[i] = std::exp(aq[i] - mx);
      double p2 = 0;
      for (size_t i = 0; i <= j; ++i) {
        aq[i] /= z;
        p2 += aq[i] * aq[i];
        for (size_t c = 0; c < dv; ++c)
          o[qi * dv + c] += aq[i] * t.V(u.layer, u.head, i)[c];
      }
      d.eff_tokens += 1.0 / p2;
      for (size_t c = 0; c < dv; ++c)
        d.output_energy += o[qi * dv + c] * o[qi * dv + c];
      for (size_t b = 0; b < budgets.size(); ++b) {
        const size_t w = budgets[b] > sinks ? budgets[b] - sinks : 0;
        double inside = 0;
        for (size_t i = 0; i <= j; ++i)
          if (i < sinks || i + w > j) inside += aq[i];
        d.outside_mass[b] += 1.0 - inside;
      }
    }
  }
  d.eff_tokens /= double(Q);
  for (double& m : d.outside_mass) m /= double(Q);
  // Response features f_i = [a_qi (v_i - o_q), lambda a_qi]_q of the tokens
  // outside sinks + window of query q, their Gram and its greedy pivoted
  // Cholesky: the residual trace after s pivots, per requested budget.
  double lambda = 0;
  for (size_t i = 0; i < n; ++i) {
    double v2 = 0;
    for (size_t c = 0; c < dv; ++c)
      v2 += double(t.V(u.layer, u.head, i)[c]) * t.V(u.layer, u.head, i)[c];
    lambda += std::sqrt(v2);
  }
  lambda /= double(n);
  d.sinks = sinks;
  d.budgets = budgets;
  const size_t D = Q * (dv + 1), Ds = (D + 15) / 16 * 16;
  const size_t gs = GramStride(n);
  std::vector<float> phi(n * Ds), gram(GramRows(n) * gs),
      scratch(GramScratchFloats(n, Ds));
  const size_t rank_cap = std::min(max_rank, n);
  std::vector<float> L(rank_cap * n + 1), diagv(2 * n), resid(rank_cap + 1);
  std::vector<uint32_t> piv(n);
  for (size_t b = 0; b < budgets.size(); ++b) {
    const size_t w = budgets[b] > sinks ? (budgets[b] - sinks) / 2 : 0;
    d.window.push_back(w);
    std::fill(phi.begin(), phi.end(), 0.0f);
    for (size_t pi = 0; pi < pos.size(); ++pi) {
      const size_t j = pos[pi];
      for (size_t i = sinks; i + w <= j; ++i) {  // old tokens only
        const float* v = t.V(u.layer, u.head, i);
        for (size_t g = 0; g < G; ++g) {
          const size_t qi = pi * G + g;
          const double ai = a[qi * n + i];
          float* f = phi.data() + i * Ds + qi * (dv + 1);
          for (size_t c = 0; c < dv; ++c)
            f[c] = float(ai * (v[c] - o[qi * dv + c]));
          f[dv] = float(ai * lambda);
        }
      }
    }
    GramLower(phi.data(), n, D, Ds, gram.data(), scratch.data());
    double total = 0;
    for (size_t i = 0; i < n; ++i) total += gram[i * gs + i];
    const size_t rank =
        PivotedCholesky(gram.data(), n, gs, rank_cap, 0.0f, L.data(), n,
                        diagv.data(), piv.data(), resid.data(),
                        /*factor=*/false);
    std::vector<double> r{total};
    for (size_t s2 = 0; s2 < rank; ++s2) r.push_back(resid[s2]);
    if (rank < rank_cap) r.push_back(0.0);  // nothing left beyond the rank
    d.residual.push_back(std::move(r));
  }
  return d;
}

std::vector<size_t> AdaptiveSplit(const std::vector<HeadDiagnostic>& d,
                                  size_t per_unit, size_t min_tokens) {
  const size_t n = d.size();
  std::vector<size_t> b(n, per_unit);
  if (n == 0 || per_unit <= min_tokens) return b;
  const size_t step = std::max<size_t>(1, per_unit / 8);
  size_t left = n * (per_unit - min_tokens);
  std::fill(b.begin(), b.end(), min_tokens);
  while (left > 0) {
    const size_t give = std::min(step, left);
    size_t best = 0;
    double gain = 0;
    for (size_t u = 0; u < n; ++u) {
      const double g = d[u].Predicted(0, b[u]) - d[u].Predicted(0, b[u] + give);
      if (g > gain) {
        gain = g;
        best = u;
      }
    }
    if (!(gain > 0)) break;  // no predicted gain anywhere: share the rest
    b[best] += give;
    left -= give;
  }
  for (size_t u = 0; left > 0; u = (u + 1) % n, --left) ++b[u];
  return b;
}

namespace {

std::vector<double> Ranks(const std::vector<double>& x) {
  std::vector<size_t> idx(x.size());
  for (size_t i = 0; i < x.size(); ++i) idx[i] = i;
  std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) {
    return x[a] < x[b] || (x[a] == x[b] && a < b);
  });
  std::vector<double> r(x.size());
  for (size_t i = 0; i < idx.size();) {
    size_t j = i;
    while (j + 1 < idx.size() && x[idx[j + 1]] == x[idx[i]]) ++j;
    for (size_t k = i; k <= j; ++k) r[idx[k]] = 0.5 * double(i + j);
    i = j + 1;
  }
  return r;
}

double Spearman(const std::vector<double>& x, const std::vector<double>& y) {
  if (x.size() < 2) return NAN;
  const std::vector<double> rx = Ranks(x), ry = Ranks(y);
  double mx = 0, my = 0;
  for (size_t i = 0; i < rx.size(); ++i) {
    mx += rx[i];
    my += ry[i];
  }
  mx /= double(rx.size());
  my /= double(ry.size());
  double sxy = 0, sxx = 0, syy = 0;
  for (size_t i = 0; i < rx.size(); ++i) {
    sxy += (rx[i] - mx) * (ry[i] - my);
    sxx += (rx[i] - mx) * (rx[i] - mx);
    syy += (ry[i] - my) * (ry[i] - my);
  }
  return sxx > 0 && syy > 0 ? sxy / std::sqrt(sxx * syy) : NAN;
}

}  // namespace

HeadDiagnostic SplitDiagnose(const Unit& u, size_t budget, size_t sinks,
                             const SketchConfig& c) {
  const size_t held = HeldTokens(budget, c, u.trace->dk, u.trace->dv);
  const size_t window_min = 2 * SplitMinTokens(held, sinks) - sinks;
  return Diagnose(u, {window_min}, sinks, 4 * held);
}

std::vector<size_t> AdaptiveBudgetSplit(const std::vector<HeadDiagnostic>& d,
                                        size_t budget, size_t sinks,
                                        const SketchConfig& c, size_t dk,
                                        size_t dv) {
  const size_t held = HeldTokens(budget, c, dk, dv);
  const std::vector<size_t> split =
      AdaptiveSplit(d, held, SplitMinTokens(held, sinks));
  // Held tokens back to fp32-token equivalents: floor, the remainder
  // round-robin.
  const size_t row =
      StorageRowBytes(c.storage_k, dk) + StorageRowBytes(c.storage_v, dv);
  std::vector<size_t> t(split.size());
  size_t sum = 0;
  for (size_t u = 0; u < t.size(); ++u)
    sum += t[u] = split[u] * row / BudgetBytesForTokens(1, dk, dv);
  size_t left = t.size() * budget > sum ? t.size() * budget - sum : 0;
  for (size_t u = 0; left > 0 && !t.empty(); u = (u + 1) % t.size(), --left)
    ++t[u];
  return t;
}

int RunAnalyze(const AnalyzeOptions& opt) {
  std::string source;
  const std::vector<Trace> traces = bench::LoadWorkload(opt.workload, &source);
  bench::CheckStorageRange(traces, opt.base);
  if (opt.budgets.empty()) throw Error("analyze needs at least one budget");
  std::vector<Unit> units;
  for (const Trace& t : traces)
    for (size_t l = 0; l < t.layers; ++l)
      for (size_t h = 0; h < t.n_kv_heads; ++h) units.push_back({&t, l, h});
  SketchConfig base = opt.base;
  base.method =
      ParseMethod(opt.method.empty() ? SessionConfig{}.method : opt.method);
  const size_t nb = opt.budgets.size();
  std::vector<size_t> held(nb);  // tokens each budget holds
  for (size_t b = 0; b < nb; ++b)
    held[b] = HeldTokens(opt.budgets[b], base, traces[0].dk, traces[0].dv);
  const size_t max_rank = *std::max_element(held.begin(), held.end()) * 2;
  std::vector<HeadDiagnostic> diag(units.size());
  std::vector<std::vector<HeadDiagnostic>> split_diag(
      nb, std::vector<HeadDiagnostic>(units.size()));
  std::vector<std::vector<double>> measured(units.size(),
                                            std::vector<double>(nb, NAN));
  const int threads = opt.threads > 0 ? opt.threads : int(DefaultThreads());
  tbb::task_arena pool(threads);
  pool.execute([&] {
    tbb::parallel_for(size_t(0), units.size(), [&](size_t i) {
      diag[i] = Diagnose(units[i], held, base.sinks, max_rank);
      for (size_t b = 0; b < nb; ++b) {
        split_diag[b][i] =
            SplitDiagnose(units[i], opt.budgets[b], base.sinks, base);
      }
      for (size_t b = 0; b < nb; ++b) {
        const auto pos = bench::TracePositions(*units[i].trace, opt.budgets[b],
                                               opt.eval_max);
        const auto exact = bench::ExactOutputs(*units[i].trace, units[i].layer,
                                               units[i].head, pos);
        const bench::Result r =
            bench::RunUnit(units[i], base, opt.budgets[b], 0, pos, exact);
        if (!r.error.empty()) throw Error(r.error);
        double m = 0;
        for (double e : r.errors) m += e;
        measured[i][b] = r.errors.empty() ? NAN : m / double(r.errors.size());
      }
    });
  });
  // Adaptive split of each budget (tokens per unit).
  std::vector<std::vector<size_t>> split(nb);
  for (size_t b = 0; b < nb; ++b)
    split[b] = AdaptiveBudgetSplit(split_diag[b], opt.budgets[b], base.sinks,
                                   base, traces[0].dk, traces[0].dv);
  // Per (layer, head): mean over the traces of a set.
  struct Row {
    size_t layer, head, count = 0;
    double kmax = 0, qmax = 0, range = 0, eff = 0;
    std::vector<double> outside, pred, meas, tokens;
  };
  std::map<std::pair<size_t, size_t>, Row> rows;
  for (size_t i = 0; i < units.size(); ++i) {
    Row& r = rows[{units[i].layer, units[i].head}];
    r.layer = units[i].layer;
    r.head = units[i].head;
    r.outside.resize(nb);
    r.pred.resize(nb);
    r.meas.resize(nb);
    r.tokens.resize(nb);
    ++r.count;
    r.kmax = std::max(r.kmax, diag[i].key_max);
    r.qmax = std::max(r.qmax, diag[i].query_max);
    r.range = std::max(r.range, diag[i].logit_range);
    r.eff += diag[i].eff_tokens;
    for (size_t b = 0; b < nb; ++b) {
      r.outside[b] += diag[i].outside_mass[b];
      r.pred[b] += diag[i].Predicted(b);
      r.meas[b] += measured[i][b];
      r.tokens[b] += double(split[b][i]);
    }
  }
  for (auto& kv : rows) {
    Row& r = kv.second;
    r.eff /= double(r.count);
    for (size_t b = 0; b < nb; ++b) {
      r.outside[b] /= double(r.count);
      r.pred[b] /= double(r.count);
      r.meas[b] /= double(r.count);
      r.tokens[b] /= double(r.count);
    }
  }
  std::vector<double> rho(nb);
  for (size_t b = 0; b < nb; ++b) {
    std::vector<double> x, y;
    for (const auto& kv : rows) {
      if (std::isfinite(kv.second.meas[b])) {
        x.push_back(kv.second.pred[b]);
        y.push_back(kv.second.meas[b]);
      }
    }
    rho[b] = Spearman(x, y);
  }
  double rho_mean = 0;
  size_t rho_n = 0;
  for (double r : rho)
    if (std::isfinite(r)) {
      rho_mean += r;
      ++rho_n;
    }
  rho_mean = rho_n ? rho_mean / double(rho_n) : NAN;

  if (opt.json) {
    for (const auto& kv : rows) {
      const Row& r = kv.second;
      std::string s = fmt::format(
          "{{\"layer\":{},\"head\":{},\"key_max\":{:.4f},\"query_max\":{:.4f},"
          "\"logit_range\":{:.4f},\"eff_tokens\":{:.3f}",
          r.layer, r.head, r.kmax, r.qmax, r.range, r.eff);
      for (size_t b = 0; b < nb; ++b) {
        s += fmt::format(
            ",\"b{}\":{{\"outside_mass\":{:.5f},\"predicted\":{},"
            "\"measured\":{},\"adaptive_tokens\":{:.1f}}}",
            opt.budgets[b], r.outside[b], bench::JsonNum(r.pred[b]),
            bench::JsonNum(r.meas[b]), r.tokens[b]);
      }
      fmt::print("{}}}\n", s);
    }
    std::string by;
    for (size_t b = 0; b < nb; ++b)
      by += fmt::format("{}\"{}\":{}", b ? "," : "", opt.budgets[b],
                        bench::JsonNum(rho[b]));
    fmt::print(
        "{{\"summary\":true,\"method\":\"{}\",\"heads\":{},\"spearman\":{},"
        "\"spearman_by_budget\":{{{}}}}}\n",
        MethodName(base.method), rows.size(), bench::JsonNum(rho_mean), by);
    return 0;
  }
  fmt::print(
      "## kvsketch analyze\n\nmachine: {} | SIMD: {} | workload: {} | "
      "method: {} | sinks: {} | storage: {}\n\n",
      CpuModel(), ChosenTargetName(), source, MethodName(base.method),
      base.sinks, [&] {
        SketchConfig c = base;
        c.dk = traces[0].dk;
        c.dv = traces[0].dv;
        return StorageSummary(c);
      }());
  std::string head =
      "| layer | head | max abs k | max abs q | logit range | eff tokens |";
  std::string sep = "|---|---|---|---|---|---|";
  for (size_t b : opt.budgets) {
    head +=
        fmt::format(" outside@{} | pred@{} | err@{} | split@{} |", b, b, b, b);
    sep += "---|---|---|---|";
  }
  fmt::print("{}\n{}\n", head, sep);
  for (const auto& kv : rows) {
    const Row& r = kv.second;
    std::string line =
        fmt::format("| {} | {} | {:.2f} | {:.2f} | {:.1f} | {:.1f} |", r.layer,
                    r.head, r.kmax, r.qmax, r.range, r.eff);
    for (size_t b = 0; b < nb; ++b)
      line += fmt::format(" {:.3f} | {:.4f} | {:.4f} | {:.0f} |", r.outside[b],
                          r.pred[b], r.meas[b], r.tokens[b]);
    fmt::print("{}\n", line);
  }
  fmt::print(
      "\noutside@B: attention mass outside sinks + the last B - sinks tokens; "
      "pred@B: sqrt(residual trace of the response Gram of the tokens outside "
      "sinks + a window of (B - sinks) / 2, after the other (B - sinks) / 2 "
      "pivots, / sum |o|^2), from calibration queries in the first half of "
      "the stream; "
      "err@B: measured mean relative error of {}; split@B: tokens the "
      "adaptive split gives this head out of B per head (use as "
      "SessionConfig::head_weights).\nSpearman(pred, err) over "
      "heads: ",
      MethodName(base.method));
  for (size_t b = 0; b < nb; ++b)
    fmt::print("{}@{} {:.3f}", b ? ", " : "", opt.budgets[b], rho[b]);
  fmt::print(" | mean {:.3f}\n", rho_mean);
  return 0;
}

}  // namespace kvsketch
