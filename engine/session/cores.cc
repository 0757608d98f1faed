#include "engine/session/cores.h"

#include <tbb/info.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <sstream>
#include <vector>

namespace kvsketch {

size_t CountCpuList(const std::string& list) {
  size_t n = 0;
  std::stringstream ss(list);
  std::string part;
  while (std::getline(ss, part, ',')) {
    while (!part.empty() &&
           std::isspace(static_cast<unsigned char>(part.back())))
      part.pop_back();
    if (part.empty()) continue;
    const size_t dash = part.find('-');
    try {
      if (dash == std::string::npos) {
        (void)std::stoul(part);
        ++n;
      } else {
        const unsigned long a = std::stoul(part.substr(0, dash));
        const unsigned long b = std::stoul(part.substr(dash + 1));
        if (b < a || b - a > 65536) return 0;
        n += b - a + 1;
      }
    } catch (...) {
      return 0;
    }
  }
  return n;
}

namespace {
bool ReadLine(const std::string& path, std::string* out) {
  std::ifstream in(path);
  return in && std::getline(in, *out);
}
}  // namespace

size_t PerformanceCores(const std::string& root, size_t online) {
  std::string line;
  // Hybrid x86 (Intel P/E cores): the performance cores' PMU lists them.
  if (ReadLine(root + "/cpu_core/cpus", &line)) {
    const size_t n = CountCpuList(line);
    if (n > 0) return n;
  }
  // Arm big.LITTLE: the capacity of every CPU, 1024 for the biggest.
  std::vector<unsigned long> cap;
  for (size_t i = 0; i < online; ++i) {
    if (!ReadLine(
            root + "/system/cpu/cpu" + std::to_string(i) + "/cpu_capacity",
            &line))
      return 0;
    try {
      cap.push_back(std::stoul(line));
    } catch (...) {
      return 0;
    }
  }
  if (cap.empty()) return 0;
  const unsigned long top = *std::max_element(cap.begin(), cap.end());
  return size_t(std::count(cap.begin(), cap.end(), top));
}

size_t DefaultThreads() {
  const size_t all = size_t(std::max(1, tbb::info::default_concurrency()));
  const size_t perf = PerformanceCores("/sys/devices", all);
  return perf > 0 ? std::min(perf, all) : all;
}

}  // namespace kvsketch
