#pragma once
// Go: mcache (mcache.go). A thread's private spans, one per span class, plus the tiny block:
// the common allocation touches only this and takes no lock.
#include <cstddef>
#include <cstdint>

#include "heap/sampling.hpp"
#include "heap/size_classes.hpp"
#include "heap/span.hpp"

namespace gofin::internal {

// gofin's addition to Go's mcache: a run of consecutive free objects of a cached span
// (Span::NextFreeRun), handed out by bumping next. The common allocation then reads and
// writes this record only, not the span's allocation bitmap walk, and clears nothing: a run
// of recycled memory is cleared whole when it is taken (one memset of up to 64 objects
// instead of a store loop per object). [next, end) is empty when next >= end.
struct AllocRun {
  std::uintptr_t next = 0;
  std::uintptr_t end = 0;
  std::uintptr_t elemsize = 0;
  Span* span = nullptr;  // the span the run lies in, whose freeindex follows next
  // Where the run the span gave ends: past end when the heap profile's sampling cut the run
  // short (heap/sampling.hpp); those objects are the span's again once the run is used up.
  std::uintptr_t claimed_end = 0;

  // Hands out the run's next object; the caller checked next < end.
  std::uintptr_t Take() {
    const std::uintptr_t v = next;
    next = v + elemsize;
    span->SetFreeIndex(span->freeindex + 1);
    return v;
  }
};

// Go: mcache
struct ThreadCache {
  Span* alloc[kNumSpanClasses] = {};
  // Span classes without destructors other than the tiny one's; the run lies in alloc[i]
  // and ends at its freeindex.
  AllocRun runs[kNumSpanClasses] = {};
  // Go: tiny / tinyoffset / tinyAllocs. The current 16-byte block for tiny noscan objects.
  std::uintptr_t tiny = 0;
  std::size_t tiny_offset = 0;
  std::uint64_t tiny_allocs = 0;
  // Go: nextSample / memProfRate (heap/sampling.hpp). Bytes to allocate before the next
  // sampled allocation, the rate it was drawn at, and the generator's state.
  std::int64_t next_sample = 0;
  int sample_rate = -1;
  std::uint64_t sample_rng = 0;
  // Set by the slow path to the object it is returning when that one is sampled: the
  // allocation then profiles it once the object is set up (outside every guard).
  std::uintptr_t sampled = 0;
  std::size_t sampled_size = 0;
  ThreadCache* next = nullptr;  // all caches, for the collector's flush

  ThreadCache();

  // Go: mcache.refill. Returns the new span for spc (with a free object).
  Span* Refill(SpanClass spc);
  // Go: mcache.releaseAll. Gives every span back and drops the tiny block. The owner calls
  // it when exiting; the collector calls it for every thread with the world stopped.
  void ReleaseAll();
  // Claims the next run of alloc[spc] and returns its first object (0 when the span is
  // full): the run holds the rest.
  std::uintptr_t TakeRun(SpanClass spc);
  // Gives the unused rest of spc's run back to its span.
  void ReturnRun(SpanClass spc);
  // Go: the nextSample test of mallocgc, for one object of n bytes allocated at v: true when
  // it is to be sampled (sampled is then v).
  // Only the slow paths call it: the rate's load costs nothing there.
  bool ChargeSample(std::uintptr_t v, std::size_t n) {
    next_sample -= static_cast<std::int64_t>(n);
    if (next_sample >= 0 && sample_rate == g_mem_profile_rate.load(std::memory_order_relaxed))
        [[likely]]
      return false;
    return SampleSlow(v, n);
  }

 private:
  bool SampleSlow(std::uintptr_t v, std::size_t n);
};

// Go: emptymspan. A span with no free objects that every empty cache slot points at, so the
// fast path needs no null check.
extern Span g_empty_span;

// Go: nextFreeFast. The next free object of s from its allocCache, or 0.
inline std::uintptr_t NextFreeFast(Span* s) {
  const std::uint64_t cache = s->alloc_cache;
  if (cache == 0) return 0;
  const auto bit = static_cast<std::uint32_t>(__builtin_ctzll(cache));
  const std::uint32_t result = s->freeindex + bit;
  if (result >= s->nelems) return 0;
  const std::uint32_t freeidx = result + 1;
  if (freeidx % 64 == 0 && freeidx != s->nelems) return 0;
  s->alloc_cache = bit == 63 ? 0 : cache >> (bit + 1);
  s->SetFreeIndex(freeidx);
  ++s->alloc_count;
  return s->start + result * s->elemsize;
}

ThreadCache* NewThreadCache();
void FreeThreadCache(ThreadCache* c);
// Unlinks and frees a cache whose spans were already released.
void RemoveThreadCache(ThreadCache* c);

}  // namespace gofin::internal
