// The budget arena: one aligned allocation, carved into named components with
// byte accounting. Nothing is allocated after creation; the arena starts
// zeroed (calloc: pages that are never written are never touched), so a
// saved state never contains bytes the process held before.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace kvsketch {

class Arena {
 public:
  static constexpr size_t kAlign = 64;  // the allocation: a cache line
  // Components start on 16-byte boundaries: kernels use unaligned loads, and
  // at small head dimensions (d = 8: 64-byte rows) 64-byte padding per
  // component would cost a noticeable share of a small budget.
  static constexpr size_t kCarveAlign = 16;

  // Allocates `capacity` bytes (rounded up to kAlign), or uses a caller
  // buffer of that size (must be kAlign-aligned and outlive the arena).
  explicit Arena(size_t capacity, void* external = nullptr);
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  // Carves `bytes` (aligned to kCarveAlign) for component `name`. Throws
  // BudgetError naming the component and the numbers when it does not fit.
  void* Carve(const std::string& name, size_t bytes);
  template <typename T>
  T* CarveArray(const std::string& name, size_t count) {
    return static_cast<T*>(Carve(name, count * sizeof(T)));
  }

  size_t capacity() const { return capacity_; }
  uint8_t* data() { return base_; }
  const uint8_t* data() const { return base_; }
  size_t used() const { return used_; }  // accounted bytes (incl. alignment)

  struct Component {
    std::string name;
    size_t bytes;
  };
  const std::vector<Component>& components() const { return components_; }

  // A point to come back to: every carve after it can be forgotten.
  struct Mark {
    size_t used = 0;
    std::vector<Component> components;
  };
  Mark GetMark() const { return Mark{used_, components_}; }
  // Forgets every carve made after `m` and zeroes its bytes, so what is
  // carved again starts as it did in a new arena.
  void Rewind(const Mark& m);

  // Bytes `n` occupies once carved (alignment included).
  static size_t Aligned(size_t n) {
    return (n + kCarveAlign - 1) / kCarveAlign * kCarveAlign;
  }

 private:
  struct Free {
    void operator()(uint8_t* p) const;
  };
  std::unique_ptr<uint8_t, Free> owned_;
  bool zero_on_carve_ = false;
  uint8_t* base_ = nullptr;
  size_t capacity_ = 0;
  size_t used_ = 0;
  std::vector<Component> components_;
};

}  // namespace kvsketch
