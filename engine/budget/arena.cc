#include "engine/budget/arena.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "kvsketch/error.h"

namespace kvsketch {

Arena::Arena(size_t capacity, void* external) {
  capacity_ = capacity / kAlign * kAlign;  // never account beyond the budget
  if (external) {
    if (reinterpret_cast<uintptr_t>(external) % kAlign != 0) {
      throw Error("arena: caller buffer must be 64-byte aligned");
    }
    base_ = static_cast<uint8_t*>(external);
    zero_on_carve_ = true;
  } else if (capacity_ > 0) {
    // calloc: the arena starts zeroed (saved state never holds bytes the
    // process had in memory before), and fresh pages from the kernel are
    // zero already, so pages that are never used are still never touched.
    if (capacity_ > SIZE_MAX - kAlign) {
      throw BudgetError("arena: capacity overflows the address space");
    }
    owned_.reset(static_cast<uint8_t*>(std::calloc(capacity_ + kAlign, 1)));
    if (!owned_) {
      throw BudgetError("arena: could not allocate " +
                        std::to_string(capacity_) + " bytes");
    }
    const uintptr_t p = reinterpret_cast<uintptr_t>(owned_.get());
    base_ = owned_.get() + (kAlign - p % kAlign) % kAlign;
  }
}

void Arena::Free::operator()(uint8_t* p) const { std::free(p); }

void* Arena::Carve(const std::string& name, size_t bytes) {
  const size_t need = Aligned(bytes);
  if (need > capacity_ - used_) {
    throw BudgetError("budget too small: component '" + name + "' needs " +
                      std::to_string(need) + " bytes but only " +
                      std::to_string(capacity_ - used_) + " of " +
                      std::to_string(capacity_) + " remain");
  }
  void* p = base_ + used_;
  if (zero_on_carve_) std::memset(p, 0, need);  // a caller's buffer
  used_ += need;
  for (auto& c : components_) {
    if (c.name == name) {
      c.bytes += need;
      return p;
    }
  }
  components_.push_back({name, need});
  return p;
}

void Arena::Rewind(const Mark& m) {
  if (m.used > used_) throw Error("arena: rewind past the carved bytes");
  std::memset(base_ + m.used, 0, used_ - m.used);
  used_ = m.used;
  components_ = m.components;
}

}  // namespace kvsketch
