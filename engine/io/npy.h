// Minimal .npy reader/writer (format versions 1-3, little-endian float32 /
// int32, C order) with errors that name the file and the problem.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kvsketch {

struct NpyArray {
  std::vector<size_t> shape;
  std::string dtype;         // "<f4" or "<i4"
  std::vector<float> f32;    // data when dtype == "<f4"
  std::vector<int32_t> i32;  // data when dtype == "<i4"
  size_t size() const;
};

// Parses .npy bytes; `what` names the source in error messages.
NpyArray ParseNpy(const std::string& bytes, const std::string& what);
NpyArray LoadNpy(const std::string& path);
void SaveNpyF32(const std::string& path, const std::vector<size_t>& shape,
                const float* data);

}  // namespace kvsketch
