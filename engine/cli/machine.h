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
// Peak virtual address space of this process in bytes (VmPeak; 0 if
// unknown) -- what `prlimit --as` limits.
size_t PeakVirtualBytes();

}  // namespace kvsketch
