// libFuzzer target: the .npy parser must reject anything malformed with
// kvsketch::Error and never read out of bounds.
#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/io/npy.h"
#include "kvsketch/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const kvsketch::NpyArray a = kvsketch::ParseNpy(
        std::string(reinterpret_cast<const char*>(data), size), "fuzz");
    if (a.size() != a.f32.size() + a.i32.size()) __builtin_trap();
  } catch (const kvsketch::Error&) {
  }
  return 0;
}
