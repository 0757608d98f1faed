// Save / load of a session's state: a versioned binary file (format in
// docs/state-format.md) holding the configuration, the arena bytes and each
// sketch's scalar state, each section with an xxHash64 checksum.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "kvsketch/error.h"

namespace kvsketch {

class Arena;
class Sketch;
struct SessionConfig;

// Little helpers for the scalar section: fixed-width little-endian fields.
class StateWriter {
 public:
  template <typename T>
  void Put(const T& x) {
    const size_t at = buf_.size();
    buf_.resize(at + sizeof(T));
    std::memcpy(&buf_[at], &x, sizeof(T));
  }
  std::string& bytes() { return buf_; }

 private:
  std::string buf_;
};

class StateReader {
 public:
  StateReader(const char* p, size_t n) : p_(p), end_(p + n) {}
  template <typename T>
  T Get() {
    if (size_t(end_ - p_) < sizeof(T))
      throw IoError("state file: scalar section truncated");
    T x;
    std::memcpy(&x, p_, sizeof(T));
    p_ += sizeof(T);
    return x;
  }
  // Reads a value and checks it is <= max (guards sizes from the file).
  template <typename T>
  T GetAtMost(T max, const char* what) {
    const T x = Get<T>();
    if (x > max) throw IoError(std::string("state file: invalid ") + what);
    return x;
  }
  bool done() const { return p_ == end_; }

 private:
  const char* p_;
  const char* end_;
};

// Canonical text of the configuration (what must match to load a state).
std::string ConfigFingerprint(const SessionConfig& c);

// The arena bytes [begin, used) are the state (before `begin`: scratch).
void SaveState(const std::string& path, const SessionConfig& c,
               const Arena& arena, size_t begin,
               const std::vector<std::unique_ptr<Sketch>>& sketches);
// Throws Error naming the problem; the session is unchanged on any error.
void LoadState(const std::string& path, const SessionConfig& c, Arena& arena,
               size_t begin, std::vector<std::unique_ptr<Sketch>>& sketches);
// Same, from bytes in memory (used by LoadState and the fuzz target).
void LoadStateBytes(const std::string& bytes, const std::string& what,
                    const SessionConfig& c, Arena& arena, size_t begin,
                    std::vector<std::unique_ptr<Sketch>>& sketches);
// Recomputes both section checksums of a state (tests and the state fuzzer
// use it to reach the validation behind the checksum); returns the input
// unchanged when its layout cannot be parsed.
std::string ResealStateBytes(std::string bytes);
std::string SaveStateBytes(
    const SessionConfig& c, const Arena& arena, size_t begin,
    const std::vector<std::unique_ptr<Sketch>>& sketches);

}  // namespace kvsketch
