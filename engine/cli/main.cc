// The `kvsketch` command-line tool.
#include <cstdio>
#include <string>

#include "CLI/CLI.hpp"
#include "arch/targets.h"  // GetTargetInfo
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
  CLI11_PARSE(app, argc, argv);
  if (targets->parsed()) return kvsketch::RunTargets();
  return 0;
}
