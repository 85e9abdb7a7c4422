#pragma once
// Go: mheap's page allocator (mheap.go allocSpan/freeSpan, mgcscavenge.go). Runs of 8 KiB pages
// are handed out for spans, coalesced when freed, and returned to the OS when idle memory
// passes a threshold. Every method requires the heap lock.
#include <cstddef>
#include <cstdint>

#include "heap/arena.hpp"
#include "heap/fixalloc.hpp"
#include "heap/span.hpp"

namespace gofin::internal {

// Go: mheap (the page part)
class PageHeap {
 public:
  constexpr PageHeap() = default;

  // An in-use span of npages (state kInUse, every page mapped to it, needzero set), or
  // nullptr when the OS refuses more memory.
  Span* AllocSpan(std::size_t npages, ArenaIndex& index);
  // Returns s's pages; coalesces with free neighbours.
  void FreeSpan(Span* s, ArenaIndex& index);
  // Releases free pages to the OS until `keep` bytes of heap stay resident. Returns bytes
  // released.
  std::size_t ScavengeTo(std::size_t keep, ArenaIndex& index);

  // Span records for in-use spans come from here too; with the heap lock held.
  Span* NewSpanRecord() { return span_alloc_.Alloc(); }

  // Go: memstats.heap_sys, heap_inuse, heap_released (bytes).
  [[nodiscard]] std::size_t SysBytes() const { return sys_; }
  [[nodiscard]] std::size_t InuseBytes() const { return inuse_; }
  [[nodiscard]] std::size_t ReleasedBytes() const { return released_; }
  [[nodiscard]] std::size_t MetadataBytes() const { return meta_ + span_alloc_.SysBytes(); }

 private:
  static constexpr std::size_t kMaxSmallRun = 128;  // Go (old mheap): _MaxMHeapList

  bool Grow(std::size_t npages, ArenaIndex& index);
  void InsertFree(Span* s, ArenaIndex& index);
  void RemoveFree(Span* s);
  SpanList& ListFor(std::size_t npages) {
    return npages < kMaxSmallRun ? free_[npages] : free_large_;
  }
  Span* FindFree(std::size_t npages);
  void SetSpanMap(std::uintptr_t base, std::size_t npages, Span* s, ArenaIndex& index, bool all);

  SpanList free_[kMaxSmallRun]{};
  SpanList free_large_{};
  FixAlloc<Span> span_alloc_{};
  // Go's first arena hint on amd64 (0x00c000000000), kept as an arena number: gofin's globals
  // never hold a heap address, so the data-segment scan cannot find one in them.
  std::uintptr_t hint_arena_ = 0x00c000000000 >> kArenaShift;
  std::size_t sys_ = 0;
  std::size_t inuse_ = 0;
  std::size_t released_ = 0;
  std::size_t meta_ = 0;
};

}  // namespace gofin::internal
