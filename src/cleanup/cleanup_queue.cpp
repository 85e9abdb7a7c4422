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
#include "gc/preemptible_mutex.hpp"
#include "gc/stop_the_world.hpp"
#include "gc/thread_registry.hpp"
#include "gofin/finalizer.hpp"
#include "gofin/testing.hpp"
#include "heap/fixalloc.hpp"
#include "heap/lock.hpp"
#include "heap/published.hpp"
#include "trace/trace.hpp"

namespace gofin::internal {

namespace {

// Go: cleanupBlock. A box is the GC block of cleanup/add_cleanup.cpp; its first word is the
// function that runs it. Entries [0, cnt) are queued. Once a thread took the block, entries
// are claimed from the end by a compare-and-swap on cnt, so that any cleanup thread may help
// run one block: two cleanups that wait for each other both finish when two threads exist
// (Go runs one block per goroutine; API.md asks for cleanups that run concurrently).
// NOLINTNEXTLINE(cppcoreguidelines-pro-type-member-init): only box[0, cnt) is ever read
struct CleanupBlock {
  static constexpr std::size_t kEntries = (4096 - 32) / sizeof(void*);
  CleanupBlock* next = nullptr;     // in full, running or free
  CleanupBlock* alllink = nullptr;  // every block, for the marker
  std::atomic<std::uint32_t> cnt{0};
  std::uint32_t users = 0;  // under lock: threads running this block
  void* box[kEntries];
};

using BoxInvoke = void (*)(void* box);

struct CleanupQueue {
  std::mutex lock;
  std::condition_variable wake;
  std::condition_variable idle;
  CleanupBlock* full = nullptr;     // blocks no thread took yet
  CleanupBlock* filling = nullptr;  // the block batches add to (no thread has it)
  CleanupBlock* running = nullptr;  // taken blocks, until their last user leaves
  CleanupBlock* free = nullptr;
  std::atomic<CleanupBlock*> all{nullptr};
  FixAlloc<CleanupBlock> blocks;
  std::uint64_t queued = 0;  // under lock
  std::atomic<std::uint64_t> executed{0};
  int threads = 0;               // under lock
  std::atomic<int> sleeping{0};  // written under lock, read by running threads
};

// Read by the marker with the world stopped (published.hpp).
constinit std::atomic<CleanupQueue*> g_queue{nullptr};

CleanupQueue& Queue() { return PublishedOnce(g_queue); }

// Go: the cleanup goroutines' limit, max(GOMAXPROCS/4, 1), with gofin's mark workers for
// GOMAXPROCS.
int MaxThreads() { return std::max(Config().workers / 4, 1); }

void CleanupThread();

// Starts another cleanup thread if the limit allows (Go: needG, createGs). Lock not held.
void MaybeAddThread(CleanupQueue& q) {
  {
    const PreemptibleLock lock(q.lock);
    if (q.threads >= MaxThreads()) return;
    ++q.threads;
  }
  std::thread(RunGofinThread, "gofin-cleanup", &CleanupThread).detach();
}

// Claims and runs one entry of b; false when none is left. Its frame holds the box while the
// cleanup runs and is dead once it returns (cleared before the thread sleeps).
[[gnu::noinline]] bool RunOne(CleanupBlock* b) {
  std::uint32_t n = b->cnt.load(std::memory_order_relaxed);
  void* box = nullptr;
  for (;;) {
    if (n == 0) return false;
    // The entry is read before cnt drops past it: from the compare-and-swap on, this frame
    // roots the box, and until then the queue does. Entries of a taken block never change.
    box = b->box[n - 1];
    std::atomic_signal_fence(std::memory_order_seq_cst);  // the stop runs on this thread
    // relaxed: entries were published under the queue's lock, which this thread took.
    if (b->cnt.compare_exchange_weak(n, n - 1, std::memory_order_relaxed)) break;
  }
  try {
    (*static_cast<BoxInvoke*>(box))(box);
  } catch (...) {
    detail::ReportFinalizerException(std::current_exception());
  }
  asm volatile("" : : "r"(box) : "memory");
  return true;
}

// Runs entries of b until none is left; returns how many this thread ran.
[[gnu::noinline]] std::uint64_t RunBlock(CleanupQueue& q, CleanupBlock* b) {
  // More than this thread's first cleanup waits in the block: a sleeping thread is woken, or
  // a thread started, to claim from it too, since any cleanup may block (even on another of
  // the block). Once per block: per cleanup, the wake-up would cost more than the cleanup.
  if (b->cnt.load(std::memory_order_relaxed) > 1) {
    if (q.sleeping.load(std::memory_order_relaxed) > 0) {
      q.wake.notify_one();
    } else {
      MaybeAddThread(q);
    }
  }
  std::uint64_t ran = 0;
  while (RunOne(b)) ++ran;
  return ran;
}

// A block to run, taken or joined (lock held): one no thread has, else one being run that
// still has entries, else nullptr.
CleanupBlock* TakeBlock(CleanupQueue& q) {
  CleanupBlock* b = q.full;
  if (b != nullptr) {
    q.full = b->next;
  } else if (q.filling != nullptr && q.filling->cnt.load(std::memory_order_relaxed) != 0) {
    b = q.filling;
    q.filling = nullptr;
  }
  if (b != nullptr) {
    b->next = q.running;
    q.running = b;
  } else {
    for (CleanupBlock* r = q.running; r != nullptr; r = r->next) {
      if (r->cnt.load(std::memory_order_relaxed) != 0) {
        b = r;
        break;
      }
    }
  }
  if (b != nullptr) ++b->users;
  return b;
}

// The last user of a drained block gives it back (lock held).
void LeaveBlock(CleanupQueue& q, CleanupBlock* b) {
  if (--b->users != 0 || b->cnt.load(std::memory_order_relaxed) != 0) return;
  for (CleanupBlock** link = &q.running; *link != nullptr; link = &(*link)->next) {
    if (*link == b) {
      *link = b->next;
      break;
    }
  }
  b->next = q.free;
  q.free = b;
}

bool Drained(const CleanupQueue& q) {
  return q.executed.load(std::memory_order_relaxed) == q.queued;
}

void CleanupThread() {
  RegisterThread();  // the box it runs is on its stack: it must be scanned
  CleanupQueue& q = Queue();
  for (;;) {
    CleanupBlock* b = nullptr;
    {
      PreemptibleLock lock(q.lock);
      while ((b = TakeBlock(q)) == nullptr) {
        if (Drained(q)) q.idle.notify_all();
        q.sleeping.fetch_add(1, std::memory_order_relaxed);
        q.wake.wait(lock.get());
        q.sleeping.fetch_sub(1, std::memory_order_relaxed);
      }
    }
    // The timeline: one event per block this thread ran cleanups from.
    const trace::BatchStart trace_batch = trace::BeginBatch();
    const std::uint64_t ran = RunBlock(q, b);
    if (trace_batch.start != 0) trace::Batch(trace::Event::kCleanups, trace_batch, ran);
    // Holding nothing: the timeline may be written from here (before the wipe below).
    trace::FlushIfDue();
    // What the cleanups left below this frame and in scratch registers would keep their
    // boxes' referents alive (bdwgc: GC_clear_stack); cleared before they count as run, so
    // that BlockUntilEmptyCleanupQueue never returns with them still there.
    gofin_clear_stack(std::size_t{16} * 1024);
    // Counted once per block (BlockUntilEmptyCleanupQueue, ReadCleanupStats' Executed).
    q.executed.fetch_add(ran, std::memory_order_relaxed);
    const PreemptibleLock lock(q.lock);
    LeaveBlock(q, b);
    if (Drained(q)) q.idle.notify_all();
  }
}

constinit std::atomic<bool> g_have_thread{false};
// Work was queued while every thread was busy (Go: needg): the next AddCleanup starts one.
// Relaxed: a thread started late is harmless.
constinit std::atomic<bool> g_want_thread{false};

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
  if (added_ != 0 && q.sleeping.load(std::memory_order_relaxed) == 0 && q.threads > 0 &&
      q.threads < MaxThreads()) {
    g_want_thread.store(true, std::memory_order_relaxed);
  }
  q.lock.unlock();
  // Go: wake one sleeping cleanup goroutine per block of work; a thread that starts running a
  // block wakes (or starts) another while entries remain.
  if (added_ != 0) q.wake.notify_one();
}

void MarkCleanupQueueRoots(MarkWorker& w) {
  CleanupQueue* q = g_queue.load(std::memory_order_acquire);
  if (q == nullptr) return;
  for (CleanupBlock* b = q->all.load(std::memory_order_acquire); b != nullptr; b = b->alllink) {
    const std::uint32_t n = b->cnt.load(std::memory_order_relaxed);
    for (std::uint32_t i = 0; i < n; ++i) {
      w.MarkPointer(reinterpret_cast<std::uintptr_t>(b->box[i]));
    }
  }
}

void StartCleanupThreads() {
  // acquire/release: whoever sees true sees the first thread counted.
  if (g_have_thread.load(std::memory_order_acquire)) [[likely]] {
    if (g_want_thread.load(std::memory_order_relaxed) &&
        g_want_thread.exchange(false, std::memory_order_relaxed)) [[unlikely]] {
      MaybeAddThread(Queue());
    }
    return;
  }
  CleanupQueue& q = Queue();
  {
    const PreemptibleLock lock(q.lock);
    if (q.threads != 0) return;
    ++q.threads;
    g_have_thread.store(true, std::memory_order_release);
  }
  std::thread(RunGofinThread, "gofin-cleanup", &CleanupThread).detach();
}

void ResetCleanupQueueAfterFork() {
  CleanupQueue* q = g_queue.load(std::memory_order_acquire);
  if (q == nullptr) return;
  std::construct_at(&q->lock);
  std::construct_at(&q->wake);
  std::construct_at(&q->idle);
  // Every block with entries left goes back on the queue (a box being run at the fork is
  // lost); the next AddCleanup starts a thread again.
  q->full = nullptr;
  q->filling = nullptr;
  q->running = nullptr;
  q->free = nullptr;
  std::uint64_t pending = 0;
  for (CleanupBlock* b = q->all.load(std::memory_order_relaxed); b != nullptr; b = b->alllink) {
    const std::uint32_t n = b->cnt.load(std::memory_order_relaxed);
    b->users = 0;
    pending += n;
    if (n != 0) {
      b->next = q->full;
      q->full = b;
    } else {
      b->next = q->free;
      q->free = b;
    }
  }
  q->executed.store(q->queued - pending, std::memory_order_relaxed);
  q->threads = 0;
  q->sleeping.store(0, std::memory_order_relaxed);
  g_have_thread.store(false, std::memory_order_relaxed);
  g_want_thread.store(false, std::memory_order_relaxed);
}

bool WaitForCleanupsFor(std::chrono::nanoseconds timeout) {
  CleanupQueue* q = g_queue.load(std::memory_order_acquire);
  if (q == nullptr) return true;
  const NoCancellation no_cancel;
  PreemptibleLock lock(q->lock);
  return q->idle.wait_for(lock.get(), timeout, [&] { return Drained(*q); });
}

std::uint64_t CleanupsQueued() {
  CleanupQueue& q = Queue();
  const PreemptibleLock lock(q.lock);
  return q.queued;
}

std::uint64_t CleanupsExecuted() { return Queue().executed.load(std::memory_order_relaxed); }

std::uint64_t CleanupsPending() {
  CleanupQueue& q = Queue();
  const PreemptibleLock lock(q.lock);
  return q.queued - q.executed.load(std::memory_order_relaxed);
}

}  // namespace gofin::internal

namespace gofin::testing {

bool BlockUntilEmptyCleanupQueue(std::chrono::nanoseconds timeout) {
  return internal::WaitForCleanupsFor(timeout);
}

}  // namespace gofin::testing
