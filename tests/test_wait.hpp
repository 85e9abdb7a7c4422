#pragma once
// Bounded waits for tests that wait for an event: a condition variable instead of a polling
// sleep, usable by threads gofin may stop for a collection while they wait.
//
// A collection stops every registered thread with a signal and waits until each one has
// acknowledged it, so a waiting registered thread must stay stoppable:
// - pthread_cond_wait / pthread_cond_clockwait (std::condition_variable::wait_for): fine, the
//   kernel interrupts the wait, and ThreadSanitizer treats them as blocking calls in which it
//   runs the handler at once;
// - pthread_mutex_lock: not under ThreadSanitizer, which holds the signal back until the lock
//   is taken; if the lock's holder was stopped first, the collection never completes. The
//   mutex here is therefore only taken with try_lock in a yielding loop (every try_lock is an
//   interceptor call at whose end TSan delivers a pending signal).
// Waiters check their predicate with the mutex held, and every change a predicate reads is
// followed by Notify(), which takes the mutex: a change made between a waiter's check and its
// sleep cannot be missed.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

namespace gofin_test {

class Notifier {
 public:
  // Wakes every waiter; call after changing what their predicates read.
  void Notify() {
    {
      std::unique_lock lock(mu_, std::defer_lock);
      LockStoppably(lock);
    }
    cv_.notify_all();
  }

  // Waits until pred() holds, at most `timeout`; returns pred()'s last value.
  template <class Pred>
  bool WaitFor(std::chrono::nanoseconds timeout, Pred pred) {
    std::unique_lock lock(mu_, std::defer_lock);
    LockStoppably(lock);
    return cv_.wait_for(lock, timeout, pred);
  }

 private:
  static void LockStoppably(std::unique_lock<std::mutex>& lock) {
    while (!lock.try_lock()) std::this_thread::yield();
  }

  std::mutex mu_;
  std::condition_variable cv_;
};

// A latch that opens once (Reset closes it again, between repetitions of a test).
class Event {
 public:
  void Set() {
    set_.store(true);
    notifier_.Notify();
  }
  void Reset() { set_.store(false); }
  [[nodiscard]] bool IsSet() const { return set_.load(); }
  // True once Set was called; false if `timeout` passed first.
  bool WaitFor(std::chrono::nanoseconds timeout) {
    return notifier_.WaitFor(timeout, [this] { return set_.load(); });
  }

 private:
  std::atomic<bool> set_{false};
  Notifier notifier_;
};

}  // namespace gofin_test
