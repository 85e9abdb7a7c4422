#include "gc/marker.hpp"

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "heap/heap.hpp"
#include "trace/trace.hpp"

// The scanning loops read whatever words roots and objects hold (memory the sanitizers would
// flag), and under the fuzzer's coverage instrumentation they would make a callback per word of
// the data segments scanned (most of a fuzzing run's time): neither applies to them.
#if defined(__clang__)
#define GOFIN_NO_SANITIZE __attribute__((no_sanitize("address", "thread", "coverage")))
#else
#define GOFIN_NO_SANITIZE __attribute__((no_sanitize("address", "thread")))
#endif

namespace gofin::internal {

// The phase's membership word: how many workers joined, how many of them are idle, and
// whether the phase is closed. One word so that "every worker that joined is idle" and
// "nobody may join any more" are decided by one compare-and-swap: a helper thread the
// scheduler wakes late simply finds the phase closed, instead of the others waiting for it.
class PhaseState {
 public:
  static constexpr std::uint64_t kIdleOne = 1;
  static constexpr std::uint64_t kJoinedOne = std::uint64_t{1} << 16;
  static constexpr std::uint64_t kClosed = std::uint64_t{1} << 32;
  static constexpr unsigned kMaxShift = 33;

  static int Idle(std::uint64_t s) { return static_cast<int>(s & 0xffff); }
  static int Joined(std::uint64_t s) { return static_cast<int>((s >> 16) & 0xffff); }
  static bool Closed(std::uint64_t s) { return (s & kClosed) != 0; }
  static int MaxMembers(std::uint64_t s) { return static_cast<int>((s >> kMaxShift) & 0xffff); }

  // Opens the phase with the calling (collecting) thread as its first member, for at most
  // max_members members: a helper woken late for an earlier phase may find this one open,
  // and must not join a phase meant for fewer workers (a lone worker marks without atomics).
  // Release: a helper that joins sees the phase's setup.
  void Open(int max_members) {
    word_.store(kJoinedOne | (static_cast<std::uint64_t>(max_members) << kMaxShift),
                std::memory_order_release);
  }
  // Acquire pairs with Open.
  bool TryJoin() {
    std::uint64_t s = word_.load(std::memory_order_acquire);
    while (!Closed(s) && Joined(s) < MaxMembers(s)) {
      if (word_.compare_exchange_weak(s, s + kJoinedOne, std::memory_order_acquire)) return true;
    }
    return false;
  }
  std::uint64_t GoIdle() { return word_.fetch_add(kIdleOne) + kIdleOne; }
  void Resume() { word_.fetch_sub(kIdleOne); }
  [[nodiscard]] std::uint64_t Load() const { return word_.load(); }
  // Closes the phase if the word is still s (every member idle): nobody joined or resumed
  // in between.
  bool TryClose(std::uint64_t s) { return word_.compare_exchange_strong(s, s | kClosed); }
  [[nodiscard]] bool AnyIdle() const { return Idle(word_.load(std::memory_order_relaxed)) > 0; }

 private:
  std::atomic<std::uint64_t> word_{kClosed};
};

namespace {

// Go: maxObletBytes. Large objects are scanned in pieces so one worker never holds a
// gigabyte of scanning that the others cannot share.
constexpr std::uintptr_t kObletBytes = std::uintptr_t{128} * 1024;
// How many objects a worker scans between offers of work to idle workers.
constexpr int kBalanceInterval = 64;

// A queue entry is an object's address with, for a small object, its size in the top bits,
// so that scanning it needs no second span lookup (user-space addresses fit in 48 bits).
// Large objects and oblets carry size 0 and look their span up.
constexpr unsigned kEntrySizeShift = 48;
constexpr std::uintptr_t kEntryAddressMask = (std::uintptr_t{1} << kEntrySizeShift) - 1;
// On an entry without a size: the contents of a finalizer-bearing object, whose pointers into
// itself are skipped. Heap arenas lie below 2^47 (Go's address hints; x86-64 user space).
constexpr std::uintptr_t kEntryExceptSelf = std::uintptr_t{1} << 47;
static_assert(kMaxSmallSize < (std::uintptr_t{1} << (64 - kEntrySizeShift)),
              "a small object's size must fit in a work-queue entry's tag");
constexpr unsigned kPrefetchDistance = 8;
// Objects up to this size that have finalizers have their contents scanned where they are
// found instead of through the queue.
constexpr std::uintptr_t kInlineContentsBytes = 256;

constexpr std::size_t kMaxExtraRoots = 8;
constinit std::atomic<ExtraRootsFn> g_extra_roots[kMaxExtraRoots] = {};
constinit std::atomic<ParallelRootsFn> g_parallel_roots[kMaxExtraRoots] = {};

// Go: gcBgMarkWorker's parking. The pool's threads are not registered mutators: they never
// hold GC pointers outside a mark phase and are never stopped.
struct MarkPhase {
  const RootRangeList* roots = nullptr;
  std::atomic<std::size_t> next_root{0};
  std::atomic<std::size_t> next_unit[kMaxExtraRoots] = {};  // per parallel roots hook
  PhaseState state;
  // Helpers that joined and have left RunWorker; the collecting thread waits for exactly the
  // members (Joined - 1) before it reuses the phase.
  std::atomic<int> exited{0};
  std::atomic<bool> overflow{false};
  std::atomic<std::uint64_t> bytes_marked{0};
  WorkPool pool;
  int nworkers = 1;
  bool rescan = false;  // an overflow pass: roots are replaced by a heap walk
};

struct WorkerPool {
  std::mutex lock;
  std::condition_variable start;
  std::uint64_t generation = 0;
  int threads = 0;
  MarkPhase* phase = nullptr;
  // The phase's nworkers as published with generation, under lock: a helper woken late must
  // not read phase->nworkers, which the collector rewrites for its next phase.
  int nworkers = 0;
};

constinit WorkerPool* g_pool = nullptr;
WorkerPool& Pool() {
  [[maybe_unused]] static WorkerPool* p = g_pool =
      new WorkerPool();  // NOLINT: lives for the process
  return *g_pool;
}

MarkPhase& Phase() {
  static MarkPhase* p = new MarkPhase();  // NOLINT: lives for the process
  return *p;
}

void ForEachMarkedScanObject(MarkWorker& w) {
  ForEachInUseSpan([&w](Span* s) {
    if (s->spanclass.NoScan()) return;
    for (std::size_t i = 0; i < s->nelems; ++i) {
      if (s->IsMarked(i)) w.ScanObjectContents(s->ObjBase(i));
    }
  });
}

void RunWorker(MarkPhase& ph, int id) {
  // The timeline: each worker's share of the phase, on its own thread (the world is stopped:
  // the record goes to the thread's buffer, nothing more).
  const std::uint64_t trace_start = trace::Begin();
  WorkQueue q(ph.pool);
  MarkWorker w(q, ph.overflow, /*exclusive=*/ph.nworkers == 1);
  if (ph.rescan) {
    if (id == 0) ForEachMarkedScanObject(w);
  } else {
    for (;;) {
      const std::size_t i = ph.next_root.fetch_add(1, std::memory_order_relaxed);
      if (i >= ph.roots->Size()) break;
      w.ScanRange((*ph.roots)[i].lo, (*ph.roots)[i].hi);
    }
    for (std::size_t h = 0; h < kMaxExtraRoots; ++h) {
      if (ParallelRootsFn fn = g_parallel_roots[h].load(std::memory_order_acquire)) {
        fn(w, ph.next_unit[h]);
      }
    }
    if (id == 0) {
      for (auto& hook : g_extra_roots) {
        if (ExtraRootsFn fn = hook.load(std::memory_order_acquire)) fn(w);
      }
    }
  }
  // Go: gcMarkDone's termination: the phase ends when every worker that joined is idle and
  // no full buffer is left to steal.
  for (;;) {
    w.Drain(ph.state);
    std::uint64_t st = ph.state.GoIdle();
    bool finished = false;
    for (int spins = 0;; ++spins) {
      if (PhaseState::Closed(st)) {
        finished = true;
        break;
      }
      if (ph.pool.HasFull()) {
        ph.state.Resume();
        break;
      }
      st = ph.state.Load();
      if (PhaseState::Closed(st)) continue;
      if (PhaseState::Idle(st) == PhaseState::Joined(st)) {
        if (!ph.state.TryClose(st)) st = ph.state.Load();
        continue;
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
  if (trace_start != 0) trace::Mark(trace_start, trace::Now(), id, w.BytesMarked(), ph.rescan);
}

void WorkerThread(int id) {
  WorkerPool& p = Pool();
  std::uint64_t seen = 0;
  for (;;) {
    MarkPhase* ph = nullptr;
    int nworkers = 0;
    {
      std::unique_lock lock(p.lock);
      p.start.wait(lock, [&] { return p.generation != seen; });
      seen = p.generation;
      ph = p.phase;
      nworkers = p.nworkers;
    }
    if (id < nworkers && ph->state.TryJoin()) {
      RunWorker(*ph, id);
      // Release: what this worker marked and disposed is visible to the collecting thread.
      ph->exited.fetch_add(1, std::memory_order_release);
    }
  }
}

void RunPhase(MarkPhase& ph) {
  ph.next_root.store(0, std::memory_order_relaxed);
  for (auto& u : ph.next_unit) u.store(0, std::memory_order_relaxed);
  ph.exited.store(0, std::memory_order_relaxed);
  WorkerPool& p = Pool();
  const int helpers = std::min(ph.nworkers - 1, p.threads);
  ph.nworkers = helpers + 1;
  ph.state.Open(ph.nworkers);
  if (helpers > 0) {
    std::lock_guard lock(p.lock);
    p.phase = &ph;
    p.nworkers = ph.nworkers;
    ++p.generation;
    p.start.notify_all();
  }
  RunWorker(ph, 0);
  // The phase is closed: no helper can join any more. Wait for the ones that did (they are
  // finishing their last steps, not waiting for work). Acquire pairs with their exit.
  const int members = PhaseState::Joined(ph.state.Load()) - 1;
  for (int spins = 0; ph.exited.load(std::memory_order_acquire) != members; ++spins) {
    if (spins < 256) {
      __builtin_ia32_pause();
    } else {
      std::this_thread::yield();
    }
  }
}

}  // namespace

void AddExtraRootsHook(ExtraRootsFn fn) {
  for (auto& hook : g_extra_roots) {
    ExtraRootsFn expected = nullptr;
    if (hook.compare_exchange_strong(expected, fn, std::memory_order_acq_rel)) return;
  }
}

void AddParallelRootsHook(ParallelRootsFn fn) {
  for (auto& hook : g_parallel_roots) {
    ParallelRootsFn expected = nullptr;
    if (hook.compare_exchange_strong(expected, fn, std::memory_order_acq_rel)) return;
  }
}

MarkWorker::MarkWorker(WorkQueue& q, std::atomic<bool>& overflow, bool exclusive)
    : queue_(q),
      overflow_(overflow),
      exclusive_(exclusive),
      arenas_(g_heap.arenas.Entries()),
      arena_lo_(g_heap.arenas.LoIndex()),
      arena_count_(g_heap.arenas.HiIndex() > g_heap.arenas.LoIndex()
                       ? g_heap.arenas.HiIndex() - g_heap.arenas.LoIndex()
                       : 0),
      heap_lo_(arena_lo_ << kArenaShift),
      heap_bytes_(arena_count_ << kArenaShift) {}

// Go: scanblock's loop. Every word that falls in the heap's arenas is looked up.
GOFIN_NO_SANITIZE inline void MarkWorker::ScanWords(std::uintptr_t lo, std::uintptr_t hi) {
  for (std::uintptr_t p = lo; p < hi; p += sizeof(std::uintptr_t)) {
    const std::uintptr_t w = *reinterpret_cast<const std::uintptr_t*>(p);
    if (w - heap_lo_ < heap_bytes_) MarkPointerInline<true>(w);
  }
}

// ScanWords for the contents of an object with a finalizer, [self_lo, self_hi): its pointers
// into itself are not references to it (a std::string's inline buffer, a std::list's
// sentinel, a `this` member), or no such object would ever be finalized (bdwgc's C++
// finalizers ignore self-pointers the same way). A word exactly at self_hi is a pointer to the
// next object (kept) or one past this one's end (ignored); a word exactly at self_lo may be one
// past the end of a noscan object before it (kept).
GOFIN_NO_SANITIZE void MarkWorker::ScanWordsExceptSelf(std::uintptr_t lo, std::uintptr_t hi,
                                                       std::uintptr_t self_lo,
                                                       std::uintptr_t self_hi) {
  const std::uintptr_t self_bytes = self_hi - self_lo;
  for (std::uintptr_t p = lo; p < hi; p += sizeof(std::uintptr_t)) {
    const std::uintptr_t w = *reinterpret_cast<const std::uintptr_t*>(p);
    if (w - heap_lo_ >= heap_bytes_) continue;
    if (w - self_lo > self_bytes) {
      MarkPointerInline<true>(w);
    } else if (w == self_hi) {
      MarkPointerInline<false>(w);
    } else if (w == self_lo) {
      MarkNoScanEndingAt(w);
    }
  }
}

// Go: findObject + greyobject, extended for C++'s one-past-the-end pointers (an end() of a
// member array, a buffer's write cursor), which land on the next object's first byte or, at a
// span's end, on no object at all. Go never forms such a pointer; bdwgc pads every object by a
// byte. gofin pads where padding is cheap and the alternative is not:
//  - A scanned object's end pointer is always inside it: New<T> pads a T that fills its size
//    class exactly (NoPastTheEndPointers<T> opts out), Alloc, NewArray and Allocator pad
//    everything. Keeping the object before a boundary alive instead would cascade: that
//    object's pointers to the starts of its neighbours keep theirs, and a list built by
//    prepending would be kept whole through each batch's first node.
//  - A noscan object is not padded (the tiny allocator packs them): with kBoundary, a pointer
//    on a boundary also keeps the noscan object ending there, and one that falls in no object
//    keeps the noscan object ending there. It references nothing, so nothing cascades.
template <bool kBoundary>
inline void MarkWorker::MarkPointerInline(std::uintptr_t p) {
  Span* s = last_span_;
  if (p - last_start_ >= last_bytes_) {
    const std::uintptr_t ai = (p >> kArenaShift) - arena_lo_;
    if (ai >= arena_count_ || arenas_ == nullptr) return;
    const HeapArena* a = arenas_[ai + arena_lo_].load(std::memory_order_relaxed);
    s = a == nullptr ? nullptr : a->SpanAt(PageInArena(p));
    if (s == nullptr || s->state != SpanState::kInUse || !s->Contains(p)) {
      if constexpr (kBoundary) MarkNoScanEndingAt(p);
      return;
    }
    last_span_ = s;
    last_start_ = s->start;
    last_bytes_ = s->limit - s->start;
  }
  const std::size_t i = s->ObjIndex(p);
  if constexpr (kBoundary) {
    // A scanned span's objects need this only at its first byte (the span below may be a
    // noscan one).
    if (s->spanclass.NoScan() ? p == s->ObjBase(i) : p == s->start) {
      if (i > 0) {
        MarkIndex(s, i - 1);
      } else {
        MarkNoScanEndingAt(p);
      }
    }
  }
  MarkIndex(s, i);
}

// Marks the noscan object that ends exactly at p (the one containing p - 1), if there is one.
void MarkWorker::MarkNoScanEndingAt(std::uintptr_t p) {
  const std::uintptr_t q = p - 1;
  // Every size class is a multiple of 8 bytes: an end that is not 8-aligned lies inside the
  // object's slot, where it is an interior pointer.
  if (q - heap_lo_ >= heap_bytes_ || p % sizeof(std::uintptr_t) != 0) return;
  const std::uintptr_t ai = (q >> kArenaShift) - arena_lo_;
  if (ai >= arena_count_ || arenas_ == nullptr) return;
  const HeapArena* a = arenas_[ai + arena_lo_].load(std::memory_order_relaxed);
  if (a == nullptr) return;
  Span* s = a->SpanAt(PageInArena(q));
  if (s == nullptr || s->state != SpanState::kInUse || !s->spanclass.NoScan() || !s->Contains(q)) {
    return;
  }
  const std::size_t i = s->ObjIndex(q);
  if (s->ObjBase(i) + s->elemsize != p) return;
  MarkIndex(s, i);
}

inline void MarkWorker::MarkIndex(Span* s, std::size_t i) {
  // Already marked is the common case for shared objects: test that before anything else.
  if (s->IsMarked(i) || !s->IsAllocated(i)) return;
  // A locked bit-set costs as much as the rest of marking an object; a lone worker needs none.
  if (exclusive_) {
    s->SetMarkNonAtomic(i);
  } else if (!s->TryMark(i)) {
    return;
  }
  bytes_marked_ += s->elemsize;
  if (s->spanclass.NoScan()) return;
  const std::uintptr_t base = s->ObjBase(i);
  const std::uintptr_t entry = s->large ? base : base | (s->elemsize << kEntrySizeShift);
  if (!queue_.Push(entry)) overflow_.store(true, std::memory_order_relaxed);
}

GOFIN_NO_SANITIZE void MarkWorker::ScanRange(std::uintptr_t lo, std::uintptr_t hi) {
  ScanWords(lo, hi);
}

void MarkWorker::MarkPointer(std::uintptr_t p) { MarkPointerInline<false>(p); }

void MarkWorker::MarkObjectOnly(std::uintptr_t p) {
  Span* s = g_heap.arenas.SpanOfHeap(p);
  if (s == nullptr || s->state != SpanState::kInUse || !s->Contains(p)) return;
  const std::size_t i = s->ObjIndex(p);
  if (s->IsMarked(i) || !s->IsAllocated(i)) return;
  // Not counted in the live heap: the object is garbage waiting for its destructor, and a
  // goal grown from it would let the heap grow by every backlog of the destructor thread.
  if (exclusive_) {
    s->SetMarkNonAtomic(i);
  } else {
    (void)s->TryMark(i);
  }
}

void MarkWorker::ScanObjectContents(std::uintptr_t base) {
  const Span* s =
      hint_ != nullptr && hint_->Contains(base) ? hint_ : g_heap.arenas.SpanOfHeap(base);
  if (s == nullptr || s->spanclass.NoScan()) return;
  ScanRange(base, base + s->elemsize);
}

void MarkWorker::ScanFinalizedContents(std::uintptr_t base) {
  const Span* s =
      hint_ != nullptr && hint_->Contains(base) ? hint_ : g_heap.arenas.SpanOfHeap(base);
  if (s == nullptr || s->spanclass.NoScan()) return;
  const std::uintptr_t self_hi = base + s->elemsize;
  // A small object is scanned here: the walk that finds it (markrootSpans) is already split
  // across the workers, and what it references is queued for all of them. A larger one is
  // queued (tagged, so that its scan also skips its pointers into itself), so that one worker
  // never scans many large objects alone. The object is not marked: if the queue is full, an
  // overflow's rescan (which visits marked objects) would never come back to it, so it is
  // scanned here and now.
  if (s->elemsize > kInlineContentsBytes && queue_.Push(base | kEntryExceptSelf)) return;
  ScanWordsExceptSelf(base, self_hi, base, self_hi);
}

GOFIN_NO_SANITIZE inline void MarkWorker::ScanObject(std::uintptr_t entry) {
  if (const std::uintptr_t size = entry >> kEntrySizeShift; size != 0) {
    const std::uintptr_t obj = entry & kEntryAddressMask;
    ScanWords(obj, obj + size);
    return;
  }
  // A large object, one of its oblets, or a finalized object's contents.
  const std::uintptr_t obj = entry & kEntryAddressMask & ~kEntryExceptSelf;
  Span* s = g_heap.arenas.SpanOf(obj);
  const std::uintptr_t self_lo = s->large ? s->start : s->ObjBase(s->ObjIndex(obj));
  const std::uintptr_t self_hi = self_lo + s->elemsize;
  std::uintptr_t end = self_hi;
  if (s->large) {
    end = std::min(obj + kObletBytes, s->limit);
    // The rest of the object as one more entry; when the queue is full, scanned now (the
    // object may be a finalized one that no rescan would visit).
    if (end < s->limit && !queue_.Push(end | (entry & kEntryExceptSelf))) end = s->limit;
  }
  if ((entry & kEntryExceptSelf) != 0) {
    ScanWordsExceptSelf(obj, end, self_lo, self_hi);
  } else {
    ScanRange(obj, end);
  }
}

void MarkWorker::Drain(const PhaseState& state) {
  // A small FIFO between the queue and the scan: an object is prefetched when it enters the
  // ring and scanned kPrefetchDistance objects later, so the scan finds it in cache. (The
  // queue itself is LIFO: prefetching at push time would be too late.)
  std::uintptr_t ring[kPrefetchDistance];
  unsigned head = 0;
  unsigned tail = 0;
  int n = 0;
  for (;;) {
    std::uintptr_t entry = 0;
    while (tail - head < kPrefetchDistance && queue_.Pop(entry)) {
      __builtin_prefetch(reinterpret_cast<const void*>(entry & kEntryAddressMask));
      ring[tail++ % kPrefetchDistance] = entry;
    }
    if (tail == head) break;
    ScanObject(ring[head++ % kPrefetchDistance]);
    if (++n == kBalanceInterval) {
      n = 0;
      if (state.AnyIdle() && queue_.LocalCount() > 4) queue_.Balance();
    }
  }
}

void InitMarkWorkers(int nworkers) {
  WorkerPool& p = Pool();
  std::lock_guard lock(p.lock);
  while (p.threads < nworkers - 1) {
    std::thread([id = p.threads + 1] {
      (void)pthread_setname_np(pthread_self(), "gofin-mark");
      WorkerThread(id);
    }).detach();
    ++p.threads;
  }
}

void ResetMarkWorkersAfterFork() {
  // The workers did not survive the fork; their pool's lock and condition variables may
  // describe threads that no longer exist. A fresh pool (the old one is abandoned).
  (void)Pool();
  g_pool = new WorkerPool();  // NOLINT: lives for the process
}

void SetMarkQueueCapForTesting(std::size_t bytes) {
  Phase().pool.SetCapBytes(bytes != 0 ? bytes : kDefaultMarkQueueCapBytes);
}

MarkResult Mark(const RootRangeList& roots, int max_workers) {
  MarkPhase& ph = Phase();
  const int workers = std::max(1, std::min(Pool().threads + 1, max_workers));
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
