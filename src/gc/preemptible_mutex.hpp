#pragma once
// A mutex for the locks a registered thread may wait on while the collector stops the world
// (the collector's own lock, the thread registry, the root table). The waiter must stay
// stoppable: under ThreadSanitizer a thread blocked in pthread_mutex_lock never runs its stop
// signal, so the waiter polls with try_lock and sleeps in nanosleep, where every runtime
// delivers signals. These locks are rarely contended; the wait is a collection at most.
#include <mutex>

namespace gofin::internal {

// nanosleep for ns (< 1 s) with cancellation disabled: gofin's waits are no cancellation
// points (they run inside noexcept paths such as a Root's release, where pthread_cancel's
// unwinding would terminate the program). Defined in stop_the_world.cpp.
void NonCancelableSleep(long ns);

class PreemptibleMutex {
 public:
  void lock() {
    for (int spins = 0; !mutex_.try_lock(); ++spins) {
      if (spins < 64) {
        __builtin_ia32_pause();
      } else {
        NonCancelableSleep(20000);
      }
    }
  }
  bool try_lock() { return mutex_.try_lock(); }
  void unlock() { mutex_.unlock(); }

 private:
  std::mutex mutex_;
};

}  // namespace gofin::internal
