#pragma once
// Go: runtime.mutex. Every heap lock is also a critical region (see safepoint.hpp): a thread
// holding one cannot be stopped, so the collector never waits on a lock held by a stopped
// thread. Critical sections are short, so waiters spin briefly and then yield.
#include <pthread.h>
#include <sched.h>

#include <atomic>

#include "heap/safepoint.hpp"

namespace gofin::internal {

class SpinLock {
 public:
  constexpr SpinLock() = default;
  ~SpinLock() = default;
  SpinLock(const SpinLock&) = delete;
  SpinLock& operator=(const SpinLock&) = delete;

  void lock() noexcept {
    EnterNoPreempt();
    for (int spins = 0;; ++spins) {
      // acquire: the holder's writes become visible to us.
      if (!locked_.exchange(true, std::memory_order_acquire)) return;
      while (locked_.load(std::memory_order_relaxed)) {
        if (spins++ < 64) {
          __builtin_ia32_pause();
        } else {
          sched_yield();
        }
      }
    }
  }
  void unlock() noexcept {
    locked_.store(false, std::memory_order_release);
    ExitNoPreempt();
  }
  bool try_lock() noexcept {
    EnterNoPreempt();
    if (!locked_.exchange(true, std::memory_order_acquire)) return true;
    ExitNoPreempt();
    return false;
  }

 private:
  std::atomic<bool> locked_{false};
};

// gofin's waits are no cancellation points: they run inside noexcept paths (GC() waiting
// for destructors, a Root's release, a thread's exit), where a pthread_cancel would unwind
// and terminate the program. RAII: cancellation is disabled for the scope.
class NoCancellation {
 public:
  NoCancellation() { pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &old_); }
  ~NoCancellation() { pthread_setcancelstate(old_, nullptr); }
  NoCancellation(const NoCancellation&) = delete;
  NoCancellation& operator=(const NoCancellation&) = delete;

 private:
  int old_ = 0;
};

}  // namespace gofin::internal
