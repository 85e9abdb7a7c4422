#include "gc/destructor_queue.hpp"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>

#include "gc/collector.hpp"
#include "gc/marker.hpp"
#include "gc/preemptible_mutex.hpp"
#include "gc/stop_the_world.hpp"
#include "gc/sweeper.hpp"
#include "gc/thread_registry.hpp"
#include "gofin/testing.hpp"
#include "heap/fixalloc.hpp"
#include "heap/lock.hpp"
#include "heap/published.hpp"
#include "heap/safepoint.hpp"
#include "trace/trace.hpp"

namespace gofin::internal {

namespace {

struct QueuedDtor {
  void* obj = nullptr;
  DtorFn fn = nullptr;
  std::size_t count = 0;
  std::size_t size = 0;        // the object's slot, cleared once the destructor returned
  std::uint32_t sweepgen = 0;  // of the sweep that queued it (FreeDestroyed)
};

// Like Go's finblock: entries [0, cnt) are live. The marker walks every block ever made
// (alllink, never unlinked) with the world stopped and reads cnt, so moving blocks between
// the queue and the free list needs no care about where a stop lands.
struct DtorBlock {
  static constexpr std::size_t kEntries = (4096 - 24) / sizeof(QueuedDtor);
  DtorBlock* next = nullptr;     // the next block of the queue, or of the free list
  DtorBlock* alllink = nullptr;  // every block, for the marker
  std::atomic<std::uint32_t> cnt{0};
  std::uint32_t ran = 0;  // on the destroyed list: entries [0, ran) were run
  QueuedDtor e[kEntries];
};

struct DtorQueue {
  std::mutex lock;
  std::condition_variable wake;
  std::condition_variable idle;
  DtorBlock* top = nullptr;   // the queue: a stack of blocks, only the top one partly filled
  DtorBlock* free = nullptr;  // emptied blocks
  // Emptied blocks whose objects' memory the next FreeDestroyed may give back before the next
  // cycle's sweep would.
  DtorBlock* destroyed = nullptr;
  std::atomic<DtorBlock*> all{nullptr};
  FixAlloc<DtorBlock> blocks;
  std::uint64_t queued = 0;  // under lock
  std::uint64_t done = 0;    // under lock
  // The smallest `done` a waiter needs (under lock): the thread wakes waiters only then, not
  // after every destructor.
  std::uint64_t wake_at = UINT64_MAX;
  std::atomic<bool> started{false};
  bool registered = false;  // under lock: the thread is registered (StartDestructorThread)
};

// Read by the marker with the world stopped; threads may sweep after static destructors ran
// (published.hpp).
constinit std::atomic<DtorQueue*> g_queue{nullptr};

DtorQueue& Queue() { return PublishedOnce(g_queue); }

// Runs entry i-1 of b. Its own frame, which holds the object's address while the destructor
// runs, is dead once it returns (below the stack pointer, cleared before the thread sleeps).
[[gnu::noinline]] void RunOne(DtorBlock* b, std::uint32_t i) {
  const QueuedDtor d = b->e[i - 1];
  // The entry roots the object until cnt drops; from then on this frame does. The stop
  // signal runs on this thread: the fence keeps the copy before the store.
  std::atomic_signal_fence(std::memory_order_seq_cst);
  b->cnt.store(i - 1, std::memory_order_relaxed);
  d.fn(d.obj, d.count);
  // A destroyed object is dead memory until the next sweep frees it. A stale word anywhere
  // (this thread's registers, a mutator's stack) may still mark it meanwhile; cleared, it
  // keeps nothing else alive.
  std::memset(d.obj, 0, d.size);
  asm volatile("" : : "r"(d.obj) : "memory");  // the frame roots the object until here
}

// Runs a chain of blocks taken off the queue and returns how many destructors ran.
[[gnu::noinline]] std::uint64_t RunChain(DtorQueue& q, DtorBlock* chain) {
  std::uint64_t n = 0;
  // The timeline: an event per block, or per millisecond of fast blocks (trace_buffer.hpp).
  trace::BatchRun trace_run(trace::Event::kDestructors);
  while (chain != nullptr) {
    const std::uint32_t cnt = chain->cnt.load(std::memory_order_relaxed);
    for (std::uint32_t i = cnt; i > 0; --i) RunOne(chain, i);
    trace_run.BlockRan(cnt);
    n += cnt;
    DtorBlock* next = chain->next;
    {
      const PreemptibleLock lock(q.lock);
      chain->ran = cnt;
      chain->next = q.destroyed;
      q.destroyed = chain;
    }
    chain = next;
  }
  return n;
}

struct FreeArgs {
  DtorBlock* list = nullptr;
  std::uint64_t freed = 0;
};

void FreeListWithWorldStopped(void* arg) {
  auto& a = *static_cast<FreeArgs*>(arg);
  DestroyedFreer freer;
  for (DtorBlock* b = a.list; b != nullptr; b = b->next) {
    // Entries were added in sweep order and run from the end: walk them forwards again, so
    // that one span's objects come together.
    for (std::uint32_t i = 0; i < b->ran; ++i) {
      if (freer.Free(b->e[i].obj, b->e[i].sweepgen)) ++a.freed;
    }
  }
}

// Destroyed objects after which the destructor thread gives their memory back itself.
constexpr std::uint64_t kFreeAfter = 256;

void DestructorThread() {
  // The object being destroyed is on its stack: it must be scanned.
  RegisterThread();
  t_local.destructor_thread = true;
  DtorQueue& q = Queue();
  {
    const PreemptibleLock lock(q.lock);
    q.registered = true;
  }
  q.idle.notify_all();
  for (;;) {
    DtorBlock* chain = nullptr;
    {
      PreemptibleLock lock(q.lock);
      while (q.top == nullptr) q.wake.wait(lock.get());
      chain = q.top;
      q.top = nullptr;
    }
    const std::uint64_t n = RunChain(q, chain);
    // Give the memory back now rather than at the next cycle's sweep: a program whose garbage
    // has destructors would otherwise hold each object for two cycles, and its heap would
    // grow by that much (a brief stop, no mark). Small chains wait for GC() or the sweep.
    if (n >= kFreeAfter) FreeDestroyed();
    // Holding nothing: the timeline may be written from here (before the wipe below).
    trace::FlushIfDue();
    // What the destructors and the freeing left below this frame and in scratch registers
    // would keep whatever is allocated at those addresses next (bdwgc: GC_clear_stack): the
    // frames of the wait below were found holding a freed object's address, which then kept
    // the young object allocated in its slot through a minor cycle (ThreadSanitizer build).
    gofin_clear_stack(std::size_t{16} * 1024);
    const PreemptibleLock lock(q.lock);
    q.done += n;
    if (q.done >= q.wake_at) {
      q.wake_at = UINT64_MAX;
      q.idle.notify_all();
    }
  }
}

// Waits until every destructor queued before the call ran, or the deadline passed.
template <class Deadline>
bool WaitUntilRun(const Deadline& deadline) {
  // The destructor thread would wait for itself.
  if (t_local.destructor_thread) return false;
  DtorQueue* q = g_queue.load(std::memory_order_acquire);
  if (q == nullptr) return true;
  const NoCancellation no_cancel;
  PreemptibleLock lock(q->lock);
  const std::uint64_t target = q->queued;
  while (q->done < target) {
    q->wake_at = std::min(q->wake_at, target);
    if (!deadline(q->idle, lock.get())) return q->done >= target;
  }
  return true;
}

}  // namespace

void DestructorQueuedSentinel(void* /*obj*/, std::size_t /*count*/) {
  // Never called: it only marks a slot (heap/span.hpp).
  std::abort();
}

bool DestructorBatch::Add(void* obj, std::size_t size, const DtorSlot& d) {
  DtorQueue& q = Queue();
  if (!locked_) {
    q.lock.lock();
    locked_ = true;
  }
  DtorBlock* b = q.top;
  if (b == nullptr || b->cnt.load(std::memory_order_relaxed) == DtorBlock::kEntries) {
    DtorBlock* fresh = q.free;
    if (fresh != nullptr) {
      q.free = fresh->next;
    } else {
      // Metadata memory. When the OS refuses it, the caller keeps the object for a later
      // cycle instead of queueing it: its destructor is late, never lost.
      fresh = q.blocks.TryAlloc();
      if (fresh == nullptr) return false;
      fresh->alllink = q.all.load(std::memory_order_relaxed);
      // release: the marker (with the world stopped) reads the block's fields through it.
      q.all.store(fresh, std::memory_order_release);
    }
    fresh->next = b;
    q.top = fresh;
    b = fresh;
  }
  const std::uint32_t n = b->cnt.load(std::memory_order_relaxed);
  b->e[n] = QueuedDtor{obj, d.fn, d.count, size, sweepgen_};
  b->cnt.store(n + 1, std::memory_order_relaxed);
  ++added_;
  return true;
}

DestructorBatch::~DestructorBatch() {
  if (!locked_) return;
  DtorQueue& q = Queue();
  q.queued += added_;
  q.lock.unlock();
  if (added_ != 0) q.wake.notify_one();
}

void MarkDestructorQueueRoots(MarkWorker& w) {
  DtorQueue* q = g_queue.load(std::memory_order_acquire);
  if (q == nullptr) return;
  for (DtorBlock* b = q->all.load(std::memory_order_acquire); b != nullptr; b = b->alllink) {
    const std::uint32_t n = b->cnt.load(std::memory_order_relaxed);
    for (std::uint32_t i = 0; i < n; ++i) {
      w.MarkObjectOnly(reinterpret_cast<std::uintptr_t>(b->e[i].obj));
    }
  }
}

void StartDestructorThread() {
  DtorQueue& q = Queue();
  // acquire/release: a thread that sees true sees the thread created (or being created).
  if (q.started.load(std::memory_order_acquire)) return;
  PreemptibleLock lock(q.lock);
  if (q.started.load(std::memory_order_relaxed)) return;
  q.registered = false;
  std::thread(RunGofinThread, "gofin-dtor", &DestructorThread).detach();
  q.started.store(true, std::memory_order_release);
  // Registered before the collection that started it goes on, so that a program counting its
  // threads sees gofin's settled (the registration takes no lock the caller holds).
  const NoCancellation no_cancel;
  q.idle.wait(lock.get(), [&] { return q.registered; });
}

void ResetDestructorQueueAfterFork() {
  DtorQueue* q = g_queue.load(std::memory_order_acquire);
  if (q == nullptr) return;
  std::construct_at(&q->lock);
  std::construct_at(&q->wake);
  std::construct_at(&q->idle);
  // The thread did not survive the fork, nor did the chain it was running: every block with
  // entries left goes back on the queue (the entry it was running is lost; its object is
  // freed by the next cycle). The child's next cycle starts a new thread (not here: a thread
  // created in an atfork handler may find libc's locks in the parent's state).
  q->top = nullptr;
  q->free = nullptr;
  q->destroyed = nullptr;
  std::uint64_t pending = 0;
  for (DtorBlock* b = q->all.load(std::memory_order_relaxed); b != nullptr; b = b->alllink) {
    const std::uint32_t n = b->cnt.load(std::memory_order_relaxed);
    pending += n;
    if (n != 0) {
      b->next = q->top;
      q->top = b;
    } else {
      b->next = q->free;
      q->free = b;
    }
  }
  q->done = q->queued - pending;
  q->wake_at = UINT64_MAX;
  q->started.store(false, std::memory_order_relaxed);
}

void WaitForDestructors() {
  WaitUntilRun([](std::condition_variable& cv, std::unique_lock<std::mutex>& lock) {
    cv.wait(lock);
    return true;
  });
}

bool WaitForDestructorsFor(std::chrono::nanoseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  return WaitUntilRun([&](std::condition_variable& cv, std::unique_lock<std::mutex>& lock) {
    return cv.wait_until(lock, deadline) == std::cv_status::no_timeout;
  });
}

std::uint64_t FreeDestroyed() {
  DtorQueue* q = g_queue.load(std::memory_order_acquire);
  if (q == nullptr) return 0;
  FreeArgs args;
  {
    const PreemptibleLock lock(q->lock);
    args.list = q->destroyed;
    q->destroyed = nullptr;
  }
  if (args.list == nullptr) return 0;
  // The world is stopped and every cache flushed (no span is being allocated from); no lock
  // of the queue's is taken meanwhile (a stopped thread may hold it).
  WithWorldStopped(&FreeListWithWorldStopped, &args, StopKind::kCollectorWork);
  const PreemptibleLock lock(q->lock);
  DtorBlock* last = args.list;
  for (DtorBlock* b = args.list; b != nullptr; b = b->next) {
    b->ran = 0;
    last = b;
  }
  last->next = q->free;
  q->free = args.list;
  return args.freed;
}

std::uint64_t DestructorsQueued() {
  DtorQueue& q = Queue();
  const PreemptibleLock lock(q.lock);
  return q.queued;
}

std::size_t DestructorsPending() {
  DtorQueue& q = Queue();
  const PreemptibleLock lock(q.lock);
  return static_cast<std::size_t>(q.queued - q.done);
}

}  // namespace gofin::internal

namespace gofin::testing {

bool BlockUntilEmptyDestructorQueue(std::chrono::nanoseconds timeout) {
  return internal::WaitForDestructorsFor(timeout);
}

}  // namespace gofin::testing
