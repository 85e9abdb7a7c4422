#pragma once
#if !defined(__cplusplus) || __cplusplus < 202002L
#error "gofin needs C++20: compile with -std=c++20 (pkg-config --cflags gofin says so)"
#endif
// Entry points of the compiled library that the public templates call. Not part of the API.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <typeinfo>

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

namespace gofin {

// Where a call was made: std::source_location's role, from the compilers' __builtin_FILE,
// __builtin_FUNCTION and __builtin_LINE, which GCC and Clang have had for years (Clang 14 with
// libstdc++ 12 cannot compile <source_location>). As a defaulted argument, Current() names
// the caller's line.
struct SourceLocation {
  const char* file = "";
  const char* function = "";
  unsigned line = 0;
  static constexpr SourceLocation Current(const char* file = __builtin_FILE(),
                                          const char* function = __builtin_FUNCTION(),
                                          unsigned line = __builtin_LINE()) noexcept {
    return SourceLocation{file, function, line};
  }
};

}  // namespace gofin

namespace gofin::detail {

// GOFIN_DEBUG=checkfinalizers (Go 1.25): set once at the collector's initialization, which
// every registration reaches before it reads this. While off, a registration costs one
// predictable branch more.
extern std::atomic<bool> g_check_finalizers;
// Records where the finalizer (cleanup_id 0) or cleanup on obj was registered, for the check's
// report.
void NoteRegistration(const void* obj, std::uint64_t cleanup_id, const SourceLocation& where,
                      const std::type_info& type);
inline bool CheckFinalizersOn() { return g_check_finalizers.load(std::memory_order_relaxed); }

}  // namespace gofin::detail
