// The page heap (Go: mheap.allocSpan / freeSpan, the old mheap's coalescing free lists,
// mgcscavenge.go). Every test uses its own PageHeap and ArenaIndex, never g_heap: the
// arenas they map are theirs alone (the index is keyed by address, so g_heap's index simply
// does not know them). The page heap expects the heap lock to be held; these tests are
// single-threaded and own the heap, so no lock is needed.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <vector>

#include "heap/arena.hpp"
#include "heap/heap.hpp"
#include "heap/page_heap.hpp"
#include "heap/span.hpp"

namespace {

using gofin::internal::ArenaIndex;
using gofin::internal::HeapArena;
using gofin::internal::kArenaShift;
using gofin::internal::kArenaSize;
using gofin::internal::kPageSize;
using gofin::internal::kPagesPerArena;
using gofin::internal::PageHeap;
using gofin::internal::PageInArena;
using gofin::internal::Span;
using gofin::internal::SpanClass;
using gofin::internal::SpanState;
using gofin::internal::TestPageBit;

constexpr std::uint64_t kDirty = 0xABABABABABABABABULL;

class PageHeapTest : public ::testing::Test {
 protected:
  void SetUp() override {
    index_ = std::make_unique<ArenaIndex>();
    index_->Init();
    ASSERT_TRUE(index_->Initialized());
    heap_ = std::make_unique<PageHeap>();
  }
  // The arenas stay mapped (a page heap never unmaps); give their free pages back at least.
  void TearDown() override { heap_->ScavengeTo(0, *index_); }

  // An in-use span of n pages, set up like a large object so that SpanOfHeap sees it.
  Span* Alloc(std::size_t n) {
    Span* s = heap_->AllocSpan(n, *index_);
    if (s == nullptr) return nullptr;
    EXPECT_EQ(s->state, SpanState::kInUse);
    EXPECT_EQ(s->npages, n);
    EXPECT_EQ(s->start % kPageSize, 0U);
    const bool needzero = s->needzero;
    s->InitLarge(s->start, n, SpanClass::Make(0, true, false));
    EXPECT_EQ(s->needzero, needzero);
    return s;
  }
  void Free(Span* s) { heap_->FreeSpan(s, *index_); }

  static std::uint64_t* Words(Span* s) { return reinterpret_cast<std::uint64_t*>(s->start); }
  static std::size_t NWords(Span* s) { return s->npages * kPageSize / 8; }

  static void Fill(Span* s, std::uint64_t v) { std::fill(Words(s), Words(s) + NWords(s), v); }
  static bool AllEqual(Span* s, std::uint64_t v) {
    return std::all_of(Words(s), Words(s) + NWords(s), [v](std::uint64_t w) { return w == v; });
  }
  // Pages of s whose every word is v.
  static std::size_t PagesEqual(Span* s, std::uint64_t v) {
    std::size_t n = 0;
    for (std::size_t p = 0; p < s->npages; ++p) {
      const auto* w = reinterpret_cast<const std::uint64_t*>(s->start + p * kPageSize);
      if (std::all_of(w, w + kPageSize / 8, [v](std::uint64_t x) { return x == v; })) ++n;
    }
    return n;
  }

  // The free run whose first page is at p (checks that it is one).
  Span* FreeRunAt(std::uintptr_t p) {
    Span* r = index_->SpanOf(p);
    if (r == nullptr || r->state != SpanState::kFree || r->start != p) return nullptr;
    return r;
  }

  std::unique_ptr<ArenaIndex> index_;
  std::unique_ptr<PageHeap> heap_;
};

TEST_F(PageHeapTest, EmptyHeap) {
  EXPECT_EQ(heap_->SysBytes(), 0U);
  EXPECT_EQ(heap_->InuseBytes(), 0U);
  EXPECT_EQ(heap_->ReleasedBytes(), 0U);
  EXPECT_EQ(heap_->ScavengeTo(0, *index_), 0U);
  EXPECT_EQ(index_->SpanOf(0xc000000000), nullptr);
}

TEST_F(PageHeapTest, FirstSpanGrowsOneArena) {
  Span* s = Alloc(1);
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(heap_->SysBytes(), kArenaSize);
  EXPECT_EQ(heap_->InuseBytes(), kPageSize);
  // Fresh pages are untouched: they count as released and read as zero.
  EXPECT_EQ(heap_->ReleasedBytes(), kArenaSize - kPageSize);
  EXPECT_FALSE(s->needzero);
  EXPECT_TRUE(AllEqual(s, 0));
  EXPECT_GT(heap_->MetadataBytes(), 0U);

  const std::uintptr_t arena_base = s->start & ~(kArenaSize - 1);
  // The reservation's first page is never handed out (a stale copy of the base address,
  // which gofin itself computes, must keep nothing alive): the second page comes first.
  EXPECT_EQ(s->start, arena_base + kPageSize) << "a fresh arena hands out its second page first";
  HeapArena* a = index_->ArenaOf(s->start);
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->base, arena_base);
  EXPECT_TRUE(TestPageBit(a->page_in_use, PageInArena(s->start)));
  EXPECT_FALSE(TestPageBit(a->page_in_use, PageInArena(s->start) + 1));
  EXPECT_GE(index_->LoIndex(), 1U);
  EXPECT_EQ(index_->LoIndex(), s->start >> kArenaShift);
  EXPECT_EQ(index_->HiIndex(), (s->start >> kArenaShift) + 1);

  EXPECT_EQ(index_->SpanOf(s->start), s);
  EXPECT_EQ(index_->SpanOfHeap(s->start), s);
  EXPECT_EQ(index_->SpanOfHeap(s->start + kPageSize - 1), s);
  EXPECT_EQ(index_->SpanOfHeap(s->start + kPageSize), nullptr);  // the free rest
  EXPECT_EQ(index_->SpanOfHeap(s->start - 1), nullptr);          // outside every arena
  EXPECT_EQ(index_->ArenaOf(arena_base - 1), nullptr);
  EXPECT_EQ(index_->ArenaOf(arena_base + kArenaSize), nullptr);

  // The rest of the arena is one free run whose first and last page entries are current.
  Span* rest = FreeRunAt(s->start + kPageSize);
  ASSERT_NE(rest, nullptr);
  EXPECT_EQ(rest->npages, kPagesPerArena - 2);
  EXPECT_EQ(index_->SpanOf(arena_base + kArenaSize - 1), rest);

  // g_heap's index knows nothing of this heap's arenas.
  EXPECT_EQ(gofin::internal::g_heap.arenas.SpanOf(s->start), nullptr);
  EXPECT_EQ(gofin::internal::g_heap.arenas.ArenaOf(s->start), nullptr);

  Fill(s, kDirty);  // the memory is committed and writable
  EXPECT_TRUE(AllEqual(s, kDirty));
}

TEST_F(PageHeapTest, SpanMapCoversEveryPage) {
  Span* a = Alloc(3);
  Span* b = Alloc(1000);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  for (Span* s : {a, b}) {
    HeapArena* ar = index_->ArenaOf(s->start);
    for (std::size_t i = 0; i < s->npages; ++i) {
      const std::uintptr_t p = s->start + i * kPageSize;
      ASSERT_EQ(index_->SpanOf(p), s) << "page " << i;
      ASSERT_EQ(index_->SpanOf(p + kPageSize - 1), s) << "page " << i;
      ASSERT_EQ(index_->SpanOfHeap(p + 17), s) << "page " << i;
      ASSERT_EQ(TestPageBit(ar->page_in_use, PageInArena(p)), i == 0) << "page " << i;
    }
  }
}

TEST_F(PageHeapTest, SpansAreDisjointAndAccounted) {
  const std::array<std::size_t, 4> sizes = {1, 3, 128, 1000};
  std::vector<Span*> spans;
  std::size_t pages = 0;
  for (std::size_t n : sizes) {
    Span* s = Alloc(n);
    ASSERT_NE(s, nullptr);
    spans.push_back(s);
    pages += n;
    EXPECT_EQ(heap_->InuseBytes(), pages * kPageSize);
    EXPECT_EQ(heap_->ReleasedBytes(), heap_->SysBytes() - pages * kPageSize);
  }
  EXPECT_EQ(heap_->SysBytes(), kArenaSize);
  for (std::size_t i = 0; i < spans.size(); ++i) {
    for (std::size_t j = i + 1; j < spans.size(); ++j) {
      const bool disjoint = spans[i]->start + spans[i]->npages * kPageSize <= spans[j]->start ||
                            spans[j]->start + spans[j]->npages * kPageSize <= spans[i]->start;
      EXPECT_TRUE(disjoint) << i << " overlaps " << j;
    }
    Fill(spans[i], i + 1);
  }
  for (std::size_t i = 0; i < spans.size(); ++i) EXPECT_TRUE(AllEqual(spans[i], i + 1)) << i;
}

// Free 1, 3, 128 and 1000 pages in every one of the 24 orders: each time the arena must come
// back together into one free run (Go's old mheap coalescing).
TEST_F(PageHeapTest, CoalescesInEveryFreeOrder) {
  std::array<std::size_t, 4> order = {0, 1, 2, 3};
  const std::array<std::size_t, 4> sizes = {1, 3, 128, 1000};
  std::uintptr_t arena_base = 0;
  int permutations = 0;
  do {
    std::array<Span*, 4> spans{};
    for (std::size_t i = 0; i < 4; ++i) {
      spans[i] = Alloc(sizes[i]);
      ASSERT_NE(spans[i], nullptr);
    }
    if (arena_base == 0) arena_base = spans[0]->start & ~(kArenaSize - 1);
    EXPECT_EQ(spans[0]->start, arena_base + kPageSize) << "permutation " << permutations;
    std::size_t inuse = 1132;
    for (std::size_t k : order) {
      inuse -= sizes[k];
      Free(spans[k]);
      EXPECT_EQ(heap_->InuseBytes(), inuse * kPageSize);
    }
    EXPECT_EQ(heap_->InuseBytes(), 0U);
    EXPECT_EQ(heap_->SysBytes(), kArenaSize) << "freeing must not grow the heap";
    Span* run = FreeRunAt(arena_base + kPageSize);
    ASSERT_NE(run, nullptr) << "permutation " << permutations;
    EXPECT_EQ(run->npages, kPagesPerArena - 1) << "permutation " << permutations;
    EXPECT_EQ(index_->SpanOf(arena_base + kArenaSize - 1), run);
    // One arena-sized run is available again, at the same base, without growing.
    Span* whole = Alloc(kPagesPerArena - 1);
    ASSERT_NE(whole, nullptr);
    EXPECT_EQ(whole->start, arena_base + kPageSize);
    EXPECT_EQ(heap_->SysBytes(), kArenaSize);
    Free(whole);
    ++permutations;
  } while (std::next_permutation(order.begin(), order.end()));
  EXPECT_EQ(permutations, 24);
}

TEST_F(PageHeapTest, FreeInTheMiddleMergesBothNeighbours) {
  Span* a = Alloc(1);
  Span* b = Alloc(3);
  Span* c = Alloc(128);
  Span* d = Alloc(10);  // keeps c's run apart from the rest of the arena
  ASSERT_TRUE(a && b && c && d);
  const std::uintptr_t a_start = a->start;
  ASSERT_EQ(b->start, a_start + 1 * kPageSize);
  ASSERT_EQ(c->start, a_start + 4 * kPageSize);
  ASSERT_EQ(d->start, a_start + 132 * kPageSize);
  Free(a);
  Free(c);
  EXPECT_NE(FreeRunAt(a_start), nullptr);
  EXPECT_EQ(FreeRunAt(a_start)->npages, 1U);
  EXPECT_EQ(FreeRunAt(a_start + 4 * kPageSize)->npages, 128U);
  Free(b);
  Span* run = FreeRunAt(a_start);
  ASSERT_NE(run, nullptr);
  EXPECT_EQ(run->npages, 132U);
  EXPECT_EQ(index_->SpanOf(a_start + 131 * kPageSize), run);
  EXPECT_EQ(index_->SpanOfHeap(a_start + 131 * kPageSize), nullptr);
  // d is untouched and still mapped.
  EXPECT_EQ(index_->SpanOfHeap(d->start), d);
  // Best fit: the 132-page hole is used before the big run after d.
  Span* again = Alloc(132);
  ASSERT_NE(again, nullptr);
  EXPECT_EQ(again->start, a_start);
  Free(again);
  Free(d);
  Span* whole = FreeRunAt(a_start);
  ASSERT_NE(whole, nullptr);
  EXPECT_EQ(whole->npages, kPagesPerArena - 1);
}

TEST_F(PageHeapTest, NeedZeroAndScavenge) {
  Span* s = Alloc(100);
  ASSERT_NE(s, nullptr);
  const std::uintptr_t start = s->start;
  EXPECT_FALSE(s->needzero) << "fresh pages read as zero";
  EXPECT_TRUE(AllEqual(s, 0));
  Fill(s, kDirty);
  Free(s);
  EXPECT_EQ(heap_->SysBytes() - heap_->ReleasedBytes(), 100 * kPageSize);

  // The same pages come back dirty, and say so.
  s = Alloc(100);
  ASSERT_NE(s, nullptr);
  ASSERT_EQ(s->start, start);
  EXPECT_TRUE(s->needzero);
  EXPECT_TRUE(AllEqual(s, kDirty)) << "the page heap itself never zeroes";
  EXPECT_EQ(heap_->ReleasedBytes(), heap_->SysBytes() - 100 * kPageSize);
  Free(s);

  // Releasing every free page: all of it, exactly once.
  EXPECT_EQ(heap_->ScavengeTo(0, *index_), 100 * kPageSize);
  EXPECT_EQ(heap_->ReleasedBytes(), heap_->SysBytes());
  EXPECT_EQ(heap_->ScavengeTo(0, *index_), 0U);

  s = Alloc(100);
  ASSERT_NE(s, nullptr);
  ASSERT_EQ(s->start, start);
  EXPECT_FALSE(s->needzero) << "released pages read as zero";
  EXPECT_TRUE(AllEqual(s, 0));
  Fill(s, kDirty);
  Free(s);

  // Partial scavenge: exactly `keep` bytes stay resident.
  const std::size_t keep = 40 * kPageSize;
  EXPECT_EQ(heap_->ScavengeTo(keep, *index_), 60 * kPageSize);
  EXPECT_EQ(heap_->SysBytes() - heap_->ReleasedBytes(), keep);
  EXPECT_EQ(heap_->ScavengeTo(keep, *index_), 0U);
  EXPECT_EQ(heap_->ScavengeTo(keep + kPageSize, *index_), 0U);

  s = Alloc(100);
  ASSERT_NE(s, nullptr);
  ASSERT_EQ(s->start, start);
  EXPECT_TRUE(s->needzero) << "a span with any resident page may be dirty";
  EXPECT_EQ(heap_->ReleasedBytes(), heap_->SysBytes() - 100 * kPageSize);
  EXPECT_EQ(PagesEqual(s, 0), 60U);
  EXPECT_EQ(PagesEqual(s, kDirty), 40U);
  Free(s);
}

TEST_F(PageHeapTest, ScavengeNeverTouchesInUsePages) {
  Span* x = Alloc(10);
  Span* y = Alloc(50);
  ASSERT_TRUE(x && y);
  Fill(x, 0x1111111111111111ULL);
  Fill(y, kDirty);
  Free(y);
  const std::size_t resident_free =
      heap_->SysBytes() - heap_->ReleasedBytes() - heap_->InuseBytes();
  EXPECT_EQ(resident_free, 50 * kPageSize);
  EXPECT_EQ(heap_->ScavengeTo(0, *index_), 50 * kPageSize);
  EXPECT_EQ(heap_->ReleasedBytes(), heap_->SysBytes() - heap_->InuseBytes());
  EXPECT_EQ(heap_->InuseBytes(), 10 * kPageSize);
  EXPECT_TRUE(AllEqual(x, 0x1111111111111111ULL));
  Free(x);
  EXPECT_EQ(heap_->ScavengeTo(0, *index_), 10 * kPageSize);
  EXPECT_EQ(heap_->ReleasedBytes(), heap_->SysBytes());
}

TEST_F(PageHeapTest, SpanLargerThanAnArena) {
  Span* s = Alloc(kPagesPerArena + 1);
  ASSERT_NE(s, nullptr);
  EXPECT_GE(heap_->SysBytes(), 2 * kArenaSize);
  EXPECT_EQ(heap_->SysBytes() % kArenaSize, 0U);
  EXPECT_FALSE(s->needzero);
  const std::uintptr_t last = s->start + (s->npages - 1) * kPageSize;
  ASSERT_NE(index_->ArenaOf(s->start), nullptr);
  ASSERT_NE(index_->ArenaOf(last), nullptr);
  EXPECT_NE(index_->ArenaOf(s->start), index_->ArenaOf(last));
  for (std::size_t i = 0; i < s->npages; i += 97) {
    ASSERT_EQ(index_->SpanOfHeap(s->start + i * kPageSize), s) << i;
  }
  EXPECT_EQ(index_->SpanOfHeap(last + kPageSize - 1), s);
  // Pages at both ends are usable.
  *reinterpret_cast<volatile std::uint64_t*>(s->start) = 1;
  *reinterpret_cast<volatile std::uint64_t*>(last + kPageSize - 8) = 2;
  EXPECT_TRUE(TestPageBit(index_->ArenaOf(s->start)->page_in_use, PageInArena(s->start)));
  EXPECT_FALSE(TestPageBit(index_->ArenaOf(last)->page_in_use, PageInArena(last)));
  const std::size_t sys = heap_->SysBytes();
  Free(s);
  EXPECT_EQ(heap_->InuseBytes(), 0U);
  // Everything the heap owns is one run again (one reservation, so contiguous).
  Span* run = FreeRunAt(s->start);
  ASSERT_NE(run, nullptr);
  EXPECT_EQ(run->npages * kPageSize, sys - kPageSize);
  Span* again = Alloc(sys / kPageSize - 1);
  ASSERT_NE(again, nullptr);
  EXPECT_EQ(heap_->SysBytes(), sys);
  Free(again);
}

TEST_F(PageHeapTest, GrowsWhenNoRunFits) {
  Span* a = Alloc(kPagesPerArena - 10);
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(heap_->SysBytes(), kArenaSize);
  Span* b = Alloc(20);  // does not fit the 10 pages left
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(heap_->SysBytes(), 2 * kArenaSize);
  EXPECT_FALSE(b->needzero);
  // b may straddle the two arenas (the new one is usually right after the first, and the
  // free runs coalesce across the boundary); either way it lies outside a.
  EXPECT_TRUE(b->start >= a->start + a->npages * kPageSize ||
              b->start + b->npages * kPageSize <= a->start);
  Span* c = Alloc(10);
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(heap_->SysBytes(), 2 * kArenaSize);
  EXPECT_EQ(heap_->InuseBytes(), (kPagesPerArena + 20) * kPageSize);
  EXPECT_LE(heap_->InuseBytes() + heap_->ReleasedBytes(), heap_->SysBytes());
  Free(a);
  Free(b);
  Free(c);
  EXPECT_EQ(heap_->InuseBytes(), 0U);
}

TEST_F(PageHeapTest, NewSpanRecordIsBlank) {
  Span* r = heap_->NewSpanRecord();
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->state, SpanState::kDead);
  EXPECT_EQ(r->start, 0U);
  EXPECT_EQ(r->npages, 0U);
  EXPECT_EQ(r->list, nullptr);
  EXPECT_GT(heap_->MetadataBytes(), 0U);
}

// Random allocations, frees and scavenges against a shadow model: spans never overlap, the
// counters add up, memory reported clean is zero, and nothing touches an in-use span.
TEST_F(PageHeapTest, RandomizedAgainstModel) {
  struct Live {
    Span* span;
    std::uint64_t tag;
  };
  std::mt19937_64 rng(20240601);
  std::vector<Live> live;
  std::map<std::uintptr_t, std::uintptr_t> ranges;  // start -> end of live spans
  std::size_t inuse_pages = 0;
  std::uint64_t next_tag = 1;

  auto check_tag = [](const Live& l) {
    for (std::size_t p = 0; p < l.span->npages; ++p) {
      const auto* w = reinterpret_cast<const std::uint64_t*>(l.span->start + p * kPageSize);
      if (w[0] != l.tag || w[kPageSize / 8 - 1] != l.tag || w[p % (kPageSize / 8)] != l.tag) {
        return false;
      }
    }
    return true;
  };

  for (int op = 0; op < 4000; ++op) {
    const unsigned r = static_cast<unsigned>(rng() % 100);
    if (r < 55 || live.empty()) {
      std::size_t n = 1 + rng() % 16;
      if (rng() % 8 == 0) n = 1 + rng() % 400;
      if (inuse_pages + n > 6000) continue;
      Span* s = Alloc(n);
      ASSERT_NE(s, nullptr);
      const std::uintptr_t start = s->start;
      const std::uintptr_t end = start + n * kPageSize;
      auto it = ranges.lower_bound(start);
      if (it != ranges.end()) {
        ASSERT_LE(end, it->first) << "overlaps the next live span";
      }
      if (it != ranges.begin()) {
        ASSERT_LE(std::prev(it)->second, start) << "overlaps the previous live span";
      }
      ranges.emplace(start, end);
      for (std::size_t p = 0; p < n; ++p) {
        ASSERT_EQ(index_->SpanOf(start + p * kPageSize), s);
      }
      if (!s->needzero) {
        for (std::size_t p = 0; p < n; ++p) {
          const auto* w = reinterpret_cast<const std::uint64_t*>(start + p * kPageSize);
          ASSERT_EQ(w[0], 0U) << "op " << op << " page " << p << " said clean";
          ASSERT_EQ(w[kPageSize / 8 - 1], 0U) << "op " << op << " page " << p;
          ASSERT_EQ(w[p % (kPageSize / 8)], 0U) << "op " << op << " page " << p;
        }
      }
      const Live l{s, next_tag++};
      for (std::size_t p = 0; p < n; ++p) {
        auto* w = reinterpret_cast<std::uint64_t*>(start + p * kPageSize);
        w[0] = l.tag;
        w[kPageSize / 8 - 1] = l.tag;
        w[p % (kPageSize / 8)] = l.tag;
      }
      live.push_back(l);
      inuse_pages += n;
    } else if (r < 95) {
      const std::size_t k = rng() % live.size();
      const Live l = live[k];
      ASSERT_TRUE(check_tag(l)) << "op " << op << ": an in-use span was overwritten";
      inuse_pages -= l.span->npages;
      ranges.erase(l.span->start);
      live[k] = live.back();
      live.pop_back();
      Free(l.span);
    } else {
      const std::size_t keep = (rng() % 2000) * kPageSize;
      const std::size_t resident = heap_->SysBytes() - heap_->ReleasedBytes();
      const std::size_t resident_free = resident - heap_->InuseBytes();
      const std::size_t released = heap_->ScavengeTo(keep, *index_);
      // Only free pages can be released: never below what is in use.
      const std::size_t expect = resident <= keep ? 0 : std::min(resident - keep, resident_free);
      ASSERT_EQ(released, expect) << "op " << op;
    }
    ASSERT_EQ(heap_->InuseBytes(), inuse_pages * kPageSize) << "op " << op;
    ASSERT_LE(heap_->ReleasedBytes() + heap_->InuseBytes(), heap_->SysBytes()) << "op " << op;
  }
  for (const Live& l : live) {
    ASSERT_TRUE(check_tag(l));
    Free(l.span);
  }
  EXPECT_EQ(heap_->InuseBytes(), 0U);
  // Every reservation is one free run again, from its second page (its first is never
  // handed out): walk them from the lowest arena up.
  std::size_t free_pages = 0;
  std::size_t reservations = 0;
  for (std::uintptr_t p = (index_->LoIndex() << kArenaShift) + kPageSize;
       p < (index_->HiIndex() << kArenaShift);) {
    Span* run = FreeRunAt(p);
    ASSERT_NE(run, nullptr) << "no free run at " << p;
    free_pages += run->npages;
    ++reservations;
    p = run->start + run->npages * kPageSize + kPageSize;
    while (p < (index_->HiIndex() << kArenaShift) && index_->ArenaOf(p) == nullptr) {
      p += kArenaSize;
    }
  }
  EXPECT_EQ((free_pages + reservations) * kPageSize, heap_->SysBytes());
}

}  // namespace
