// The `kvsketch` command-line tool.
#include <cstdio>
#include <string>

#include "CLI/CLI.hpp"
#include "arch/targets.h"  // GetTargetInfo
#include "engine/cli/speed.h"
#include "fmt/core.h"
#include "kvsketch/kvsketch.h"

namespace kvsketch {
namespace {

std::string Join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : " ") + x;
  return s;
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
  speed->add_option("--reps", speed_opt.reps, "repetitions (median)")
      ->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  if (targets->parsed()) return kvsketch::RunTargets();
  if (speed->parsed()) return kvsketch::RunSpeed(speed_opt);
  return 0;
}
