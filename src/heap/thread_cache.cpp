#include "heap/thread_cache.hpp"

#include <cstring>
#include <mutex>

#include "heap/central.hpp"
#include "heap/heap.hpp"
#include "heap/hooks.hpp"

namespace gofin::internal {

constinit Span g_empty_span{};

ThreadCache::ThreadCache() {
  for (auto& s : alloc) s = &g_empty_span;
}

Span* ThreadCache::Refill(SpanClass spc) {
  // The caller holds a StwGuard: the cache and the spans move together.
  Span* old = alloc[spc.value];
  const std::size_t c = spc.SizeClass();
  if (old != &g_empty_span) {
    ReturnRun(spc);
    // Go: the stats correction in uncacheSpan: slots never handed out were not allocations.
    const std::uint32_t unused = old->nelems - old->alloc_count;
    g_heap.nmalloc_small[c].fetch_sub(unused, std::memory_order_relaxed);
    g_heap.heap_live.fetch_sub(std::uint64_t{unused} * old->elemsize, std::memory_order_relaxed);
    alloc[spc.value] = &g_empty_span;
    UncacheSpan(old);
  }
  Span* s = CacheSpan(spc);
  if (s == nullptr) return nullptr;
  const std::uint32_t avail = s->nelems - s->alloc_count;
  g_heap.nmalloc_small[c].fetch_add(avail, std::memory_order_relaxed);
  g_heap.heap_live.fetch_add(std::uint64_t{avail} * s->elemsize, std::memory_order_relaxed);
  alloc[spc.value] = s;
  return s;
}

void ThreadCache::ReleaseAll() {
  for (std::size_t i = 0; i < kNumSpanClasses; ++i) {
    Span*& slot = alloc[i];
    Span* s = slot;
    if (s == &g_empty_span) continue;
    ReturnRun(SpanClass{static_cast<std::uint16_t>(i)});
    const std::uint32_t unused = s->nelems - s->alloc_count;
    g_heap.nmalloc_small[s->spanclass.SizeClass()].fetch_sub(unused, std::memory_order_relaxed);
    g_heap.heap_live.fetch_sub(std::uint64_t{unused} * s->elemsize, std::memory_order_relaxed);
    slot = &g_empty_span;
    UncacheSpan(s);
  }
  tiny = 0;
  tiny_offset = 0;
  g_heap.tiny_allocs.fetch_add(tiny_allocs, std::memory_order_relaxed);
  tiny_allocs = 0;
}

std::uintptr_t ThreadCache::TakeRun(SpanClass spc) {
  Span* s = alloc[spc.value];
  std::uint32_t count = 0;
  // The previous run is used up (its objects all handed out): nothing of it is to be given
  // back, even when the span turns out full (NextFreeIndex then moves freeindex to the end),
  // except the objects sampling cut off it, which the walk below must find again: the first
  // of them is the sampled object.
  if (const AllocRun& prev = runs[spc.value]; prev.span == s && prev.claimed_end > prev.end) {
    s->ReturnRunTail(static_cast<std::uint32_t>((prev.claimed_end - s->start) / s->elemsize));
  }
  runs[spc.value] = AllocRun{};
  const std::uint32_t first = s->NextFreeRun(count);
  if (first == s->nelems) return 0;
  const std::uintptr_t v = s->ObjBase(first);
  const std::uintptr_t claimed_end = v + count * s->elemsize;
  if (s->needzero) std::memset(reinterpret_cast<void*>(v), 0, claimed_end - v);
  // Go charges each object as it is allocated; the run is charged whole now (ReturnRun gives
  // back what was not handed out), and ends before the object that crosses the next sample
  // point, which the next call then returns as v.
  (void)ChargeSample(v, s->elemsize);
  std::uintptr_t end = claimed_end;
  const auto rest = static_cast<std::int64_t>(end - v - s->elemsize);
  if (next_sample >= rest) {
    next_sample -= rest;
  } else {
    const auto k = static_cast<std::uintptr_t>(next_sample) / s->elemsize;
    end = v + (k + 1) * s->elemsize;
    next_sample -= static_cast<std::int64_t>(k * s->elemsize);
  }
  runs[spc.value] = AllocRun{v + s->elemsize, end, s->elemsize, s, claimed_end};
  return v;
}

void ThreadCache::ReturnRun(SpanClass spc) {
  AllocRun& r = runs[spc.value];
  if (r.span != nullptr) {
    r.span->ReturnRunTail(
        static_cast<std::uint32_t>((r.claimed_end - r.span->start) / r.span->elemsize));
    // What was charged and not handed out is not allocated: the sample point moves back.
    if (r.end > r.next) next_sample += static_cast<std::int64_t>(r.end - r.next);
  }
  r = AllocRun{};
}

bool ThreadCache::SampleSlow(std::uintptr_t v, std::size_t n) {
  const int rate = MemProfileRate();
  if (rate != sample_rate) {
    // The first use, or a new rate: a fresh distance, which this object is charged against.
    sample_rate = rate;
    next_sample = NextSample(rate, sample_rng) - static_cast<std::int64_t>(n);
    if (next_sample >= 0) return false;
  }
  next_sample = NextSample(rate, sample_rng);
  if (rate == 0) return false;
  sampled = v;
  sampled_size = n;
  return true;
}

ThreadCache* NewThreadCache() {
  InitMemProfile();
  std::lock_guard lock(g_heap.lock);
  if (!g_heap.arenas.Initialized()) g_heap.arenas.Init();
  ThreadCache* c = g_heap.cache_alloc.Alloc();
  c->next = g_heap.caches;
  g_heap.caches = c;
  return c;
}

void RemoveThreadCache(ThreadCache* c) {
  std::lock_guard lock(g_heap.lock);
  for (ThreadCache** p = &g_heap.caches; *p != nullptr; p = &(*p)->next) {
    if (*p == c) {
      *p = c->next;
      break;
    }
  }
  g_heap.cache_alloc.Free(c);
}

void FreeThreadCache(ThreadCache* c) {
  {
    StwGuard guard;
    c->ReleaseAll();
  }
  RemoveThreadCache(c);
}

}  // namespace gofin::internal
