// `kvsketch speed`: kernel speed as ratios to this machine's own limits.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace kvsketch {

struct SpeedOptions {
  bool json = false;
  bool quick = false;   // small sizes only (tests, slow emulators)
  size_t cold_mib = 0;  // bytes cycled through for cold data (0 = auto)
  int reps = 7;         // repetitions per row; the median is reported
  // Attend only at these row counts / head dims / storages (empty: all).
  std::vector<size_t> lengths, dims;
  std::vector<std::string> storages;
};

int RunSpeed(const SpeedOptions& opt);

}  // namespace kvsketch
