#include "cleanup/cleanup_queue.hpp"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>

#include "gc/collector.hpp"
#include "gc/marker.hpp"
#include "gc/stop_the_world.hpp"
#include "gc/thread_registry.hpp"
#include "gofin/finalizer.hpp"
#include "gofin/testing.hpp"
#include "heap/fixalloc.hpp"

namespace gofin::internal {

namespace {

// Go: cleanupBlock. A box is the GC block of cleanup/add_cleanup.cpp; its first word is the
// function that runs it.
struct CleanupBlock {
  static constexpr std::size_t kEntries = (4096 - 24) / sizeof(void*);
  CleanupBlock* next = nullptr;
  CleanupBlock* alllink = nullptr;
  std::atomic<std::uint32_t> cnt{0};
  void* box[kEntries];
};

using BoxInvoke = void (*)(void* box);

struct CleanupQueue {
  std::mutex lock;
  std::condition_variable wake;
  std::condition_variable idle;
  CleanupBlock* full = nullptr;     // blocks waiting for a thread
  CleanupBlock* filling = nullptr;  // the block batches add to
  CleanupBlock* free = nullptr;
  std::atomic<CleanupBlock*> all{nullptr};
  FixAlloc<CleanupBlock> blocks;
  std::uint64_t queued = 0;    // under lock
  std::uint64_t executed = 0;  // under lock
  int threads = 0;             // under lock
  int sleeping = 0;            // under lock
  int running_blocks = 0;      // under lock: blocks taken by a thread and not finished
};

constinit std::atomic<CleanupQueue*> g_queue{nullptr};
// Another cleanup thread would help (none yet, or blocks wait and none sleeps): read without
// the lock by every AddCleanup (Go: gcCleanups.needG). Relaxed: a late thread is harmless.
constinit std::atomic<bool> g_want_thread{true};

CleanupQueue& Queue() {
  if (CleanupQueue* q = g_queue.load(std::memory_order_acquire)) [[likely]]
    return *q;
  auto fresh = std::make_unique<CleanupQueue>();
  CleanupQueue* expected = nullptr;
  // acq_rel: publishes the constructed queue; on failure, acquires the winner's.
  if (g_queue.compare_exchange_strong(expected, fresh.get(), std::memory_order_acq_rel,
                                      std::memory_order_acquire)) {
    return *fresh.release();
  }
  return *expected;
}

// Go: the cleanup goroutines' limit, max(GOMAXPROCS/4, 1), with gofin's mark workers for
// GOMAXPROCS.
int MaxThreads() { return std::max(Config().workers / 4, 1); }

// Runs box i-1 of b. Its frame holds the box while the cleanup runs and is dead once it
// returns (cleared before the thread sleeps).
[[gnu::noinline]] void RunOne(CleanupBlock* b, std::uint32_t i) {
  void* const box = b->box[i - 1];
  // The entry roots the box until cnt drops; from then on this frame does. The stop signal
  // runs on this thread: the fence keeps the load before the store.
  std::atomic_signal_fence(std::memory_order_seq_cst);
  b->cnt.store(i - 1, std::memory_order_relaxed);
  try {
    (*static_cast<BoxInvoke*>(box))(box);
  } catch (...) {
    detail::ReportFinalizerException(std::current_exception());
  }
  asm volatile("" : : "r"(box) : "memory");
}

[[gnu::noinline]] std::uint32_t RunBlock(CleanupBlock* b) {
  const std::uint32_t n = b->cnt.load(std::memory_order_relaxed);
  for (std::uint32_t i = n; i > 0; --i) RunOne(b, i);
  return n;
}

// Takes a block to run: a full one, else the one batches fill (the queue is then empty).
CleanupBlock* TakeBlock(CleanupQueue& q) {
  if (CleanupBlock* b = q.full) {
    q.full = b->next;
    return b;
  }
  CleanupBlock* b = q.filling;
  if (b != nullptr && b->cnt.load(std::memory_order_relaxed) != 0) {
    q.filling = nullptr;
    return b;
  }
  return nullptr;
}

void CleanupThread() {
  RegisterThread();  // the box it runs is on its stack: it must be scanned
  CleanupQueue& q = Queue();
  for (;;) {
    CleanupBlock* b = nullptr;
    {
      std::unique_lock lock(q.lock);
      while ((b = TakeBlock(q)) == nullptr) {
        if (q.running_blocks == 0) q.idle.notify_all();
        ++q.sleeping;
        q.wake.wait(lock);
        --q.sleeping;
      }
      ++q.running_blocks;
    }
    const std::uint32_t n = RunBlock(b);
    // What the cleanups left below this frame and in scratch registers would keep their
    // boxes' referents alive (bdwgc: GC_clear_stack).
    gofin_clear_stack(std::size_t{16} * 1024);
    std::lock_guard lock(q.lock);
    b->next = q.free;
    q.free = b;
    q.executed += n;
    --q.running_blocks;
    if (q.running_blocks == 0 && q.full == nullptr &&
        (q.filling == nullptr || q.filling->cnt.load(std::memory_order_relaxed) == 0)) {
      q.idle.notify_all();
    }
  }
}

// gofin's waits are not cancellation points.
class NoCancellation {
 public:
  NoCancellation() { pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &old_); }
  ~NoCancellation() { pthread_setcancelstate(old_, nullptr); }
  NoCancellation(const NoCancellation&) = delete;
  NoCancellation& operator=(const NoCancellation&) = delete;

 private:
  int old_ = 0;
};

}  // namespace

bool CleanupBatch::Add(void* box) {
  CleanupQueue& q = Queue();
  if (!locked_) {
    q.lock.lock();
    locked_ = true;
  }
  CleanupBlock* b = q.filling;
  if (b == nullptr || b->cnt.load(std::memory_order_relaxed) == CleanupBlock::kEntries) {
    CleanupBlock* fresh = q.free;
    if (fresh != nullptr) {
      q.free = fresh->next;
    } else {
      fresh = q.blocks.TryAlloc();
      if (fresh == nullptr) return false;
      fresh->alllink = q.all.load(std::memory_order_relaxed);
      // release: the marker (with the world stopped) reads the block's fields through it.
      q.all.store(fresh, std::memory_order_release);
    }
    if (b != nullptr) {
      b->next = q.full;
      q.full = b;
    }
    fresh->next = nullptr;
    q.filling = fresh;
    b = fresh;
  }
  const std::uint32_t n = b->cnt.load(std::memory_order_relaxed);
  b->box[n] = box;
  b->cnt.store(n + 1, std::memory_order_relaxed);
  ++added_;
  return true;
}

CleanupBatch::~CleanupBatch() {
  if (!locked_) return;
  CleanupQueue& q = Queue();
  q.queued += added_;
  const bool more = q.full != nullptr;
  if (more && q.sleeping == 0 && q.threads < MaxThreads()) {
    g_want_thread.store(true, std::memory_order_relaxed);
  }
  q.lock.unlock();
  if (added_ == 0) return;
  // Go: wake a sleeping cleanup goroutine per block of work.
  if (more) {
    q.wake.notify_all();
  } else {
    q.wake.notify_one();
  }
}

void MarkCleanupQueueRoots(MarkWorker& w) {
  CleanupQueue* q = g_queue.load(std::memory_order_acquire);
  if (q == nullptr) return;
  for (CleanupBlock* b = q->all.load(std::memory_order_acquire); b != nullptr; b = b->alllink) {
    const std::uint32_t n = b->cnt.load(std::memory_order_relaxed);
    for (std::uint32_t i = 0; i < n; ++i)
      w.MarkPointer(reinterpret_cast<std::uintptr_t>(b->box[i]));
  }
}

void StartCleanupThreads() {
  if (!g_want_thread.load(std::memory_order_relaxed)) [[likely]]
    return;
  CleanupQueue& q = Queue();
  std::unique_lock lock(q.lock);
  g_want_thread.store(false, std::memory_order_relaxed);
  // Go: needG/createGs. One thread at first; another while blocks wait and none sleeps.
  const bool want = q.threads == 0 || (q.full != nullptr && q.sleeping == 0);
  if (!want || q.threads >= MaxThreads()) return;
  ++q.threads;
  lock.unlock();
  std::thread(CleanupThread).detach();
}

void ResetCleanupQueueAfterFork() {
  CleanupQueue* q = g_queue.load(std::memory_order_acquire);
  if (q == nullptr) return;
  std::construct_at(&q->lock);
  std::construct_at(&q->wake);
  std::construct_at(&q->idle);
  // Every block with entries left goes back on the queue (a box being run at the fork is
  // lost); the child's next cycle starts new threads.
  q->full = nullptr;
  q->filling = nullptr;
  q->free = nullptr;
  std::uint64_t pending = 0;
  for (CleanupBlock* b = q->all.load(std::memory_order_relaxed); b != nullptr; b = b->alllink) {
    const std::uint32_t n = b->cnt.load(std::memory_order_relaxed);
    pending += n;
    if (n != 0) {
      b->next = q->full;
      q->full = b;
    } else {
      b->next = q->free;
      q->free = b;
    }
  }
  q->executed = q->queued - pending;
  q->threads = 0;
  q->sleeping = 0;
  q->running_blocks = 0;
  g_want_thread.store(true, std::memory_order_relaxed);
}

bool WaitForCleanupsFor(std::chrono::nanoseconds timeout) {
  CleanupQueue* q = g_queue.load(std::memory_order_acquire);
  if (q == nullptr) return true;
  const NoCancellation no_cancel;
  std::unique_lock lock(q->lock);
  return q->idle.wait_for(lock, timeout, [&] { return q->executed == q->queued; });
}

std::uint64_t CleanupsQueued() {
  CleanupQueue& q = Queue();
  std::lock_guard lock(q.lock);
  return q.queued;
}

std::uint64_t CleanupsExecuted() {
  CleanupQueue& q = Queue();
  std::lock_guard lock(q.lock);
  return q.executed;
}

std::uint64_t CleanupsPending() {
  CleanupQueue& q = Queue();
  std::lock_guard lock(q.lock);
  return q.queued - q.executed;
}

}  // namespace gofin::internal

namespace gofin::testing {

bool BlockUntilEmptyCleanupQueue(std::chrono::nanoseconds timeout) {
  return internal::WaitForCleanupsFor(timeout);
}

}  // namespace gofin::testing
