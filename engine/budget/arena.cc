#include "engine/budget/arena.h"

#include <cstdint>

#include "kvsketch/error.h"

namespace kvsketch {

Arena::Arena(size_t capacity, void* external) {
  capacity_ = capacity / kAlign * kAlign;  // never account beyond the budget
  if (external) {
    if (reinterpret_cast<uintptr_t>(external) % kAlign != 0) {
      throw Error("arena: caller buffer must be 64-byte aligned");
    }
    base_ = static_cast<uint8_t*>(external);
  } else if (capacity_ > 0) {
    owned_ = hwy::AllocateAligned<uint8_t>(capacity_);
    if (!owned_) {
      throw BudgetError("arena: could not allocate " +
                        std::to_string(capacity_) + " bytes");
    }
    base_ = owned_.get();
  }
}

void* Arena::Carve(const std::string& name, size_t bytes) {
  const size_t need = Aligned(bytes);
  if (need > capacity_ - used_) {
    throw BudgetError("budget too small: component '" + name + "' needs " +
                      std::to_string(need) + " bytes but only " +
                      std::to_string(capacity_ - used_) + " of " +
                      std::to_string(capacity_) + " remain");
  }
  void* p = base_ + used_;
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

}  // namespace kvsketch
