#include "gc/marker.hpp"

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "heap/heap.hpp"

#define GOFIN_NO_SANITIZE __attribute__((no_sanitize("address", "thread")))

namespace gofin::internal {

namespace {

// Go: maxObletBytes. Large objects are scanned in pieces so one worker never holds a
// gigabyte of scanning that the others cannot share.
constexpr std::uintptr_t kObletBytes = std::uintptr_t{128} * 1024;
// How many objects a worker scans between offers of work to idle workers.
constexpr int kBalanceInterval = 64;

constexpr std::size_t kMaxExtraRoots = 8;
constinit std::atomic<ExtraRootsFn> g_extra_roots[kMaxExtraRoots] = {};

// Go: gcBgMarkWorker's parking. The pool's threads are not registered mutators: they never
// hold GC pointers outside a mark phase and are never stopped.
struct MarkPhase {
  const RootRangeList* roots = nullptr;
  std::atomic<std::size_t> next_root{0};
  std::atomic<int> idle{0};
  std::atomic<bool> overflow{false};
  std::atomic<std::uint64_t> bytes_marked{0};
  WorkPool pool;
  int nworkers = 1;
  bool rescan = false;  // an overflow pass: roots are replaced by a heap walk
};

struct WorkerPool {
  std::mutex lock;
  std::condition_variable start;
  std::condition_variable done;
  std::uint64_t generation = 0;
  int running = 0;
  int threads = 0;
  MarkPhase* phase = nullptr;
};

constinit WorkerPool* g_pool = nullptr;
WorkerPool& Pool() {
  static WorkerPool* p = g_pool = new WorkerPool();  // NOLINT: lives for the process
  return *g_pool;
}

MarkPhase& Phase() {
  static MarkPhase* p = new MarkPhase();  // NOLINT: lives for the process
  return *p;
}

void ForEachMarkedScanObject(MarkWorker& w) {
  const std::uintptr_t lo = g_heap.arenas.LoIndex();
  const std::uintptr_t hi = g_heap.arenas.HiIndex();
  for (std::uintptr_t ai = lo; ai < hi; ++ai) {
    HeapArena* a = g_heap.arenas.ArenaOf(ai << kArenaShift);
    if (a == nullptr) continue;
    for (std::size_t pg = 0; pg < kPagesPerArena; ++pg) {
      if (!TestPageBit(a->page_in_use, pg)) continue;
      Span* s = a->SpanAt(pg);
      if (s == nullptr || s->state != SpanState::kInUse || s->spanclass.NoScan()) continue;
      for (std::size_t i = 0; i < s->nelems; ++i) {
        if (s->IsMarked(i)) w.ScanObjectContents(s->ObjBase(i));
      }
    }
  }
}

void RunWorker(MarkPhase& ph, int id) {
  WorkQueue q(ph.pool);
  MarkWorker w(q, ph.overflow);
  if (ph.rescan) {
    if (id == 0) ForEachMarkedScanObject(w);
  } else {
    for (;;) {
      const std::size_t i = ph.next_root.fetch_add(1, std::memory_order_relaxed);
      if (i >= ph.roots->Size()) break;
      w.ScanRange((*ph.roots)[i].lo, (*ph.roots)[i].hi);
    }
    if (id == 0) {
      for (auto& hook : g_extra_roots) {
        if (ExtraRootsFn fn = hook.load(std::memory_order_acquire)) fn(w);
      }
    }
  }
  // Go: gcMarkDone's termination: a worker is done when every worker is idle and no full
  // buffer is left to steal.
  for (;;) {
    w.Drain(&ph.idle);
    ph.idle.fetch_add(1, std::memory_order_seq_cst);
    bool finished = false;
    for (int spins = 0;; ++spins) {
      if (ph.pool.HasFull()) {
        ph.idle.fetch_sub(1, std::memory_order_seq_cst);
        break;
      }
      if (ph.idle.load(std::memory_order_seq_cst) == ph.nworkers) {
        finished = true;
        break;
      }
      if (spins < 256) {
        __builtin_ia32_pause();
      } else {
        std::this_thread::yield();
      }
    }
    if (finished) break;
  }
  q.Dispose();
  ph.bytes_marked.fetch_add(w.BytesMarked(), std::memory_order_relaxed);
}

void WorkerThread(int id) {
  WorkerPool& p = Pool();
  std::uint64_t seen = 0;
  for (;;) {
    MarkPhase* ph = nullptr;
    {
      std::unique_lock lock(p.lock);
      p.start.wait(lock, [&] { return p.generation != seen; });
      seen = p.generation;
      ph = p.phase;
    }
    if (id < ph->nworkers) RunWorker(*ph, id);
    {
      std::lock_guard lock(p.lock);
      if (--p.running == 0) p.done.notify_all();
    }
  }
}

void RunPhase(MarkPhase& ph) {
  ph.next_root.store(0, std::memory_order_relaxed);
  ph.idle.store(0, std::memory_order_relaxed);
  WorkerPool& p = Pool();
  const int helpers = std::min(ph.nworkers - 1, p.threads);
  ph.nworkers = helpers + 1;
  if (helpers > 0) {
    std::lock_guard lock(p.lock);
    p.phase = &ph;
    p.running = p.threads;
    ++p.generation;
    p.start.notify_all();
  }
  RunWorker(ph, 0);
  if (helpers > 0) {
    std::unique_lock lock(p.lock);
    p.done.wait(lock, [&] { return p.running == 0; });
  }
}

}  // namespace

void AddExtraRootsHook(ExtraRootsFn fn) {
  for (auto& hook : g_extra_roots) {
    ExtraRootsFn expected = nullptr;
    if (hook.compare_exchange_strong(expected, fn, std::memory_order_acq_rel)) return;
  }
}

MarkWorker::MarkWorker(WorkQueue& q, std::atomic<bool>& overflow)
    : queue_(q),
      overflow_(overflow),
      arenas_(g_heap.arenas.Entries()),
      arena_lo_(g_heap.arenas.LoIndex()),
      arena_count_(g_heap.arenas.HiIndex() > g_heap.arenas.LoIndex()
                       ? g_heap.arenas.HiIndex() - g_heap.arenas.LoIndex()
                       : 0) {}

GOFIN_NO_SANITIZE void MarkWorker::ScanRange(std::uintptr_t lo, std::uintptr_t hi) {
  const std::uintptr_t heap_lo = arena_lo_ << kArenaShift;
  const std::uintptr_t heap_size = arena_count_ << kArenaShift;
  for (std::uintptr_t p = lo; p < hi; p += sizeof(std::uintptr_t)) {
    const std::uintptr_t w = *reinterpret_cast<const std::uintptr_t*>(p);
    if (w - heap_lo < heap_size) MarkPointer(w);
  }
}

// Go: findObject + greyobject.
void MarkWorker::MarkPointer(std::uintptr_t p) {
  const std::uintptr_t ai = (p >> kArenaShift) - arena_lo_;
  if (ai >= arena_count_ || arenas_ == nullptr) return;
  const HeapArena* a = arenas_[ai + arena_lo_].load(std::memory_order_relaxed);
  if (a == nullptr) return;
  Span* s = a->SpanAt(PageInArena(p));
  if (s == nullptr || s->state != SpanState::kInUse || !s->Contains(p)) return;
  const std::size_t i = s->ObjIndex(p);
  // Already marked is the common case for shared objects: test that before anything else.
  if (s->IsMarked(i) || !s->IsAllocated(i) || !s->TryMark(i)) return;
  bytes_marked_ += s->elemsize;
  if (s->spanclass.NoScan()) return;
  const std::uintptr_t base = s->ObjBase(i);
  __builtin_prefetch(reinterpret_cast<const void*>(base));
  if (!queue_.Push(base)) overflow_.store(true, std::memory_order_relaxed);
}

void MarkWorker::ScanObjectContents(std::uintptr_t base) {
  Span* s = g_heap.arenas.SpanOfHeap(base);
  if (s == nullptr || s->spanclass.NoScan()) return;
  if (s->large && s->elemsize > kObletBytes) {
    // Queue the oblets instead of scanning a huge object inline.
    if (!queue_.Push(base)) overflow_.store(true, std::memory_order_relaxed);
    return;
  }
  ScanRange(base, base + s->elemsize);
}

void MarkWorker::ScanObject(std::uintptr_t obj) {
  Span* s = g_heap.arenas.SpanOf(obj);
  std::uintptr_t end = obj + s->elemsize;
  if (s->large) {
    end = std::min(obj + kObletBytes, s->limit);
    if (end < s->limit && !queue_.Push(end)) overflow_.store(true, std::memory_order_relaxed);
  }
  ScanRange(obj, end);
}

void MarkWorker::Drain(const std::atomic<int>* idle_workers) {
  std::uintptr_t obj = 0;
  int n = 0;
  while (queue_.Pop(obj)) {
    ScanObject(obj);
    if (++n == kBalanceInterval) {
      n = 0;
      if (idle_workers->load(std::memory_order_relaxed) > 0 && queue_.LocalCount() > 4) {
        queue_.Balance();
      }
    }
  }
}

void InitMarkWorkers(int nworkers) {
  WorkerPool& p = Pool();
  std::lock_guard lock(p.lock);
  while (p.threads < nworkers - 1) {
    std::thread(WorkerThread, p.threads + 1).detach();
    ++p.threads;
  }
}

void ResetMarkWorkersAfterFork() {
  // The workers did not survive the fork; their pool's lock and condition variables may
  // describe threads that no longer exist. A fresh pool (the old one is abandoned).
  (void)Pool();
  g_pool = new WorkerPool();  // NOLINT: lives for the process
}

MarkResult Mark(const RootRangeList& roots) {
  MarkPhase& ph = Phase();
  const int workers = Pool().threads + 1;
  ph.roots = &roots;
  ph.bytes_marked.store(0, std::memory_order_relaxed);
  ph.overflow.store(false, std::memory_order_relaxed);
  ph.rescan = false;
  ph.nworkers = workers;
  RunPhase(ph);
  // Go has no overflow (its work buffers grow); past the cap gofin rescans every marked
  // object until a pass queues everything it finds.
  while (ph.overflow.exchange(false, std::memory_order_relaxed)) {
    ph.rescan = true;
    ph.nworkers = workers;
    RunPhase(ph);
  }
  return MarkResult{ph.bytes_marked.load(std::memory_order_relaxed), workers};
}

}  // namespace gofin::internal
