// `kvsketch oracle`: how far can eviction go? A clairvoyant bound for the
// streaming methods: sinks + the tokens chosen by an evictor that knows every
// future query (it evicts the retained token with the least attention still
// to come), against sinks + recent window, at the same held tokens.
#pragma once

#include <string>
#include <vector>

#include "arch/types.h"
#include "engine/cli/bench_units.h"

namespace kvsketch {

struct OracleOptions {
  bench::Workload workload;
  std::vector<size_t> budgets = {32, 64, 128};
  size_t sinks = 4;
  size_t eval_max = 512;
  // Row storages (storage_k, storage_v): decide the held tokens of a budget.
  SketchConfig rows = [] {
    SketchConfig c;
    c.storage_k = c.storage_v = Storage::kF16;
    return c;
  }();
  int threads = 0;
  bool json = false;
};

int RunOracle(const OracleOptions& opt);

// Mean relative errors over the unit's query heads at `pos` of sinks + the
// newest tokens (window) and of clairvoyant eviction, both holding `held`
// tokens; attention is exact (f32 keys, double sums).
struct OracleErrors {
  double window = 0, clairvoyant = 0;
  size_t count = 0;
};
OracleErrors OracleUnit(const bench::Unit& u, size_t held, size_t sinks,
                        const std::vector<size_t>& pos);

}  // namespace kvsketch
