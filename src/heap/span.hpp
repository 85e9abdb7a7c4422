#pragma once
// Go: mspan (mheap.go), its allocation bitmap walk (mbitmap.go: nextFreeIndex, refillAllocCache,
// isFree) and its mark bits. A span is a run of pages holding objects of one span class, or one
// large object.
#include <algorithm>
#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "heap/lock.hpp"
#include "heap/size_classes.hpp"

namespace gofin::internal {

struct Special;  // specials/special.hpp

enum class SpanState : std::uint8_t {
  kDead,   // record not describing memory
  kFree,   // pages owned by the page heap
  kInUse,  // holds heap objects
};

// A C++ destructor to run once the sweep finds the object dead (count elements for arrays):
// queued for the destructor thread (gc/destructor_queue.hpp).
using DtorFn = void (*)(void* obj, std::size_t count);
struct DtorSlot {
  DtorFn fn = nullptr;
  std::size_t count = 0;
};
// The slot of a dead object whose destructor is queued or has run (gc/destructor_queue.hpp):
// the object is kept one more cycle, and nothing may be attached to it meanwhile.
void DestructorQueuedSentinel(void* obj, std::size_t count);
inline constexpr DtorFn kDtorQueued = &DestructorQueuedSentinel;

inline constexpr std::size_t kMaxObjectsPerSpan = kPageSize / 8;  // 1024 8-byte objects
inline constexpr std::size_t kBitmapBytes = kMaxObjectsPerSpan / 8;

// Go: mspan
struct Span {
  // Links for whichever list owns the span (a central list or a page-heap free list).
  Span* next = nullptr;
  Span* prev = nullptr;
  void* list = nullptr;  // the list the span is on, for O(1) removal

  std::uintptr_t start = 0;
  std::size_t npages = 0;
  std::uintptr_t limit = 0;  // end of the last object
  std::size_t elemsize = 0;
  std::uint32_t nelems = 0;
  std::uint32_t divmagic = 0;
  SpanClass spanclass{};
  // Go: mSpanStateBox. Atomic: spanOfHeap reads it without the heap lock (Cleanup.Stop or
  // weak::Value on an object whose span the background sweeper is giving back); the page
  // heap's seq_cst store of kInUse publishes the fields set before it to those readers.
  std::atomic<SpanState> state{SpanState::kDead};
  bool large = false;
  bool needzero = false;  // memory may be dirty: allocation must zero it

  // Go: freeindex / allocCache. Objects below freeindex are allocated; allocCache holds the
  // complement of allocBits from freeindex on, so the next free slot is one ctz away.
  std::uint32_t freeindex = 0;
  std::uint32_t alloc_count = 0;
  std::uint64_t alloc_cache = 0;

  // Go: sweepgen. Relative to the heap's sweepgen sg: sg-2 needs sweeping, sg-1 is being
  // swept, sg is swept and ready. Acquire/release pairs publish a sweep's result.
  std::atomic<std::uint32_t> sweepgen{0};

  // Go: allocBits / gcmarkBits. Swapped by sweep instead of copied.
  std::uint8_t* alloc_bits = nullptr;
  std::uint8_t* mark_bits = nullptr;

  // Destructor table (spans of a dtor span class and large spans with a destructor).
  DtorSlot* dtors = nullptr;
  DtorSlot large_dtor{};

  // Go: specials / speciallock. Go keeps one list sorted by (offset, kind); gofin keeps one
  // such list per object, headed from a table indexed by object number (allocated with the
  // span's first special), so that adding or removing a special is O(1) however many objects
  // of the span have one. special_count > 0 iff some list is non-empty.
  Special** special_heads = nullptr;
  Special* large_special_head = nullptr;
  std::uint32_t special_count = 0;
  SpinLock specials_lock;

  alignas(8) std::uint8_t bitmaps[2][kBitmapBytes + 8] = {};

  void InitSmall(std::uintptr_t base, std::size_t pages, SpanClass spc) {
    start = base;
    npages = pages;
    spanclass = spc;
    large = false;
    const std::size_t c = spc.SizeClass();
    elemsize = kClassToSize[c];
    nelems = static_cast<std::uint32_t>((pages * kPageSize) / elemsize);
    divmagic = kClassToDivMagic[c];
    limit = start + nelems * elemsize;
    ResetBitmaps();
  }

  void InitLarge(std::uintptr_t base, std::size_t pages, SpanClass spc) {
    start = base;
    npages = pages;
    spanclass = spc;
    large = true;
    elemsize = pages * kPageSize;
    nelems = 1;
    divmagic = 0;
    limit = start + elemsize;
    ResetBitmaps();
  }

  void ResetBitmaps() {
    std::memset(bitmaps, 0, sizeof(bitmaps));
    alloc_bits = bitmaps[0];
    mark_bits = bitmaps[1];
    SetFreeIndex(0);
    alloc_count = 0;
    alloc_cache = ~std::uint64_t{0};
    dtors = nullptr;
    large_dtor = {};
    special_heads = nullptr;
    large_special_head = nullptr;
    special_count = 0;
  }

  [[nodiscard]] std::size_t ObjIndex(std::uintptr_t p) const {
    if (large) return 0;
    return static_cast<std::size_t>(((p - start) * std::uint64_t{divmagic}) >> 32);
  }
  [[nodiscard]] std::uintptr_t ObjBase(std::size_t i) const { return start + i * elemsize; }

  // Go: isFree, negated. Valid outside sweeping, with the span not cached for allocation
  // by another thread (the world stopped, or the span's owner asking).
  // freeindex is written by the span's owner only, but SetFinalizer reads it from any thread
  // (is this object allocated?): relaxed atomic stores, plain moves on x86.
  void SetFreeIndex(std::uint32_t v) {
    std::atomic_ref<std::uint32_t>(freeindex).store(v, std::memory_order_relaxed);
  }
  [[nodiscard]] bool IsAllocatedFromAnyThread(std::size_t i) const {
    const std::uint32_t fi =
        std::atomic_ref<std::uint32_t>(const_cast<std::uint32_t&>(freeindex))  // NOLINT
            .load(std::memory_order_relaxed);
    return i < fi || ((alloc_bits[i / 8] >> (i % 8)) & 1U) != 0;
  }

  [[nodiscard]] bool IsAllocated(std::size_t i) const {
    return i < freeindex || ((alloc_bits[i / 8] >> (i % 8)) & 1U) != 0;
  }

  [[nodiscard]] bool IsMarked(std::size_t i) const {
    return (std::atomic_ref<std::uint8_t>(mark_bits[i / 8]).load(std::memory_order_relaxed) >>
            (i % 8)) &
           1U;
  }
  // Sets the mark bit; true if this call set it. Relaxed: the world is stopped, and the mark
  // termination handshake orders the bits before sweep reads them. The bitmap is 8-byte
  // aligned and updated a 64-bit word at a time, so that x86 sets the bit with one `lock bts`
  // instead of a compare-and-swap loop on a byte.
  bool TryMark(std::size_t i) {
    using Word [[gnu::may_alias]] = std::uint64_t;
    auto* word = reinterpret_cast<Word*>(mark_bits) + i / 64;
    const std::uint64_t bit = std::uint64_t{1} << (i % 64);
    return (__atomic_fetch_or(word, bit, __ATOMIC_RELAXED) & bit) == 0;
  }
  void SetMarkNonAtomic(std::size_t i) {
    mark_bits[i / 8] |= static_cast<std::uint8_t>(1U << (i % 8));
  }

  // Allocation bits of objects [64 * w, 64 * w + 64).
  [[nodiscard]] std::uint64_t AllocWord(std::size_t w) const {
    std::uint64_t v = 0;
    std::memcpy(&v, alloc_bits + w * 8, sizeof(v));
    return v;
  }

  // Go: refillAllocCache. whichByte is a multiple of 8.
  void RefillAllocCache(std::size_t which_byte) {
    std::uint64_t v = 0;
    std::memcpy(&v, alloc_bits + which_byte, sizeof(v));
    alloc_cache = ~v;
  }

  // Go: nextFreeIndex. Returns nelems when the span is full.
  std::uint32_t NextFreeIndex() {
    std::uint32_t sfreeindex = freeindex;
    if (sfreeindex == nelems) return sfreeindex;
    auto bit = static_cast<std::uint32_t>(std::countr_zero(alloc_cache));
    while (bit == 64) {
      sfreeindex = (sfreeindex + 64) & ~63U;
      if (sfreeindex >= nelems) {
        SetFreeIndex(nelems);
        return nelems;
      }
      RefillAllocCache(sfreeindex / 8);
      bit = static_cast<std::uint32_t>(std::countr_zero(alloc_cache));
    }
    const std::uint32_t result = sfreeindex + bit;
    if (result >= nelems) {
      SetFreeIndex(nelems);
      return nelems;
    }
    alloc_cache >>= (bit + 1) % 64;
    if (bit == 63) alloc_cache = 0;
    sfreeindex = result + 1;
    if (sfreeindex % 64 == 0 && sfreeindex != nelems) RefillAllocCache(sfreeindex / 8);
    SetFreeIndex(sfreeindex);
    return result;
  }

  // gofin: NextFreeIndex, extended to every free object after it up to the end of its
  // allocCache word, and on over every following word that is wholly free (a span swept empty
  // or fresh is one run), all claimed at once for the thread cache's bump allocation
  // (ThreadCache::runs): alloc_count counts them and allocCache moves past them, but freeindex
  // only past the first. The cache moves freeindex on as it hands each object out, so that
  // IsAllocated stays exact for every thread; until the run is used up (or given back with
  // ReturnRunTail) freeindex lags behind allocCache and only the cache may allocate from the
  // span. Returns nelems when the span is full; count is the run's length.
  std::uint32_t NextFreeRun(std::uint32_t& count) {
    const std::uint32_t first = NextFreeIndex();
    count = 0;
    if (first == nelems) return first;
    std::uint32_t end = freeindex;
    // NextFreeIndex left allocCache at end; at a word boundary it has loaded the next word.
    if (end % 64 != 0) {
      const auto extra =
          std::min(static_cast<std::uint32_t>(std::countr_one(alloc_cache)), nelems - end);
      end += extra;
      if (end % 64 != 0) alloc_cache >>= extra;  // extra < 64 here
    }
    while (end % 64 == 0 && end < nelems && AllocWord(end / 64) == 0) {
      end = std::min(end + 64, nelems);  // bits past nelems are clear: stop there
    }
    if (end % 64 == 0 && end < nelems) RefillAllocCache(end / 8);
    count = end - first;
    alloc_count += count;
    return first;
  }

  // Gives back the objects [freeindex, end) of the last run NextFreeRun claimed, which the
  // cache did not hand out: the allocation walk resumes at freeindex.
  void ReturnRunTail(std::uint32_t end) {
    alloc_count -= end - freeindex;
    RefillAllocCache((freeindex & ~63U) / 8);
    if (freeindex % 64 != 0) alloc_cache >>= freeindex % 64;
  }

  [[nodiscard]] DtorSlot* DtorFor(std::size_t i) {
    if (large) return &large_dtor;
    return dtors == nullptr ? nullptr : &dtors[i];
  }

  [[nodiscard]] bool Contains(std::uintptr_t p) const { return p >= start && p < limit; }
};

// Intrusive doubly linked list of spans (Go: mSpanList).
struct SpanList {
  Span* first = nullptr;
  std::size_t count = 0;

  void PushFront(Span* s) {
    s->prev = nullptr;
    s->next = first;
    if (first != nullptr) first->prev = s;
    first = s;
    s->list = this;
    ++count;
  }
  void Remove(Span* s) {
    if (s->prev != nullptr) {
      s->prev->next = s->next;
    } else {
      first = s->next;
    }
    if (s->next != nullptr) s->next->prev = s->prev;
    s->next = s->prev = nullptr;
    s->list = nullptr;
    --count;
  }
  Span* PopFront() {
    Span* s = first;
    if (s != nullptr) Remove(s);
    return s;
  }
  [[nodiscard]] bool Empty() const { return first == nullptr; }
};

}  // namespace gofin::internal
