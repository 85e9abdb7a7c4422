#pragma once
// Go: mheap_ (mheap.go). The one heap: page allocator, arena index, central lists, the sweep
// generation, and the counters MemStats and the pacer read.
#include <sched.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "heap/arena.hpp"
#include "heap/central.hpp"
#include "heap/fixalloc.hpp"
#include "heap/lock.hpp"
#include "heap/page_heap.hpp"
#include "heap/size_classes.hpp"
#include "heap/thread_cache.hpp"

namespace gofin::internal {

// Go: mheap
struct Heap {
  SpinLock lock;  // Go: mheap_.lock: page heap, cache records, destructor tables
  PageHeap pages;
  ArenaIndex arenas;
  Central central[kNumSpanClasses];
  FixAlloc<ThreadCache> cache_alloc;
  ThreadCache* caches = nullptr;  // every live thread's cache (under lock)

  // Go: mheap_.sweepgen. Starts at 2 so that sg-2 never wraps.
  std::atomic<std::uint32_t> sweepgen{2};
  // Threads inside a StwGuard, and the collector's intent to stop the world.
  std::atomic<std::int32_t> stw_blockers{0};
  std::atomic<bool> world_stopping{false};
  // Spans claimed for sweeping (sweepgen sg-1) whose sweep has not finished; GC() waits for
  // zero once the unswept lists are empty.
  std::atomic<std::int32_t> sweeps_in_flight{0};

  // Go: gcController.heapLive: bytes in spans handed to caches plus large objects, since the
  // last mark, plus what that mark found live. Relaxed: a pacing estimate, not a fence.
  std::atomic<std::uint64_t> heap_live{0};
  std::atomic<std::uint64_t> heap_marked{0};
  std::atomic<std::uint64_t> gc_trigger{4 << 20};

  // MemStats counters (Go: consistentHeapStats, simplified). Small objects are counted at
  // refill for the whole span and corrected at uncache, as Go does.
  std::atomic<std::uint64_t> nmalloc_small[kNumSizeClasses]{};
  std::atomic<std::uint64_t> nfree_small[kNumSizeClasses]{};
  std::atomic<std::uint64_t> nmalloc_large{0};
  std::atomic<std::uint64_t> nfree_large{0};
  std::atomic<std::uint64_t> bytes_malloc_large{0};
  std::atomic<std::uint64_t> bytes_free_large{0};
  std::atomic<std::uint64_t> tiny_allocs{0};  // from exited threads' caches
};

extern constinit Heap g_heap;

// The tiny allocator's span class: 16-byte noscan objects.
inline constexpr SpanClass kTinySpanClass = SpanClass::Make(2, true, false);

// Zeroed per-span side tables (destructor slots, specials heads) in metadata memory, under
// the heap lock; nullptr when the OS refuses.
void* AllocSideTable(std::size_t want);
void FreeSideTable(void* t, std::size_t want);

// After fork(), in the child: locks held by threads that no longer exist are released
// (the structures they guard are consistent unless such a thread was mid-update).
void ResetHeapLocksAfterFork();

// Frees a span's pages (sweep found it empty). Takes the heap lock.
void FreeSpanToHeap(Span* s);

// Calls fn(Span*) for every in-use span, in address order (Go: the walks over
// heapArena.pageInUse). The world is stopped: no span changes meanwhile.
template <typename Fn>
void ForEachInUseSpan(Fn&& fn) {
  const std::uintptr_t lo = g_heap.arenas.LoIndex();
  const std::uintptr_t hi = g_heap.arenas.HiIndex();
  for (std::uintptr_t ai = lo; ai < hi; ++ai) {
    HeapArena* a = g_heap.arenas.ArenaOf(ai << kArenaShift);
    if (a == nullptr) continue;
    for (std::size_t pg = 0; pg < kPagesPerArena; ++pg) {
      if (!TestPageBit(a->page_in_use, pg)) continue;
      Span* s = a->SpanAt(pg);
      if (s != nullptr && s->state == SpanState::kInUse) fn(s);
    }
  }
}

}  // namespace gofin::internal

namespace gofin::internal {

// Go: acquirem around sweeping plus the sweep.active count that gcStart drains. While any
// thread is inside a guard the world cannot be stopped, so a span taken off a central list,
// swept and installed in a cache is never caught half-way by a collection. Unlike a critical
// region, a guard may take locks that registered threads hold (the queues'); no user code
// runs inside one (destructors run on the destructor thread), and nothing inside one waits
// for a collection (an allocation inside it does not start one).
class StwGuard {
 public:
  StwGuard() noexcept {
    if (t_local.guard_depth++ > 0) return;
    for (;;) {
      // seq_cst pairs with the collector's store of world_stopping: one of the two sees the
      // other (Dekker), so the collector never stops a thread inside a guard.
      g_heap.stw_blockers.fetch_add(1, std::memory_order_seq_cst);
      if (!g_heap.world_stopping.load(std::memory_order_seq_cst)) return;
      g_heap.stw_blockers.fetch_sub(1, std::memory_order_seq_cst);
      // A registered thread is stopped here by the signal; others wait the stop out.
      while (g_heap.world_stopping.load(std::memory_order_seq_cst)) sched_yield();
    }
  }
  ~StwGuard() {
    if (--t_local.guard_depth > 0) return;
    g_heap.stw_blockers.fetch_sub(1, std::memory_order_seq_cst);
  }
  StwGuard(const StwGuard&) = delete;
  StwGuard& operator=(const StwGuard&) = delete;
};

}  // namespace gofin::internal
