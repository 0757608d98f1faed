// Per-thread scratch declared once. A scratch layout is a struct whose
// constructor takes its arrays, in order, from a ScratchCarver: built over
// nullptr it only counts (the floats a sketch asks its caller for), built
// over the workspace it hands out the pointers. Size and pointers thus come
// from the same code and cannot disagree. Every array starts on a 16-float
// (64-byte) boundary of the workspace.
#pragma once

#include <cstddef>

namespace kvsketch {

class ScratchCarver {
 public:
  explicit ScratchCarver(float* base) : base_(base) {}
  // n elements of T (T of at most 4 bytes per element or a multiple).
  template <typename T = float>
  T* Take(size_t n) {
    T* p = base_ ? reinterpret_cast<T*>(base_ + used_) : nullptr;
    used_ += RoundUp16((n * sizeof(T) + sizeof(float) - 1) / sizeof(float));
    return p;
  }
  // The workspace after everything taken (for a callee with its own layout).
  float* Rest() const { return base_ ? base_ + used_ : nullptr; }
  size_t floats() const { return used_; }
  static size_t RoundUp16(size_t x) { return (x + 15) / 16 * 16; }

 private:
  float* base_;
  size_t used_ = 0;
};

// The floats of a layout L constructed from (carver, args...).
template <class L, class... Args>
size_t ScratchFloats(const Args&... args) {
  ScratchCarver s(nullptr);
  L l(s, args...);
  (void)l;
  return s.floats();
}

}  // namespace kvsketch
