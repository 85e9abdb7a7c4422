#pragma once
// Allocation (Go: new(T), make([]T, n), mallocgc).
#include <cstddef>
#include <limits>
#include <new>
#include <type_traits>
#include <utility>

#include "gofin/detail/runtime.hpp"

namespace gofin {

// True for types that hold no GC pointers: their objects go to noscan spans and are never
// scanned. Specialise it for your own pointer-free types.
template <class T>
struct NoScan : std::bool_constant<std::is_arithmetic_v<T> || std::is_enum_v<T>> {};
template <class T, std::size_t N>
struct NoScan<T[N]> : NoScan<T> {};
template <class T>
struct NoScan<T[]> : NoScan<T> {};
template <class T>
struct NoScan<const T> : NoScan<T> {};

// True for types of which no pointer one past the end is ever held without a pointer into the
// object itself (no end() of a trailing member array, no write cursor at the end of a buffer
// kept alone). New<T> then does not pad a scanned T whose size fills its size class exactly:
// a 16-byte node stays in the 16-byte class instead of the 24-byte one. Specialise it for
// your own node types where memory matters; a wrong specialisation lets such a pointer keep the
// next object alive instead of its own (a use after free). Noscan types never need it.
template <class T>
struct NoPastTheEndPointers : std::false_type {};

namespace detail {

// Whether New<T> adds the one-past-the-end pad byte. It costs memory only when sizeof(T) is
// exactly a size class (the byte moves the object to the next class), and only there does the
// end pointer reach the next object. Noscan objects are covered by the marker instead (a
// pointer on a boundary keeps the noscan object before it), which cannot cascade.
template <class T>
constexpr bool PadNew() {
  return !NoScan<T>::value && !NoPastTheEndPointers<T>::value;
}

template <class T>
constexpr unsigned AllocFlags() {
  return NoScan<T>::value ? kAllocNoScan : 0U;
}

template <class T>
constexpr DtorFn DtorOf() {
  if constexpr (std::is_trivially_destructible_v<T>) {
    return nullptr;
  } else {
    return &DestroyN<T>;
  }
}

template <class T>
void* AllocateFor(std::size_t bytes, std::size_t count, unsigned extra_flags = 0) {
  static_assert(alignof(T) <= 8192, "gofin: alignments above 8192 bytes are not supported");
  if constexpr (alignof(T) >= 16) {
    // A padded 16-byte-aligned array would land in the 24-byte class: pick a class whose
    // object size keeps the alignment.
    return MallocAligned(bytes, alignof(T), AllocFlags<T>() | extra_flags, DtorOf<T>(), count);
  } else {
    return Malloc(bytes, AllocFlags<T>() | extra_flags, DtorOf<T>(), count);
  }
}

}  // namespace detail

// Zeroed memory in the GC heap, then T(args...). ~T() runs when the sweeper frees it.
template <class T, class... Args>
T* New(Args&&... args) {
  static_assert(!std::is_array_v<T>, "gofin::New<T>: use gofin::NewArray<T>(n) for arrays");
  static_assert(std::is_object_v<T>, "gofin::New<T>: T must be an object type");
  void* mem = detail::PadNew<T>() ? detail::AllocateFor<T>(sizeof(T) + 1, 1, detail::kAllocPadded)
                                  : detail::AllocateFor<T>(sizeof(T), 1);
  auto construct = [&] {
    if constexpr (std::is_constructible_v<T, Args&&...>) {
      return ::new (mem) T(std::forward<Args>(args)...);
    } else {
      return ::new (mem) T{std::forward<Args>(args)...};
    }
  };
  if constexpr (std::is_nothrow_constructible_v<T, Args&&...> ||
                std::is_trivially_destructible_v<T>) {
    return construct();
  } else {
    try {
      return construct();
    } catch (...) {
      detail::CancelDtor(mem);
      throw;
    }
  }
}

// One object holding n value-initialised T. Padded by a byte so that the one-past-the-end
// pointer stays inside it and never keeps the next object alive (Go's TestEmptySlice).
template <class T>
T* NewArray(std::size_t n) {
  static_assert(std::is_object_v<T> && !std::is_array_v<T>,
                "gofin::NewArray<T>: T must be a complete non-array object type");
  if (n > (std::numeric_limits<std::size_t>::max() - 1) / sizeof(T)) throw std::bad_alloc();
  void* mem = detail::AllocateFor<T>(n * sizeof(T) + 1, n, detail::kAllocPadded);
  T* arr = static_cast<T*>(mem);
  if constexpr (!std::is_trivially_default_constructible_v<T>) {
    std::size_t i = 0;
    try {
      for (; i < n; ++i) ::new (static_cast<void*>(arr + i)) T();
    } catch (...) {
      if constexpr (!std::is_trivially_destructible_v<T>) {
        while (i > 0) arr[--i].~T();
        detail::CancelDtor(mem);
      }
      throw;
    }
  }
  return arr;
}

// Zeroed bytes, scanned conservatively for pointers.
inline void* Alloc(std::size_t bytes) {
  if (bytes == std::numeric_limits<std::size_t>::max()) throw std::bad_alloc();
  return detail::Malloc(bytes + 1, detail::kAllocPadded, nullptr, 0);
}

// Zeroed bytes that are never scanned: they must hold no GC pointers.
inline void* AllocNoScan(std::size_t bytes) {
  if (bytes == std::numeric_limits<std::size_t>::max()) throw std::bad_alloc();
  return detail::Malloc(bytes + 1, detail::kAllocNoScan | detail::kAllocPadded, nullptr, 0);
}

}  // namespace gofin
