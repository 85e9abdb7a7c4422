#pragma once
// A mutex for the locks a registered thread may wait on while the collector stops the world
// (the collector's own lock, the thread registry, the root table). The waiter must stay
// stoppable: under ThreadSanitizer a thread blocked in pthread_mutex_lock never runs its stop
// signal, so the waiter polls with try_lock and sleeps in nanosleep, where every runtime
// delivers signals. These locks are rarely contended; the wait is a collection at most.
#include <ctime>
#include <mutex>

namespace gofin::internal {

class PreemptibleMutex {
 public:
  void lock() {
    for (int spins = 0; !mutex_.try_lock(); ++spins) {
      if (spins < 64) {
        __builtin_ia32_pause();
      } else {
        timespec ts{0, 20000};
        nanosleep(&ts, nullptr);
      }
    }
  }
  bool try_lock() { return mutex_.try_lock(); }
  void unlock() { mutex_.unlock(); }

 private:
  std::mutex mutex_;
};

}  // namespace gofin::internal
