#include "engine/cli/oracle.h"

#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <cmath>

#include "engine/cli/analyze.h"  // HeldTokens
#include "engine/cli/machine.h"
#include "engine/session/cores.h"
#include "fmt/core.h"
#include "kvsketch/error.h"

namespace kvsketch {

using bench::Unit;

OracleErrors OracleUnit(const Unit& u, size_t held, size_t sinks,
                        const std::vector<size_t>& pos) {
  const Trace& t = *u.trace;
  const size_t n = t.seq, G = t.group(), dk = t.dk, dv = t.dv;
  // A[j][i]: attention of query position j (summed over the group) to token
  // i; W[p][g][i]: the weights at the evaluated positions.
  std::vector<float> A(n * n, 0.0f);
  std::vector<double> W(pos.size() * G * n, 0.0), s(n);
  size_t next = 0;
  for (size_t j = 0; j < n; ++j) {
    const bool eval = next < pos.size() && pos[next] == j;
    for (size_t g = 0; g < G; ++g) {
      const float* q = t.Q(u.layer, u.head * G + g, j);
      double m = -INFINITY;
      for (size_t i = 0; i <= j; ++i) {
        const float* k = t.K(u.layer, u.head, i);
        double x = 0;
        for (size_t c = 0; c < dk; ++c) x += double(q[c]) * k[c];
        s[i] = x * t.scale;
        m = std::max(m, s[i]);
      }
      double z = 0;
      for (size_t i = 0; i <= j; ++i) z += s[i] = std::exp(s[i] - m);
      for (size_t i = 0; i <= j; ++i) {
        A[j * n + i] += float(s[i] / z);
        if (eval) W[(next * G + g) * n + i] = s[i] / z;
      }
    }
    if (eval) ++next;
  }
  // Attention still to come for every token: R_i = sum_{j >= t} A[j][i].
  std::vector<double> R(n, 0.0);
  for (size_t j = 0; j < n; ++j)
    for (size_t i = 0; i <= j; ++i) R[i] += A[j * n + i];
  const std::vector<double> exact =
      bench::ExactOutputs(t, u.layer, u.head, pos);
  auto error = [&](const std::vector<char>& keep, size_t p, size_t j) {
    double e = 0;
    std::vector<double> y(dv);
    for (size_t g = 0; g < G; ++g) {
      const double* w = &W[(p * G + g) * n];
      const double* o = &exact[(p * G + g) * dv];
      double z = 0, num = 0, den = 0;
      std::fill(y.begin(), y.end(), 0.0);
      for (size_t i = 0; i <= j; ++i) {
        if (!keep[i]) continue;
        const float* v = t.V(u.layer, u.head, i);
        z += w[i];
        for (size_t c = 0; c < dv; ++c) y[c] += w[i] * v[c];
      }
      for (size_t c = 0; c < dv; ++c) {
        const double d = (z > 0 ? y[c] / z : 0.0) - o[c];
        num += d * d;
        den += o[c] * o[c];
      }
      e += den > 0 ? std::sqrt(num / den) : 0.0;
    }
    return e;
  };
  OracleErrors r;
  std::vector<char> kw(n, 0), kc(n, 0);
  size_t count = 0;
  next = 0;
  for (size_t j = 0; j < n; ++j) {
    // Token j arrives; the query at j is asked after it.
    kw[j] = 1;
    if (j >= held && j - held + sinks < j) kw[j - held + sinks] = 0;
    kc[j] = 1;
    if (++count > held) {
      size_t victim = SIZE_MAX;
      for (size_t i = sinks; i < j; ++i)
        if (kc[i] && (victim == SIZE_MAX || R[i] < R[victim])) victim = i;
      if (victim == SIZE_MAX) victim = j;  // held <= sinks: nothing else
      kc[victim] = 0;
      --count;
    }
    if (next < pos.size() && pos[next] == j) {
      r.window += error(kw, next, j);
      r.clairvoyant += error(kc, next, j);
      r.count += G;
      ++next;
    }
    for (size_t i = 0; i <= j; ++i) R[i] -= A[j * n + i];  // j is now past
  }
  return r;
}

int RunOracle(const OracleOptions& opt) {
  std::string source;
  const std::vector<Trace> traces = bench::LoadWorkload(opt.workload, &source);
  if (opt.budgets.empty()) throw Error("oracle needs at least one budget");
  std::vector<Unit> units;
  for (const Trace& t : traces)
    for (size_t l = 0; l < t.layers; ++l)
      for (size_t h = 0; h < t.n_kv_heads; ++h) units.push_back({&t, l, h});
  const int threads = opt.threads > 0 ? opt.threads : int(DefaultThreads());
  tbb::task_arena pool(threads);
  if (!opt.json) {
    fmt::print(
        "## kvsketch oracle\n\nmachine: {} | workload: {} | sinks: {} | "
        "storage: {}\n\n| budget tokens | held tokens | window | clairvoyant "
        "eviction | ratio |\n|---|---|---|---|---|\n",
        CpuModel(), source, opt.sinks, [&] {
          SketchConfig c = opt.rows;
          c.dk = traces[0].dk;
          c.dv = traces[0].dv;
          return StorageSummary(c);
        }());
  }
  for (size_t budget : opt.budgets) {
    const size_t held =
        HeldTokens(budget, opt.rows, traces[0].dk, traces[0].dv);
    if (held <= opt.sinks) throw Error("oracle: budget holds only the sinks");
    std::vector<OracleErrors> res(units.size());
    pool.execute([&] {
      tbb::parallel_for(size_t(0), units.size(), [&](size_t i) {
        res[i] = OracleUnit(
            units[i], held, opt.sinks,
            bench::TracePositions(*units[i].trace, budget, opt.eval_max));
      });
    });
    OracleErrors sum;
    for (const OracleErrors& e : res) {
      sum.window += e.window;
      sum.clairvoyant += e.clairvoyant;
      sum.count += e.count;
    }
    const double w = sum.count ? sum.window / double(sum.count) : NAN;
    const double c = sum.count ? sum.clairvoyant / double(sum.count) : NAN;
    if (opt.json) {
      fmt::print(
          "{{\"budget_tokens\":{},\"held_tokens\":{},\"storage\":\"{}\","
          "\"window\":{},\"clairvoyant\":{},\"ratio\":{}}}\n",
          budget, held, StorageLabel(opt.rows.storage_k, opt.rows.storage_v),
          bench::JsonNum(w), bench::JsonNum(c), bench::JsonNum(c / w));
    } else {
      fmt::print("| {} | {} | {:.4f} | {:.4f} | {:.2f} |\n", budget, held, w, c,
                 c / w);
    }
  }
  if (!opt.json) {
    fmt::print(
        "\nwindow: sinks + the newest tokens; clairvoyant eviction: sinks + "
        "the tokens kept by an evictor that knows every future query (it "
        "drops the retained token with the least attention still to come, "
        "summed over the group). Both exact (no rounding, no metadata, weight "
        "1): mean relative error of every query head at positions j >= "
        "budget. It is a greedy evictor, not the optimum, but no streaming "
        "method knows the future: it shows what choosing tokens alone can "
        "reach.\n");
  }
  return 0;
}

}  // namespace kvsketch
