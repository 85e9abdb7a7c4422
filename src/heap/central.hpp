#pragma once
// Go: mcentral (mcentral.go). The spans of one span class that no thread has cached, split by
// whether they have free objects and whether this cycle's sweep has reached them. A thread's
// cache refills from here; only here does the common allocation path take a lock.
#include <cstdint>

#include "heap/lock.hpp"
#include "heap/span.hpp"

namespace gofin::internal {

// Go: mcentral
struct Central {
  SpinLock lock;
  // Go: partial / full spanSets, indexed by sweepgen/2 % 2: one of each pair is swept this
  // cycle, the other is not yet. Advancing sweepgen by 2 swaps their roles for free.
  SpanList partial[2];
  SpanList full[2];

  SpanList& PartialSwept(std::uint32_t sg) { return partial[(sg / 2) % 2]; }
  SpanList& PartialUnswept(std::uint32_t sg) { return partial[1 - (sg / 2) % 2]; }
  SpanList& FullSwept(std::uint32_t sg) { return full[(sg / 2) % 2]; }
  SpanList& FullUnswept(std::uint32_t sg) { return full[1 - (sg / 2) % 2]; }
};

// Go: mcentral.cacheSpan. A swept span of class spc with at least one free object, or
// nullptr when the OS refuses memory. Must be called inside a critical region.
Span* CacheSpan(SpanClass spc);
// Go: mcentral.uncacheSpan. Gives a span back after a thread's cache used it.
void UncacheSpan(Span* s);
// Files a swept span on its class's swept lists (full or partial).
void FileSweptSpan(Span* s);
// Go: mspan.ensureSwept. Returns once s is swept for the current cycle.
void EnsureSwept(Span* s);
// Go: sweepone's span source. Takes one unswept span off any central list, already claimed
// (sweepgen moved to sg-1), or nullptr when none are left. `cursor` remembers the class.
Span* NextSpanForSweep(std::size_t& cursor);

}  // namespace gofin::internal
