// `kvsketch analyze`: per (layer, KV head) compressibility diagnostic --
// norms, logit range, effective attended tokens, mass outside sinks +
// window, and the error predicted from the spectrum of the response Gram
// (docs/risk.md) -- checked against the measured error of a method.
#pragma once

#include <string>
#include <vector>

#include "engine/cli/bench_units.h"
#include "engine/sketch/sketch.h"

namespace kvsketch {

struct AnalyzeOptions {
  bench::Workload workload;
  std::string method;  // empty: the recommended default
  std::vector<size_t> budgets = {32, 64, 128};
  size_t eval_max = 256;
  int threads = 0;
  bool json = false;
  SketchConfig base;
};

int RunAnalyze(const AnalyzeOptions& opt);

// The diagnostic of one unit, from calibration queries in the first half of
// the stream (positions [J/2, J), J = min(seq / 2, 1024), or min(seq, 2 B)
// when the largest budget B would hold all of that).
struct HeadDiagnostic {
  double key_max = 0, query_max = 0, logit_range = 0;
  double eff_tokens = 0;             // mean 1 / sum_i a_i^2
  std::vector<double> outside_mass;  // per requested budget
  // Per requested budget B: the window w_B = (B - sinks) / 2 is exact, and
  // residual[b][s] is the residual trace of the response Gram of the tokens
  // outside sinks + window after s pivots.
  std::vector<size_t> window;
  std::vector<std::vector<double>> residual;
  size_t sinks = 0;
  std::vector<size_t> budgets;
  double output_energy = 0;  // sum_q |o_q|^2
  // Predicted relative error with `tokens` tokens under the window of
  // requested budget b (sinks + window + the rest as pivots).
  double Predicted(size_t b, size_t tokens) const;
  double Predicted(size_t b) const { return Predicted(b, budgets[b]); }
};

HeadDiagnostic Diagnose(const bench::Unit& u,
                        const std::vector<size_t>& budgets, size_t sinks,
                        size_t max_rank);

// Splits units * per_unit tokens over the units to minimise the sum of the
// predicted errors (curve of requested budget 0 of each diagnostic; greedy
// marginal gains in steps of per_unit / 8; every unit keeps at least
// `min_tokens`).
// The least a head gets in an adaptive split of `budget` tokens per head.
inline size_t SplitMinTokens(size_t budget, size_t sinks) {
  return budget / 4 > sinks + 4 ? budget / 4 : sinks + 4;
}
std::vector<size_t> AdaptiveSplit(const std::vector<HeadDiagnostic>& d,
                                  size_t per_unit, size_t min_tokens);

// Tokens a budget of `budget` fp32-token equivalents holds in rows of the
// configuration's storages (dk, dv of the unit): the diagnostic and the
// split speak in held tokens.
inline size_t HeldTokens(size_t budget, const SketchConfig& c, size_t dk,
                         size_t dv) {
  return BudgetBytesForTokens(budget, dk, dv) /
         (StorageRowBytes(c.storage_k, dk) + StorageRowBytes(c.storage_v, dv));
}
// The adaptive split of `budget` fp32-token equivalents per unit, the way
// `bench --budget-split adaptive` and `analyze` do it: each unit's
// diagnostic with the least share as its window (SplitDiagnose), then the
// greedy split in held tokens, returned in fp32-token equivalents (same
// total, units * budget).
HeadDiagnostic SplitDiagnose(const bench::Unit& u, size_t budget, size_t sinks,
                             const SketchConfig& c);
std::vector<size_t> AdaptiveBudgetSplit(const std::vector<HeadDiagnostic>& d,
                                        size_t budget, size_t sinks,
                                        const SketchConfig& c, size_t dk,
                                        size_t dv);

}  // namespace kvsketch
