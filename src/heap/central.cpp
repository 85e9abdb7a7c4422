#include "heap/central.hpp"

#include <mutex>
#include <new>

#include "heap/heap.hpp"
#include "heap/hooks.hpp"

namespace gofin::internal {

namespace {

// Go: the sweepgen CAS that claims a span. The caller took s off its list under the lock.
void Claim(Span* s, std::uint32_t sg) {
  g_heap.sweeps_in_flight.fetch_add(1, std::memory_order_relaxed);
  s->sweepgen.store(sg - 1, std::memory_order_relaxed);
}

// Go: mcentral.grow. A fresh span for spc from the page heap, already swept for this cycle.
Span* GrowCentral(SpanClass spc, std::uint32_t sg) {
  const std::size_t c = spc.SizeClass();
  std::lock_guard lock(g_heap.lock);
  Span* s = g_heap.pages.AllocSpan(kClassToPages[c], g_heap.arenas);
  if (s == nullptr) return nullptr;
  const bool needzero = s->needzero;
  s->InitSmall(s->start, s->npages, spc);
  s->needzero = needzero;
  if (spc.HasDtor()) {
    s->dtors = static_cast<DtorSlot*>(AllocSideTable(s->nelems * sizeof(DtorSlot)));
    if (s->dtors == nullptr) {
      g_heap.pages.FreeSpan(s, g_heap.arenas);
      return nullptr;
    }
  }
  s->sweepgen.store(sg, std::memory_order_relaxed);
  return s;
}

}  // namespace

Span* CacheSpan(SpanClass spc) {
  Central& c = g_heap.central[spc.value];
  // Stable: the caller holds a StwGuard, and sweepgen only moves with the world stopped.
  const std::uint32_t sg = g_heap.sweepgen.load(std::memory_order_relaxed);
  Span* s = nullptr;
  {
    std::lock_guard lock(c.lock);
    s = c.PartialSwept(sg).PopFront();
  }
  // Go: spanBudget. Sweeping a few unswept spans before growing the heap keeps the heap from
  // growing while reusable memory waits for the background sweeper.
  for (int budget = 100; s == nullptr && budget > 0; --budget) {
    Span* cand = nullptr;
    {
      std::lock_guard lock(c.lock);
      cand = c.PartialUnswept(sg).PopFront();
      if (cand == nullptr) cand = c.FullUnswept(sg).PopFront();
    }
    if (cand == nullptr) break;
    Claim(cand, sg);
    SweepSpan(cand, /*preserve=*/true);
    if (cand->alloc_count < cand->nelems) {
      s = cand;
    } else {
      FileSweptSpan(cand);
    }
  }
  if (s == nullptr) {
    s = GrowCentral(spc, sg);
    if (s == nullptr) return nullptr;
  }
  // Go: the allocCache reload at the end of cacheSpan.
  const std::uint32_t free_byte_base = s->freeindex & ~63U;
  s->RefillAllocCache(free_byte_base / 8);
  const std::uint32_t shift = s->freeindex % 64;
  s->alloc_cache = shift == 0 ? s->alloc_cache : s->alloc_cache >> shift;
  return s;
}

void FileSweptSpan(Span* s) {
  Central& c = g_heap.central[s->spanclass.value];
  const std::uint32_t sg = g_heap.sweepgen.load(std::memory_order_relaxed);
  std::lock_guard lock(c.lock);
  if (s->large || s->alloc_count == s->nelems) {
    c.FullSwept(sg).PushFront(s);
  } else {
    c.PartialSwept(sg).PushFront(s);
  }
}

void UncacheSpan(Span* s) { FileSweptSpan(s); }

void EnsureSwept(Span* s) {
  StwGuard guard;
  const std::uint32_t sg = g_heap.sweepgen.load(std::memory_order_relaxed);
  // acquire: a sweep finished by another thread is visible once its sweepgen store is.
  if (s->sweepgen.load(std::memory_order_acquire) == sg) return;
  Central& c = g_heap.central[s->spanclass.value];
  bool mine = false;
  {
    std::lock_guard lock(c.lock);
    if (s->sweepgen.load(std::memory_order_relaxed) == sg - 2 && s->list != nullptr) {
      static_cast<SpanList*>(s->list)->Remove(s);
      Claim(s, sg);
      mine = true;
    }
  }
  if (mine) {
    SweepSpan(s, /*preserve=*/false);
    return;
  }
  // Someone else is sweeping it (or it sits in a cache, which is always swept).
  while (s->sweepgen.load(std::memory_order_acquire) == sg - 1) sched_yield();
}

Span* NextSpanForSweep(std::size_t& cursor) {
  const std::uint32_t sg = g_heap.sweepgen.load(std::memory_order_relaxed);
  for (; cursor < kNumSpanClasses; ++cursor) {
    Central& c = g_heap.central[cursor];
    std::lock_guard lock(c.lock);
    Span* s = c.PartialUnswept(sg).PopFront();
    if (s == nullptr) s = c.FullUnswept(sg).PopFront();
    if (s != nullptr) {
      Claim(s, sg);
      return s;
    }
  }
  return nullptr;
}

}  // namespace gofin::internal
