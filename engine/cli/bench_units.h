// Internal pieces of `kvsketch bench` shared with `kvsketch analyze`: one
// (trace, layer, KV head) stream, its exact reference and a sketch run.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "engine/io/trace.h"
#include "engine/sketch/sketch.h"

namespace kvsketch {
namespace bench {

struct Unit {
  const Trace* trace;
  size_t layer, head;
};

struct Result {
  std::vector<double> errors;
  size_t bytes = 0, retained = 0, budget_bytes = 0;
  double append_s = 0, attend_s = 0;
  size_t appends = 0, queries = 0;
  std::string error;  // set when the sketch could not be built / failed
};

// Exact causal attention outputs (double) of the unit's query heads at `pos`:
// [pos.size()][G][dv].
std::vector<double> ExactOutputs(const Trace& t, size_t l, size_t kvh,
                                 const std::vector<size_t>& pos);
// Positions >= budget, at most `max` of them, evenly strided.
std::vector<size_t> EvalPositions(size_t seq, size_t budget, size_t max);
// The positions a trace is evaluated at: its own eval_positions >= budget
// when it names them (the `needle` workload), else EvalPositions.
std::vector<size_t> TracePositions(const Trace& t, size_t budget, size_t max);
// Streams the unit through a sketch; relative errors at `pos`.
Result RunUnit(const Unit& u, const SketchConfig& base, size_t budget_tokens,
               size_t budget_bytes, const std::vector<size_t>& pos,
               const std::vector<double>& exact);
std::string JsonNum(double x);
// What `bench`, `analyze` and `oracle` run on: a trace directory (or folder
// of traces) or, when `trace` is empty, the named synthetic workload.
struct Workload {
  std::string trace;
  std::string synthetic = "default";
  size_t length = 0;    // synthetic length override
  size_t kv_heads = 0;  // synthetic KV heads override
};
// Loads it; `source` describes it for reports.
std::vector<Trace> LoadWorkload(const Workload& w, std::string* source);
double Quantile(std::vector<double> v, double q);
// Keys or values a storage type cannot hold (beyond +-65504 in f16) are a
// clear error instead of infinities in every sketch.
void CheckStorageRange(const std::vector<Trace>& traces, const SketchConfig& c);

}  // namespace bench
}  // namespace kvsketch
