#pragma once
// Cleanups (Go 1.24+: runtime.AddCleanup, runtime.Cleanup.Stop).
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>
#include <typeinfo>
#include <utility>

#include "gofin/alloc.hpp"
#include "gofin/error.hpp"

namespace gofin {

class Cleanup;
template <class T, class F, class S>
Cleanup AddCleanup(T* ptr, F&& cleanup, S arg,
                   const SourceLocation& where = SourceLocation::Current());

// Go: runtime.Cleanup. A handle to one cleanup; copyable, and it keeps nothing alive (the
// object's address is held in a form no scan takes for a pointer, as Go holds it in a
// uintptr).
class Cleanup {
 public:
  Cleanup() = default;
  // Cancels the cleanup if it has not been queued yet; harmless when it was queued or ran
  // already, when called twice, and on a default Cleanup.
  void Stop();

 private:
  template <class T, class F, class S>
  friend Cleanup AddCleanup(T* ptr, F&& cleanup, S arg, const SourceLocation& where);
  Cleanup(std::uint64_t id, std::uintptr_t hidden) : id_(id), hidden_(hidden) {}

  std::uint64_t id_ = 0;
  std::uintptr_t hidden_ = 0;
};

namespace detail {

// The callable and its argument, in a scanned GC block of their own (never a tiny block
// shared with anything, Go issue 76007): while the cleanup is set or queued, the block is
// marked, so what fn and arg reference stays alive; ptr's object must not be among it.
template <class F, class S>
struct CleanupBox {
  void (*invoke)(void* box);
  F fn;
  S arg;
  static void Invoke(void* box) {
    auto* b = static_cast<CleanupBox*>(box);
    std::invoke(b->fn, b->arg);
  }
};

enum class CleanupTarget { kHeap, kGlobal };
// Go's checks of AddCleanup after `ptr is nil` and `ptr is equal to arg`, in Go's order:
// `ptr not in allocated block` (kGlobal for a pointer outside the heap, which never becomes
// unreachable), `ptr is within arg`, `cleanup function closes over ptr` (a word of the
// callable's own storage points into ptr's object: conservative, as the rest of gofin).
CleanupTarget CheckCleanupTarget(const void* ptr, const void* arg_ptr, const void* fn_bytes,
                                 std::size_t fn_size);
// Attaches a cleanup record for box to ptr's object; returns its id.
std::uint64_t AttachCleanup(const void* ptr, void* box);
void StopCleanup(std::uint64_t id, std::uintptr_t hidden) noexcept;
std::uintptr_t HideAddress(const void* p) noexcept;

}  // namespace detail

// Go: runtime.AddCleanup. Some time after ptr's object is unreachable it is freed, and
// cleanup(arg) runs later on a cleanup thread (concurrently with other cleanups). Any number
// per object, at any address inside it; no resurrection. With a finalizer too, the finalizer
// runs first, the cleanup after the later cycle that frees the object. If ptr is reachable
// from cleanup or arg, it is never freed and the cleanup never runs.
template <class T, class F, class S>
Cleanup AddCleanup(T* ptr, F&& cleanup, S arg, const SourceLocation& where) {
  using Fn = std::decay_t<F>;
  static_assert(!std::is_integral_v<Fn> && !std::is_same_v<Fn, std::nullptr_t>,
                "gofin::AddCleanup: the cleanup is null (NULL, 0 or nullptr): pass a callable");
  static_assert(std::is_invocable_v<Fn&, S&>,
                "gofin::AddCleanup: the cleanup must be callable with the argument's type S");
  if (ptr == nullptr) throw Error("runtime.AddCleanup: ptr is nil");
  const void* arg_ptr = nullptr;
  if constexpr (std::is_pointer_v<S>) {
    arg_ptr = static_cast<const void*>(arg);
    if (arg_ptr == static_cast<const void*>(ptr)) {
      throw Error("runtime.AddCleanup: ptr is equal to arg, cleanup will never run");
    }
  }
  if constexpr (std::is_pointer_v<Fn> && std::is_function_v<std::remove_pointer_t<Fn>>) {
    if (cleanup == nullptr) throw Error("runtime.AddCleanup: cleanup is nil");
  }
  if (detail::CheckCleanupTarget(ptr, arg_ptr, std::addressof(cleanup), sizeof(Fn)) ==
      detail::CleanupTarget::kGlobal) {
    return {};
  }
  using Box = detail::CleanupBox<Fn, S>;
  void* mem = detail::AllocateFor<Box>(sizeof(Box), 1, detail::kAllocNoTiny);
  Box* box = nullptr;
  if constexpr (std::is_nothrow_constructible_v<Fn, F&&> &&
                std::is_nothrow_move_constructible_v<S>) {
    box = ::new (mem) Box{&Box::Invoke, Fn(std::forward<F>(cleanup)), std::move(arg)};
  } else {
    try {
      box = ::new (mem) Box{&Box::Invoke, Fn(std::forward<F>(cleanup)), std::move(arg)};
    } catch (...) {
      detail::CancelDtor(mem);
      throw;
    }
  }
  const std::uint64_t id = detail::AttachCleanup(ptr, box);
  asm volatile("" : : "r"(box) : "memory");  // the box stays reachable until attached
  if (detail::CheckFinalizersOn()) [[unlikely]]
    detail::NoteRegistration(ptr, id, where, typeid(T));
  return Cleanup(id, detail::HideAddress(ptr));
}

inline void Cleanup::Stop() {
  if (id_ != 0) detail::StopCleanup(id_, hidden_);
}

// Cleanups the sweeper queued and the cleanup threads ran, since the program started.
struct CleanupStats {
  std::uint64_t Queued, Executed;
};
CleanupStats ReadCleanupStats();

}  // namespace gofin
