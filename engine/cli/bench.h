// `kvsketch bench`: accuracy, memory and speed of the sketches on traces or
// the built-in synthetic workload.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine/cli/bench_units.h"
#include "engine/sketch/sketch.h"

namespace kvsketch {

struct BenchOptions {
  bench::Workload workload;
  std::vector<std::string> methods = AllMethodNames();
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

// One (budget, method) row of a bench run: what the table prints.
struct BenchRow {
  std::string method;
  size_t budget_tokens = 0;           // 0 with a byte budget
  size_t budget_bytes = 0;            // mean per head
  size_t bytes_used = 0;              // the largest head's
  double retained = 0;                // mean per head
  double mean = 0, p50 = 0, p95 = 0;  // relative errors (NaN: none measured)
  double append_ns = 0, attend_ns = 0;
  size_t positions = 0;
  double wall_s = 0;
  std::string error;  // the first head's failure, if any
};

// The measurement behind RunBench, on traces already in memory (the Python
// package's `evaluate`): every budget x method row, in order, handed to
// on_row as it is done. Throws Error on bad options or traces.
void EvaluateTraces(const std::vector<Trace>& traces, const BenchOptions& opt,
                    const std::function<void(const BenchRow&)>& on_row);

}  // namespace kvsketch
