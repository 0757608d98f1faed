// libFuzzer target: trace.json parsing.
#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/io/trace.h"
#include "kvsketch/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kvsketch::Trace t;
  try {
    kvsketch::ParseTraceJson(
        std::string(reinterpret_cast<const char*>(data), size), "fuzz", &t);
    if (!(t.scale > 0.0f)) __builtin_trap();
  } catch (const kvsketch::Error&) {
  }
  return 0;
}
