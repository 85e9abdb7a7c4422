#pragma once
// Roots beyond stacks and globals: Root<T> handles and registered ranges.
#include <type_traits>
#include <utility>

#include "gofin/detail/runtime.hpp"

namespace gofin {

// A GC pointer kept alive from anywhere, e.g. from memory gofin does not scan (malloc'd
// objects, std containers with the default allocator). Each Root owns one slot in gofin's
// root table; creating and destroying one takes no lock in the common case.
template <class T>
class Root {
 public:
  Root(T* p = nullptr) : slot_(detail::AcquireRootSlot()) { *slot_ = ToSlot(p); }  // NOLINT
  Root(const Root& other) : Root(other.get()) {}
  Root(Root&& other) noexcept : slot_(std::exchange(other.slot_, nullptr)) {}
  Root& operator=(const Root& other) {
    if (this != &other) *this = other.get();
    return *this;
  }
  Root& operator=(Root&& other) noexcept {
    if (this != &other) {
      if (slot_ != nullptr) detail::ReleaseRootSlot(slot_);
      slot_ = std::exchange(other.slot_, nullptr);
    }
    return *this;
  }
  Root& operator=(T* p) {
    if (slot_ == nullptr) slot_ = detail::AcquireRootSlot();
    *slot_ = ToSlot(p);
    return *this;
  }
  ~Root() {
    if (slot_ != nullptr) detail::ReleaseRootSlot(slot_);
  }

  [[nodiscard]] T* get() const noexcept {
    return slot_ == nullptr ? nullptr : static_cast<T*>(*slot_);
  }
  T* operator->() const noexcept { return get(); }
  std::add_lvalue_reference_t<T> operator*() const noexcept { return *get(); }
  explicit operator bool() const noexcept { return get() != nullptr; }
  void reset() noexcept {
    if (slot_ != nullptr) *slot_ = nullptr;
  }

 private:
  static void* ToSlot(T* p) noexcept {
    return const_cast<void*>(static_cast<const volatile void*>(p));  // NOLINT
  }
  void** slot_ = nullptr;
};

// Scans [begin, end) conservatively at every collection until removed (Go has no equivalent;
// bdwgc's GC_add_roots).
void AddRoots(const void* begin, const void* end);
void RemoveRoots(const void* begin, const void* end);

}  // namespace gofin
