// Reading files that come from outside: regular files only (a FIFO or a
// device would hang or never end), sizes checked before anything is
// allocated, reads of exactly the size found.
#pragma once

#include <cstdint>
#include <string>

namespace kvsketch {

// Size of a regular file; throws IoError naming `what` otherwise.
uint64_t RegularFileSize(const std::string& path, const std::string& what);

// The whole file, when it is a regular file of at most `max_bytes` (and it
// fits in memory); throws IoError naming `what` and the sizes otherwise.
std::string ReadRegularFile(const std::string& path, const std::string& what,
                            uint64_t max_bytes);

// Reads `n` bytes at `offset` into `dst` (a regular file already sized).
void ReadFileRange(const std::string& path, const std::string& what,
                   uint64_t offset, void* dst, size_t n);

// Physical memory of this machine in bytes (0 when unknown).
uint64_t PhysicalMemoryBytes();

}  // namespace kvsketch
