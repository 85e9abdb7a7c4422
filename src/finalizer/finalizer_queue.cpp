#include "finalizer/finalizer_queue.hpp"

#include <pthread.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <typeinfo>

#include "gc/marker.hpp"
#include "gc/stop_the_world.hpp"
#include "gc/thread_registry.hpp"
#include "gofin/finalizer.hpp"
#include "heap/fixalloc.hpp"
#include "heap/published.hpp"
#include "trace/trace.hpp"

namespace gofin::internal {

namespace {

struct FinState {
  std::mutex lock;  // Go: finlock
  std::condition_variable wake;
  std::condition_variable idle;  // for BlockUntilEmptyFinalizerQueue
  FinBlock* finq = nullptr;
  FinBlock* finc = nullptr;
  FinBlock* allfin = nullptr;
  FixAlloc<FinBlock> blocks;
  // The sweeper writes queued, the finalizer thread executed and status: apart, so that
  // neither write takes the other's cache line.
  alignas(64) std::atomic<std::uint64_t> queued{0};
  alignas(64) std::atomic<std::uint32_t> status{0};  // all bits but kFingRunningFinalizer
  // Written by the finalizer thread only: plain relaxed stores instead of read-modify-writes
  // on every finalizer (FinalizerThreadStatus merges the flag into the status bits).
  std::atomic<bool> running_finalizer{false};
  std::atomic<std::uint64_t> executed{0};
  bool running = false;  // under lock: a batch is being run
};

// Read by the marker with the world stopped (MarkFinalizerQueueRoots): see published.hpp.
constinit std::atomic<FinState*> g_fin_state{nullptr};

FinState& State() { return PublishedOnce(g_fin_state); }

// The state if any thread created it; never allocates (for the world-stopped marker).
FinState* StateIfCreated() { return g_fin_state.load(std::memory_order_acquire); }

void RunFinalizers();
constinit std::atomic<bool> g_fing_alive{false};

void StartFinalizerThread() {
  if (g_fing_alive.exchange(true, std::memory_order_acq_rel)) return;
  State().status.fetch_or(kFingCreated, std::memory_order_relaxed);
  std::thread(RunGofinThread, "gofin-finalizer", &RunFinalizers).detach();
}

// After fork(), in the child: the finalizer thread is gone (a finalizer it was running is
// lost); queued ones wait for a new thread, started now if one existed.
void AfterForkInChild() {
  FinState& st = State();
  std::construct_at(&st.lock);
  std::construct_at(&st.wake);
  std::construct_at(&st.idle);
  st.running = false;
  if (g_fing_alive.exchange(false, std::memory_order_acq_rel)) StartFinalizerThread();
}

// Records are run from the end of a block down; the one this many ahead is fetched early.
constexpr std::uint32_t kRunAhead = 8;

// Runs record i-1 of the batch. Its own frame, which holds the object and the callable while
// the finalizer runs, is dead once it returns (below the stack pointer, never scanned).
[[gnu::noinline]] void RunOne(FinState& st, FinBlock* batch, std::uint32_t i) {
  const QueuedFinalizer f = batch->fin[i - 1];
  // Go clears the record and lowers cnt after the call, so that the record roots the object
  // while the finalizer runs. gofin copies the record into this frame, which roots it from
  // here on, and lowers cnt before the call (the marker scans only records [0, cnt)): the
  // record's cache line, written by the sweeper on another core, is only read, never taken
  // for writing. The stop signal runs on this thread, and nothing else orders the plain copy
  // before the relaxed store: without the fence the compiler may load the record after the
  // store, and a stop in between would find the object rooted by neither.
  std::atomic_signal_fence(std::memory_order_seq_cst);
  batch->cnt.store(i - 1, std::memory_order_relaxed);
  if (i > kRunAhead) __builtin_prefetch(&batch->fin[i - 1 - kRunAhead]);
  st.running_finalizer.store(true, std::memory_order_relaxed);
  try {
    f.invoke(f.ctx, f.obj);
  } catch (...) {
    detail::ReportFinalizerException(std::current_exception());
  }
  st.running_finalizer.store(false, std::memory_order_relaxed);
  st.executed.store(st.executed.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  KeepAlive(f);
}

// Go's runfinq keeps its argument frame in a noscan block so that "the last finalized object
// is not collected" never happens; a C++ thread's stack is scanned conservatively, so the
// finalizer thread wipes what finished finalizers left below its frame and in scratch
// registers before it sleeps (bdwgc: GC_clear_stack).
void ClearDeadStack() { gofin_clear_stack(std::size_t{64} * 1024); }

// Go: runfinq.
void RunFinalizers() {
  RegisterThread();  // the records it runs are on its stack: it must be scanned
  FinState& st = State();
  for (;;) {
    FinBlock* batch = nullptr;
    {
      std::unique_lock lock(st.lock);
      while (st.finq == nullptr) {
        st.running = false;
        st.status.fetch_or(kFingWait, std::memory_order_relaxed);
        st.idle.notify_all();
        st.wake.wait(lock);
      }
      st.status.fetch_and(~(kFingWait | kFingWake), std::memory_order_relaxed);
      batch = st.finq;
      st.finq = nullptr;
      st.running = true;
    }
    // The timeline: an event per block, or per millisecond of fast blocks (trace_buffer.hpp).
    trace::BatchRun trace_run(trace::Event::kFinalizers);
    while (batch != nullptr) {
      // Counted before they run (the sweep does not add to a taken block).
      const std::uint32_t trace_count =
          trace_run.Active() ? batch->cnt.load(std::memory_order_relaxed) : 0;
      for (std::uint32_t i = batch->cnt.load(std::memory_order_relaxed); i > 0; --i) {
        RunOne(st, batch, i);
      }
      trace_run.BlockRan(trace_count);
      FinBlock* next = batch->next;
      {
        std::lock_guard lock(st.lock);
        batch->next = st.finc;
        st.finc = batch;
      }
      batch = next;
    }
    // Between batches, holding nothing: the timeline may be written from here (before the
    // wipe, which clears what the writer's frames leave too).
    trace_run.End();
    trace::FlushIfDue();
    ClearDeadStack();
  }
}

}  // namespace

FinalizerQueueBatch::FinalizerQueueBatch() { State().lock.lock(); }

void FinalizerQueueBatch::Publish() {
  if (block_ == nullptr) return;
  const auto n = static_cast<std::uint32_t>(next_ - &block_->fin[0]);
  added_ += n - block_->cnt.load(std::memory_order_relaxed);
  block_->cnt.store(n, std::memory_order_relaxed);
}

void FinalizerQueueBatch::NextBlock() {
  Publish();
  FinState& st = State();
  FinBlock* b = st.finq;
  if (b == nullptr || b->cnt.load(std::memory_order_relaxed) == FinBlock::kRecords) {
    b = st.finc;
    if (b != nullptr) {
      st.finc = b->next;
      b->cnt.store(0, std::memory_order_relaxed);
    } else {
      b = st.blocks.Alloc();
      b->alllink = st.allfin;
      st.allfin = b;
    }
    b->next = st.finq;
    st.finq = b;
  }
  block_ = b;
  next_ = &b->fin[b->cnt.load(std::memory_order_relaxed)];
  end_ = &b->fin[FinBlock::kRecords];
}

FinalizerQueueBatch::~FinalizerQueueBatch() {
  Publish();
  FinState& st = State();
  if (added_ != 0) {
    // Counted before the finalizer thread can see the records (it takes the lock first), so
    // Executed never passes Queued.
    st.queued.fetch_add(added_, std::memory_order_relaxed);
    st.status.fetch_or(kFingWake, std::memory_order_relaxed);
  }
  st.lock.unlock();
  // Go: wakefing.
  if (added_ != 0) st.wake.notify_one();
}

void QueueFinalizer(void* obj, FinalizerInvoke invoke, void* ctx) {
  FinalizerQueueBatch batch;
  batch.Add(obj, invoke, ctx);
}

void CreateFinalizerThread() {
  static std::once_flag once;
  std::call_once(once, [] { pthread_atfork(nullptr, nullptr, &AfterForkInChild); });
  StartFinalizerThread();
}

void MarkFinalizerQueueRoots(MarkWorker& w) {
  FinState* state = StateIfCreated();
  if (state == nullptr) return;  // nothing was ever queued
  FinState& st = *state;
  for (FinBlock* b = st.allfin; b != nullptr; b = b->alllink) {
    const std::uint32_t n = b->cnt.load(std::memory_order_relaxed);
    const auto lo = reinterpret_cast<std::uintptr_t>(&b->fin[0]);
    w.ScanRange(lo, lo + n * sizeof(QueuedFinalizer));
  }
}

bool BlockUntilEmptyFinalizerQueue(std::chrono::nanoseconds timeout) {
  FinState& st = State();
  std::unique_lock lock(st.lock);
  return st.idle.wait_for(lock, timeout, [&] { return st.finq == nullptr && !st.running; });
}

std::uint32_t FinalizerThreadStatus() {
  const FinState& st = State();
  return st.status.load(std::memory_order_relaxed) |
         (st.running_finalizer.load(std::memory_order_relaxed) ? kFingRunningFinalizer : 0U);
}

FinalizerCounters ReadFinalizerCounters() {
  // Executed first: a record counted as executed was counted as queued earlier.
  const std::uint64_t executed = State().executed.load();
  return FinalizerCounters{State().queued.load(), executed};
}

}  // namespace gofin::internal
