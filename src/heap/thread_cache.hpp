#pragma once
// Go: mcache (mcache.go). A thread's private spans, one per span class, plus the tiny block:
// the common allocation touches only this and takes no lock.
#include <cstddef>
#include <cstdint>

#include "heap/size_classes.hpp"
#include "heap/span.hpp"

namespace gofin::internal {

// Go: mcache
struct ThreadCache {
  Span* alloc[kNumSpanClasses] = {};
  // Go: tiny / tinyoffset / tinyAllocs. The current 16-byte block for tiny noscan objects.
  std::uintptr_t tiny = 0;
  std::size_t tiny_offset = 0;
  std::uint64_t tiny_allocs = 0;
  ThreadCache* next = nullptr;  // all caches, for the collector's flush

  ThreadCache();

  // Go: mcache.refill. Returns the new span for spc (with a free object).
  Span* Refill(SpanClass spc);
  // Go: mcache.releaseAll. Gives every span back and drops the tiny block. The owner calls
  // it when exiting; the collector calls it for every thread with the world stopped.
  void ReleaseAll();
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
