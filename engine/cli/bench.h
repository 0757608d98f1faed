// `kvsketch bench`: accuracy, memory and speed of the sketches on traces or
// the built-in synthetic workload.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/cli/bench_units.h"
#include "engine/sketch/sketch.h"

namespace kvsketch {

struct BenchOptions {
  bench::Workload workload;
  std::vector<std::string> methods = {"exact",  "window", "uniform", "balance",
                                      "taylor", "hashed", "h2o",     "tova",
                                      "risk",   "blurry"};
  std::vector<size_t> budgets = {32, 64, 128};  // tokens
  size_t budget_bytes = 0;  // alternative to budgets: bytes per head
  size_t eval_max = 512;    // max evaluated positions per head (stride)
  int threads = 0;          // 0 = all cores
  std::string budget_split = "uniform";  // or "adaptive"
  bool json = false;
  bool csv = false;
  bool quiet = false;
  SketchConfig base;  // sinks, window, method parameters, seed
};

int RunBench(const BenchOptions& opt);

}  // namespace kvsketch
