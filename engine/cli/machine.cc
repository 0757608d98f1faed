#include "engine/cli/machine.h"

#include <sys/resource.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <fstream>
#include <string>

namespace kvsketch {

std::string CpuModel() {
  std::ifstream in("/proc/cpuinfo");
  std::string line, part;
  while (std::getline(in, line)) {
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    const std::string key =
        line.substr(0, line.find_last_not_of(" \t", colon - 1) + 1);
    std::string value = line.substr(colon + 1);
    value.erase(0, value.find_first_not_of(" \t"));
    if (key == "model name" || key == "Model") return value;
    if (key == "CPU part" && part.empty()) part = "ARM CPU part " + value;
  }
  if (!part.empty()) return part;
  utsname u{};
  uname(&u);
  return u.machine;
}

size_t LastLevelCacheBytes() {
#ifdef _SC_LEVEL3_CACHE_SIZE
  const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
  if (l3 > 0) return size_t(l3);
#endif
#ifdef _SC_LEVEL2_CACHE_SIZE
  const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
  if (l2 > 0) return size_t(l2);
#endif
  return 0;
}

size_t PeakRssBytes() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return size_t(u.ru_maxrss) * 1024;
}

size_t PeakVirtualBytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.compare(0, 7, "VmPeak:") == 0) {
      return size_t(std::stoull(line.substr(7))) * 1024;  // "... kB"
    }
  }
  return 0;
}

}  // namespace kvsketch
