// How many threads `threads = 0` means: the machine's performance cores where
// Linux reports them (big.LITTLE boards, hybrid x86), otherwise every core
// the process may use.
#pragma once

#include <cstddef>
#include <string>

namespace kvsketch {

// The default thread count (>= 1).
size_t DefaultThreads();

// Performance cores among `online` CPUs from a sysfs tree rooted at `root`
// (normally "/sys/devices"): the CPUs listed in cpu_core/cpus (hybrid x86),
// else those whose system/cpu/cpuN/cpu_capacity is the largest (Arm
// big.LITTLE, when every CPU reports one); 0 when neither says.
size_t PerformanceCores(const std::string& root, size_t online);

// Number of CPUs in a Linux CPU list such as "0-3,8,10-11" (0 if malformed).
size_t CountCpuList(const std::string& list);

}  // namespace kvsketch
