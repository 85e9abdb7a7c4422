#pragma once
// Finalizers (Go: runtime.SetFinalizer, runtime.KeepAlive).
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <type_traits>
#include <typeinfo>
#include <utility>

#include "gofin/alloc.hpp"
#include "gofin/error.hpp"

namespace gofin {

namespace detail {

// How a queued finalizer is run: invoke(ctx, obj).
using FinalizerInvoke = void (*)(void* ctx, void* obj);

// A stateful callable, moved into a scanned GC block so that whatever it captures stays alive
// for as long as the finalizer is set or queued.
template <class T, class F>
struct FinalizerBox {
  F fn;
  static void Invoke(void* ctx, void* obj) {
    // The conversion to the callable's parameter type (const T*, a base class pointer with
    // its multiple-inheritance adjustment, void*) happens here, like Go's interface
    // conversion of the finalizer's argument.
    std::invoke(static_cast<FinalizerBox*>(ctx)->fn, static_cast<T*>(obj));
  }
};

}  // namespace detail

// Nothing ever points one past a box's end: it stays in its size class.
template <class T, class F>
struct NoPastTheEndPointers<detail::FinalizerBox<T, F>> : std::true_type {};

namespace detail {

// A captureless lambda or empty functor needs no block: it is made afresh to run.
template <class T, class F>
void InvokeStateless(void* /*ctx*/, void* obj) {
  F fn{};
  std::invoke(fn, static_cast<T*>(obj));
}

// A plain function: its address is the context.
template <class T, class F>
void InvokeFunction(void* ctx, void* obj) {
  std::invoke(reinterpret_cast<F>(ctx), static_cast<T*>(obj));  // NOLINT
}

enum class FinalizerTarget { kHeap, kGlobal };
// Go's checks, in Go's order; throws gofin::Error with Go's message.
FinalizerTarget CheckFinalizerTarget(const void* obj, bool inner_ok);
void AddFinalizer(const void* obj, FinalizerInvoke invoke, void* ctx);
// CheckFinalizerTarget then AddFinalizer with one span lookup, for finalizers that need no box
// allocated in between: kGlobal (nothing attached) or kHeap (attached).
FinalizerTarget AddFinalizerChecked(const void* obj, bool inner_ok, FinalizerInvoke invoke,
                                    void* ctx);
void RemoveFinalizer(const void* obj);
void ReportFinalizerException(std::exception_ptr e) noexcept;

// Go allows an inner pointer only where the tiny allocator could have put the object: small,
// pointer-free and (in C++) trivially destructible.
template <class T>
constexpr bool InnerPointerOk() {
  if constexpr (std::is_void_v<std::remove_cv_t<T>> || std::is_function_v<T>) {
    return false;
  } else {
    return sizeof(T) < 16 && NoScan<std::remove_cv_t<T>>::value &&
           std::is_trivially_destructible_v<T>;
  }
}

}  // namespace detail

// Go: runtime.KeepAlive. x (usually a pointer) stays reachable until this point, so its
// finalizer cannot run before.
template <class T>
void KeepAlive(const T& x) noexcept {
  if constexpr (std::is_pointer_v<T>) {
    asm volatile("" : : "r"(x) : "memory");
  } else {
    asm volatile("" : : "r"(&x) : "memory");
  }
}

// Go: runtime.SetFinalizer. One finalizer per object; run once, on the finalizer thread, after
// a collection finds the object unreachable (it stays alive until then, and may be
// resurrected by the finalizer).
template <class T, class F>
void SetFinalizer(T* obj, F&& finalizer, const SourceLocation& where = SourceLocation::Current()) {
  using Fn = std::decay_t<F>;
  static_assert(!std::is_same_v<Fn, std::nullptr_t>, "use SetFinalizer(obj, nullptr) to remove");
  static_assert(!std::is_integral_v<Fn>,
                "gofin::SetFinalizer: to remove a finalizer, pass nullptr (NULL and 0 are "
                "integers in C++)");
  static_assert(std::is_invocable_v<Fn&, T*>,
                "gofin::SetFinalizer: the finalizer must be callable with the object's pointer "
                "type T* (or a pointer it converts to: const T*, a base-class pointer, void*)");
  static_assert(!std::is_invocable_v<Fn&, int>,
                "gofin::SetFinalizer: the finalizer's parameter must be a pointer, not a "
                "value that a pointer converts to (bool) or a by-value auto parameter; "
                "take `auto*` or `T*`");
  static_assert(std::is_move_constructible_v<Fn> || std::is_copy_constructible_v<Fn>,
                "gofin::SetFinalizer: the finalizer must be movable or copyable");
  // Go: a global never becomes unreachable; setting a finalizer on one is a no-op (kGlobal).
  if constexpr (std::is_pointer_v<Fn> && std::is_function_v<std::remove_pointer_t<Fn>>) {
    if constexpr (std::is_pointer_v<std::remove_cvref_t<F>>) {
      // A function pointer may be nil (Go's SetFinalizer(obj, nil) removes); a function
      // named directly never is.
      if (finalizer == nullptr) {
        if (detail::CheckFinalizerTarget(obj, detail::InnerPointerOk<T>()) ==
            detail::FinalizerTarget::kHeap) {
          detail::RemoveFinalizer(obj);
        }
        return;
      }
    }
    if (detail::AddFinalizerChecked(obj, detail::InnerPointerOk<T>(),
                                    &detail::InvokeFunction<T, Fn>,
                                    reinterpret_cast<void*>(finalizer)) ==  // NOLINT
            detail::FinalizerTarget::kHeap &&
        detail::CheckFinalizersOn()) [[unlikely]] {
      detail::NoteRegistration(obj, 0, where, typeid(T));
    }
  } else if constexpr (std::is_empty_v<Fn> && std::is_trivially_default_constructible_v<Fn>) {
    if (detail::AddFinalizerChecked(obj, detail::InnerPointerOk<T>(),
                                    &detail::InvokeStateless<T, Fn>,
                                    nullptr) == detail::FinalizerTarget::kHeap &&
        detail::CheckFinalizersOn()) [[unlikely]] {
      detail::NoteRegistration(obj, 0, where, typeid(T));
    }
  } else {
    if (detail::CheckFinalizerTarget(obj, detail::InnerPointerOk<T>()) ==
        detail::FinalizerTarget::kGlobal) {
      return;
    }
    auto* box = New<detail::FinalizerBox<T, Fn>>(std::forward<F>(finalizer));
    detail::AddFinalizer(obj, &detail::FinalizerBox<T, Fn>::Invoke, box);
    KeepAlive(box);
    if (detail::CheckFinalizersOn()) [[unlikely]]
      detail::NoteRegistration(obj, 0, where, typeid(T));
  }
}

// Removes obj's finalizer; a no-op when none is set.
template <class T>
void SetFinalizer(T* obj, std::nullptr_t /*none*/) {
  if (detail::CheckFinalizerTarget(obj, detail::InnerPointerOk<T>()) ==
      detail::FinalizerTarget::kGlobal) {
    return;
  }
  detail::RemoveFinalizer(obj);
}

// What happens when a finalizer or cleanup throws: the handler runs on the finalizer thread,
// which then goes on. The default prints the exception and terminates (an unrecovered panic).
using FinalizerErrorHandler = void (*)(std::exception_ptr);
FinalizerErrorHandler SetFinalizerErrorHandler(FinalizerErrorHandler handler);

// Finalizers the sweeper queued and the finalizer thread ran, since the program started.
struct FinalizerStats {
  std::uint64_t Queued, Executed;
};
FinalizerStats ReadFinalizerStats();

}  // namespace gofin
