#pragma once
// Bounded waits for tests that wait for an event, instead of polling sleeps, usable by threads
// that gofin may stop for a collection while they wait or notify.
//
// A collection stops every registered thread with a signal and waits until each one has
// acknowledged it, so a registered thread must stay stoppable wherever it may block. Under
// ThreadSanitizer a pending signal is delivered only in the blocking calls TSan knows (sleeps,
// condition-variable and semaphore waits, joins), at an interceptor's end or at an atomic
// operation; a thread blocked anywhere else never takes it, and if what it waits for is a
// thread the collector stopped first, the collection never completes. With a mutex and a
// condition variable both sides can block there: in pthread_mutex_lock, and in
// pthread_cond_broadcast, which waits inside glibc for woken waiters to leave the previous
// wait (a waiter stopped by the collector does not).
//
// So each waiter here sleeps on its own POSIX semaphore (sem_timedwait is such a blocking
// call; sem_post never blocks), listed under a spin lock taken with atomic exchanges. A waiter
// lists itself before it checks its predicate, and every change a predicate reads is followed
// by Notify(), which posts to every listed waiter: either the waiter sees the change or Notify
// sees the waiter. A post that finds the predicate still false only causes another check.
#include <semaphore.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <ctime>
#include <thread>

namespace gofin_test {

class Notifier {
 public:
  Notifier() = default;
  Notifier(const Notifier&) = delete;
  Notifier& operator=(const Notifier&) = delete;

  // Wakes every waiter; call after changing what their predicates read.
  void Notify() {
    Lock();
    for (Waiter* w = head_; w != nullptr; w = w->next) sem_post(&w->sem);
    Unlock();
  }

  // Waits until pred() holds, at most `timeout`; returns pred()'s last value.
  template <class Pred>
  bool WaitFor(std::chrono::nanoseconds timeout, Pred pred) {
    const auto deadline = std::chrono::system_clock::now() + timeout;
    const auto ns =
        std::chrono::duration_cast<std::chrono::nanoseconds>(deadline.time_since_epoch()).count();
    const timespec abs{static_cast<time_t>(ns / 1000000000), static_cast<long>(ns % 1000000000)};
    Waiter self;
    sem_init(&self.sem, 0, 0);
    Lock();
    self.next = head_;
    head_ = &self;
    Unlock();
    bool ok = pred();
    while (!ok) {
      const bool timed_out = sem_timedwait(&self.sem, &abs) != 0 && errno == ETIMEDOUT;
      ok = pred();
      if (timed_out) break;
    }
    Lock();
    Waiter** link = &head_;
    while (*link != &self) link = &(*link)->next;
    *link = self.next;
    Unlock();
    sem_destroy(&self.sem);
    return ok;
  }

 private:
  struct Waiter {
    sem_t sem{};
    Waiter* next = nullptr;
  };

  // Held only around list updates and posts, which never block.
  void Lock() {
    while (locked_.exchange(true, std::memory_order_acquire)) std::this_thread::yield();
  }
  void Unlock() { locked_.store(false, std::memory_order_release); }

  std::atomic<bool> locked_{false};
  Waiter* head_ = nullptr;
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
