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

// Takes m polling, as PreemptibleMutex does.
inline void LockPreemptibly(std::mutex& m) {
  for (int spins = 0; !m.try_lock(); ++spins) {
    if (spins < 64) {
      __builtin_ia32_pause();
    } else {
      NonCancelableSleep(20000);
    }
  }
}

class PreemptibleMutex {
 public:
  void lock() { LockPreemptibly(mutex_); }
  bool try_lock() { return mutex_.try_lock(); }
  void unlock() { mutex_.unlock(); }

 private:
  std::mutex mutex_;
};

// A std::unique_lock on a std::mutex that a condition variable also uses (the queues of
// destructors and cleanups), taken the stoppable way: a registered thread waiting for it must
// still take the stop while the holder is stopped (found: GC() callers waiting for the
// destructor queue's lock hung a collection under ThreadSanitizer). The condition variable's
// own re-lock happens inside its wait, where every runtime delivers signals.
class PreemptibleLock {
 public:
  explicit PreemptibleLock(std::mutex& m) : lock_(m, std::defer_lock) {
    LockPreemptibly(m);
    lock_ = std::unique_lock<std::mutex>(m, std::adopt_lock);
  }
  ~PreemptibleLock() = default;  // lock_ unlocks
  PreemptibleLock(const PreemptibleLock&) = delete;
  PreemptibleLock& operator=(const PreemptibleLock&) = delete;
  PreemptibleLock(PreemptibleLock&&) = delete;
  PreemptibleLock& operator=(PreemptibleLock&&) = delete;
  std::unique_lock<std::mutex>& get() { return lock_; }

 private:
  std::unique_lock<std::mutex> lock_;
};

}  // namespace gofin::internal
