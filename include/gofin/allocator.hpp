#pragma once
// A std::allocator-compatible allocator whose memory is in the GC heap and scanned, so a
// standard container's buffer keeps the GC objects it points at alive.
#include <cstddef>
#include <limits>
#include <new>

#include "gofin/alloc.hpp"

namespace gofin {

template <class T>
class Allocator {
 public:
  using value_type = T;
  Allocator() noexcept = default;
  template <class U>
  Allocator(const Allocator<U>& /*other*/) noexcept {}  // NOLINT

  T* allocate(std::size_t n) {
    if (n > (std::numeric_limits<std::size_t>::max() - 1) / sizeof(T)) throw std::bad_alloc();
    // Padded like NewArray: a container's end() must not keep the next object alive.
    return static_cast<T*>(detail::MallocAligned(
        n * sizeof(T) + 1, alignof(T), detail::AllocFlags<T>() | detail::kAllocPadded, nullptr, 0));
  }
  // The collector frees the buffer once nothing points to it.
  void deallocate(T* /*p*/, std::size_t /*n*/) noexcept {}

  template <class U>
  bool operator==(const Allocator<U>& /*other*/) const noexcept {
    return true;
  }
};

}  // namespace gofin
