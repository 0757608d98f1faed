// Machine description printed by benchmarks (what a user pastes in an issue).
#pragma once

#include <cstddef>
#include <string>

namespace kvsketch {

std::string CpuModel();
// Last-level cache size in bytes as reported by the OS (0 if unknown).
size_t LastLevelCacheBytes();
// Peak resident set size of this process in bytes.
size_t PeakRssBytes();

}  // namespace kvsketch
