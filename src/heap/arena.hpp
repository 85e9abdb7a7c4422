#pragma once
// Go: heapArena and mheap.arenas (mheap.go). The heap's address space comes in 64 MiB arenas;
// a flat index from arena number to its metadata makes spanOf O(1) for any address, and
// answers "not in the heap" for everything else (malloc'd memory, stacks, globals).
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "heap/size_classes.hpp"
#include "heap/span.hpp"

namespace gofin::internal {

inline constexpr std::size_t kArenaShift = 26;
inline constexpr std::size_t kArenaSize = std::size_t{1} << kArenaShift;  // Go: heapArenaBytes
inline constexpr std::size_t kPagesPerArena = kArenaSize / kPageSize;
inline constexpr std::size_t kAddressBits = 48;
inline constexpr std::size_t kArenaIndexEntries = std::size_t{1} << (kAddressBits - kArenaShift);

inline std::size_t PageInArena(std::uintptr_t p) { return (p & (kArenaSize - 1)) >> kPageShift; }

// Go: heapArena
struct HeapArena {
  // Go: spans. In-use spans fill every page's entry; free runs only their first and last.
  // Written under the heap lock, read without it (SetFinalizer, FindObject): relaxed atomics,
  // since a reader only trusts an entry after checking the span's state and range.
  std::atomic<Span*> spans[kPagesPerArena];

  [[nodiscard]] Span* SpanAt(std::size_t page) const {
    return spans[page].load(std::memory_order_relaxed);
  }
  // Go: pageInUse: bit for the first page of each in-use span.
  std::uint8_t page_in_use[kPagesPerArena / 8] = {};
  // Go: pageSpecials: bit for the first page of each span that has specials, so that the
  // mark phase visits only those spans.
  std::atomic<std::uint8_t> page_specials[kPagesPerArena / 8];
  // Free pages that are released to the OS (or never touched): they read as zero.
  std::uint8_t scavenged[kPagesPerArena / 8] = {};
  std::uintptr_t base = 0;
};

// Go: mheap_.arenas. A flat array of 2^22 entries, mapped lazily by the kernel.
class ArenaIndex {
 public:
  // Maps the index; called once under the heap lock.
  void Init();
  [[nodiscard]] bool Initialized() const {
    return entries_.load(std::memory_order_acquire) != nullptr;
  }

  // Arena metadata for address p, or nullptr outside the heap.
  [[nodiscard]] HeapArena* ArenaOf(std::uintptr_t p) const {
    const std::uintptr_t idx = p >> kArenaShift;
    // Relaxed bounds: an address in an arena being added concurrently is not a pointer
    // anyone may hold yet.
    if (idx < lo_.load(std::memory_order_relaxed) || idx >= hi_.load(std::memory_order_relaxed)) {
      return nullptr;
    }
    return entries_.load(std::memory_order_relaxed)[idx].load(std::memory_order_acquire);
  }

  // Go: spanOf. The span record covering p's page, or nullptr; the caller checks state and
  // range (free runs leave stale entries inside them).
  [[nodiscard]] Span* SpanOf(std::uintptr_t p) const {
    HeapArena* a = ArenaOf(p);
    if (a == nullptr) return nullptr;
    return a->SpanAt(PageInArena(p));
  }

  // Go: spanOfHeap: only in-use spans that contain p.
  [[nodiscard]] Span* SpanOfHeap(std::uintptr_t p) const {
    Span* s = SpanOf(p);
    if (s == nullptr || s->state != SpanState::kInUse || !s->Contains(p)) return nullptr;
    return s;
  }

  void Add(std::uintptr_t base, HeapArena* a);

  // The raw table, for the marker's loop (it caches the table and bounds for a phase, during
  // which no arena is added: the world is stopped).
  [[nodiscard]] const std::atomic<HeapArena*>* Entries() const {
    return entries_.load(std::memory_order_acquire);
  }

  // Arena numbers, not addresses: gofin's globals never hold a heap address, so scanning the
  // data segment never finds one of them.
  [[nodiscard]] std::uintptr_t LoIndex() const { return lo_.load(std::memory_order_relaxed); }
  [[nodiscard]] std::uintptr_t HiIndex() const { return hi_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::atomic<HeapArena*>*> entries_{nullptr};
  std::atomic<std::uintptr_t> lo_{~std::uintptr_t{0} >> 1};
  std::atomic<std::uintptr_t> hi_{0};
};

inline void SetPageBit(std::uint8_t* bits, std::size_t page) {
  bits[page / 8] |= static_cast<std::uint8_t>(1U << (page % 8));
}
inline void ClearPageBit(std::uint8_t* bits, std::size_t page) {
  bits[page / 8] &= static_cast<std::uint8_t>(~(1U << (page % 8)));
}
inline bool TestPageBit(const std::uint8_t* bits, std::size_t page) {
  return ((bits[page / 8] >> (page % 8)) & 1U) != 0;
}

}  // namespace gofin::internal
