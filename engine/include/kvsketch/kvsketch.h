// kvsketch: a fixed-memory attention KV cache for CPUs. Public C++ API.
#pragma once

#include <string>

namespace kvsketch {

// Library version, e.g. "0.1.0".
const char* Version();

// One line describing how the library was built (version, git, build type,
// compiler, system, chosen SIMD target).
std::string BuildDescription();

}  // namespace kvsketch
