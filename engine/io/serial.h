// Fixed-width little-endian fields of a state's scalar section: the low-level
// serialization the sketches use to save and load their scalars. A layer
// below both engine/sketch and engine/session (neither includes the other's
// headers for it).
#pragma once

#include <cstddef>
#include <cstring>
#include <string>

#include "kvsketch/error.h"

namespace kvsketch {

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

}  // namespace kvsketch
