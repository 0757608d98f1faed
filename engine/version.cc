#include "arch/targets.h"         // ChosenTargetName
#include "kvsketch/build_info.h"  // KVSKETCH_* (generated)
#include "kvsketch/kvsketch.h"

namespace kvsketch {

const char* Version() { return KVSKETCH_VERSION; }

std::string BuildDescription() {
  std::string s =
      "kvsketch " KVSKETCH_VERSION " (git " KVSKETCH_GIT
      ", " KVSKETCH_BUILD_TYPE ", " KVSKETCH_COMPILER ", " KVSKETCH_SYSTEM;
  const std::string flags = KVSKETCH_CXX_FLAGS;
  if (!flags.empty()) s += ", flags '" + flags + "'";
  s += ", SIMD dispatch -> ";
  s += ChosenTargetName();
  s += ")";
  return s;
}

}  // namespace kvsketch
