#include "heap/page_heap.hpp"

#include <new>

#include "heap/dirty_pages.hpp"
#include "heap/os_memory.hpp"

namespace gofin::internal {

namespace {
std::uintptr_t PageAddr(std::uintptr_t base, std::size_t i) { return base + i * kPageSize; }
}  // namespace

void PageHeap::SetSpanMap(std::uintptr_t base, std::size_t npages, Span* s, ArenaIndex& index,
                          bool all) {
  auto set = [&](std::uintptr_t p) {
    index.ArenaOf(p)->spans[PageInArena(p)].store(s, std::memory_order_relaxed);
  };
  if (all) {
    for (std::size_t i = 0; i < npages; ++i) set(PageAddr(base, i));
  } else {
    set(base);
    set(PageAddr(base, npages - 1));
  }
}

void PageHeap::InsertFree(Span* s, ArenaIndex& index) {
  // Go: the old mheap's coalescing free. Neighbour runs are found through the page map: a free
  // run keeps its first and last page's entries current.
  const std::uintptr_t end = PageAddr(s->start, s->npages);
  if (Span* prev = index.SpanOf(s->start - 1); prev != nullptr && prev != s &&
                                               prev->state == SpanState::kFree &&
                                               PageAddr(prev->start, prev->npages) == s->start) {
    RemoveFree(prev);
    s->start = prev->start;
    s->npages += prev->npages;
    span_alloc_.Free(prev);
  }
  if (Span* next = index.SpanOf(end);
      next != nullptr && next != s && next->state == SpanState::kFree && next->start == end) {
    RemoveFree(next);
    s->npages += next->npages;
    span_alloc_.Free(next);
  }
  s->state = SpanState::kFree;
  s->limit = s->start;
  SetSpanMap(s->start, s->npages, s, index, false);
  ListFor(s->npages).PushFront(s);
}

void PageHeap::RemoveFree(Span* s) { static_cast<SpanList*>(s->list)->Remove(s); }

Span* PageHeap::FindFree(std::size_t npages) {
  for (std::size_t n = npages; n < kMaxSmallRun; ++n) {
    if (!free_[n].Empty()) return free_[n].first;
  }
  // Best fit among the large runs, lowest address on ties (keeps the heap compact).
  Span* best = nullptr;
  for (Span* s = free_large_.first; s != nullptr; s = s->next) {
    if (s->npages < npages) continue;
    if (best == nullptr || s->npages < best->npages ||
        (s->npages == best->npages && s->start < best->start)) {
      best = s;
    }
  }
  return best;
}

bool PageHeap::Grow(std::size_t npages, ArenaIndex& index) {
  // One page more than asked: the reservation's first page is never handed out (below).
  const std::size_t bytes = ((npages + 1) * kPageSize + kArenaSize - 1) / kArenaSize * kArenaSize;
  void* mem = os::Reserve(bytes, kArenaSize, reinterpret_cast<void*>(hint_arena_ << kArenaShift));
  if (mem == nullptr) return false;
  const auto base = reinterpret_cast<std::uintptr_t>(mem);
  if ((base >> kArenaShift) + bytes / kArenaSize > kArenaIndexEntries || !os::Commit(mem, bytes)) {
    os::Unmap(mem, bytes);
    return false;
  }
  // Everything that can fail comes first, so that a refusal leaves the heap as it was.
  const std::size_t narenas = bytes / kArenaSize;
  Span* s = span_alloc_.TryAlloc();
  auto* meta =
      static_cast<char*>(s == nullptr ? nullptr : os::MapMetadata(narenas * sizeof(HeapArena)));
  if (meta == nullptr) {
    if (s != nullptr) span_alloc_.Free(s);
    os::Unmap(mem, bytes);
    return false;
  }
  for (std::size_t i = 0; i < narenas; ++i) {
    auto* arena = ::new (meta + i * sizeof(HeapArena)) HeapArena();
    arena->base = base + i * kArenaSize;
    // Fresh pages are untouched: zero and not resident, exactly like released ones.
    for (auto& b : arena->scavenged) b = 0xff;
    meta_ += sizeof(HeapArena);
    index.Add(arena->base, arena);
  }
  hint_arena_ = (base + bytes) >> kArenaShift;
  dirty::NoteHeapRange(base, bytes);
  sys_ += bytes;
  released_ += bytes;
  // The reservation's base is the value gofin itself computes, passes to mmap and stores, so
  // it is the heap address most likely to linger in a stale stack slot. No object starts
  // there: such a word then keeps nothing alive (one page per reservation).
  s->start = base + kPageSize;
  s->npages = bytes / kPageSize - 1;
  InsertFree(s, index);
  return true;
}

Span* PageHeap::AllocSpan(std::size_t npages, ArenaIndex& index) {
  Span* s = FindFree(npages);
  if (s == nullptr) {
    if (!Grow(npages, index)) return nullptr;
    s = FindFree(npages);
    if (s == nullptr) return nullptr;
  }
  Span* rest = nullptr;
  if (s->npages > npages) {
    rest = span_alloc_.TryAlloc();  // before anything changes: a refusal leaves all as it was
    if (rest == nullptr) return nullptr;
  }
  RemoveFree(s);
  if (rest != nullptr) {
    rest->start = PageAddr(s->start, npages);
    rest->npages = s->npages - npages;
    rest->state = SpanState::kFree;
    SetSpanMap(rest->start, rest->npages, rest, index, false);
    ListFor(rest->npages).PushFront(rest);
    s->npages = npages;
  }
  // Pages that were released read as zero; any other page may hold an old object.
  std::size_t scavenged = 0;
  for (std::size_t i = 0; i < npages; ++i) {
    const std::uintptr_t p = PageAddr(s->start, i);
    HeapArena* a = index.ArenaOf(p);
    const std::size_t pi = PageInArena(p);
    if (TestPageBit(a->scavenged, pi)) {
      ++scavenged;
      ClearPageBit(a->scavenged, pi);
    }
  }
  released_ -= scavenged * kPageSize;
  s->needzero = scavenged != npages;
  s->state = SpanState::kInUse;
  SetSpanMap(s->start, npages, s, index, true);
  SetPageBit(index.ArenaOf(s->start)->page_in_use, PageInArena(s->start));
  inuse_ += npages * kPageSize;
  return s;
}

void PageHeap::FreeSpan(Span* s, ArenaIndex& index) {
  ClearPageBit(index.ArenaOf(s->start)->page_in_use, PageInArena(s->start));
  inuse_ -= s->npages * kPageSize;
  s->dtors = nullptr;
  InsertFree(s, index);
}

std::size_t PageHeap::ScavengeTo(std::size_t keep, ArenaIndex& index) {
  const std::size_t resident = sys_ - released_;
  if (resident <= keep) return 0;
  std::size_t need = resident - keep;
  std::size_t done = 0;
  auto scavenge_run = [&](Span* s) {
    std::size_t i = 0;
    while (i < s->npages && done < need) {
      // Find a maximal run of resident pages and release it with one madvise.
      const std::uintptr_t p = PageAddr(s->start, i);
      HeapArena* a = index.ArenaOf(p);
      if (TestPageBit(a->scavenged, PageInArena(p))) {
        ++i;
        continue;
      }
      std::size_t j = i;
      while (j < s->npages) {
        const std::uintptr_t q = PageAddr(s->start, j);
        HeapArena* qa = index.ArenaOf(q);
        if (TestPageBit(qa->scavenged, PageInArena(q))) break;
        SetPageBit(qa->scavenged, PageInArena(q));
        ++j;
        if ((j - i) * kPageSize >= need - done) break;
      }
      os::Release(reinterpret_cast<void*>(p), (j - i) * kPageSize);
      done += (j - i) * kPageSize;
      i = j;
    }
  };
  for (Span* s = free_large_.first; s != nullptr && done < need; s = s->next) scavenge_run(s);
  for (std::size_t n = kMaxSmallRun - 1; n > 0 && done < need; --n) {
    for (Span* s = free_[n].first; s != nullptr && done < need; s = s->next) scavenge_run(s);
  }
  released_ += done;
  return done;
}

}  // namespace gofin::internal
