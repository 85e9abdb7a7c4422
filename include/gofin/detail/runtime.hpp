#pragma once
// Entry points of the compiled library that the public templates call. Not part of the API.
#include <cstddef>

namespace gofin::detail {

inline constexpr unsigned kAllocNoScan = 1;  // the object holds no GC pointers
inline constexpr unsigned kAllocNoTiny = 2;  // never share a tiny block
inline constexpr unsigned kAllocPadded = 4;  // size includes the one-past-the-end pad byte

using DtorFn = void (*)(void* obj, std::size_t count);

void* Malloc(std::size_t size, unsigned flags, DtorFn dtor, std::size_t count);
void* MallocAligned(std::size_t size, std::size_t align, unsigned flags, DtorFn dtor,
                    std::size_t count);
// Forgets the destructor of an object whose constructor threw.
void CancelDtor(void* p) noexcept;

template <class T>
void DestroyN(void* p, std::size_t n) noexcept {
  T* t = static_cast<T*>(p);
  for (std::size_t i = 0; i < n; ++i) t[i].~T();
}

void** AcquireRootSlot();
void ReleaseRootSlot(void** slot) noexcept;

bool RegisterCurrentThread();
void UnregisterCurrentThread();
// Records the calling thread's current stack segment ([lo, hi); null: its own stack) and
// returns the previous one through prev_lo/prev_hi when they are not null.
void SwitchStack(void* lo, void* hi, void** prev_lo, void** prev_hi) noexcept;

}  // namespace gofin::detail
