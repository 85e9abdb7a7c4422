#pragma once
// Threads. Every thread that calls into gofin is registered on its first call; ThreadScope is
// for a thread that holds GC pointers before that. SetCurrentStack and StackScope are for
// user-level threads (coroutines, fibers): they tell gofin which stack the thread runs on.
#include "gofin/detail/runtime.hpp"

namespace gofin {

class ThreadScope {
 public:
  ThreadScope() : registered_here_(detail::RegisterCurrentThread()) {}
  ~ThreadScope() {
    if (registered_here_) detail::UnregisterCurrentThread();
  }
  ThreadScope(const ThreadScope&) = delete;
  ThreadScope& operator=(const ThreadScope&) = delete;

 private:
  bool registered_here_;
};

// bdwgc: GC_set_stackbottom; cppgc: the stack markers. The calling thread now runs on the
// stack segment [lo, hi) (hi: its highest address), or on its own stack again when lo and hi
// are null. While the thread runs on a segment, a collection scans the segment from the
// thread's stack pointer to hi, and also its own stack from where it left it. Call it on the
// stack being left, just before switching. The segment must stay mapped until the next call.
// Suspended segments are not scanned: register them with AddRoots while they hold GC
// pointers. Registers the thread.
void SetCurrentStack(void* lo, void* hi) noexcept;

// RAII form for a switch and its return: construct it just before switching to the segment
// [lo, hi); its destructor, run once control is back, restores the segment that was current.
class StackScope {
 public:
  StackScope(void* lo, void* hi) noexcept { detail::SwitchStack(lo, hi, &prev_lo_, &prev_hi_); }
  ~StackScope() { detail::SwitchStack(prev_lo_, prev_hi_, nullptr, nullptr); }
  StackScope(const StackScope&) = delete;
  StackScope& operator=(const StackScope&) = delete;

 private:
  void* prev_lo_ = nullptr;
  void* prev_hi_ = nullptr;
};

}  // namespace gofin
