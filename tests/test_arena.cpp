// The arena index and object lookup (Go: spanOf, spanOfHeap, findObject) on the real heap:
// every interior address of a heap object maps to that object, everything outside the heap
// maps to nothing.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <gofin/gofin.hpp>
#include <memory>
#include <vector>

#include "heap/arena.hpp"
#include "heap/heap.hpp"
#include "heap/malloc.hpp"
#include "heap/size_classes.hpp"

namespace {

using gofin::internal::FindObject;
using gofin::internal::g_heap;
using gofin::internal::kArenaShift;
using gofin::internal::kArenaSize;
using gofin::internal::kClassToSize;
using gofin::internal::kNumSizeClasses;
using gofin::internal::kPageSize;
using gofin::internal::kTinySpanClass;
using gofin::internal::ObjectRef;
using gofin::internal::Span;
using gofin::internal::SpanState;

long g_global_word = 42;  // NOLINT: a data-segment address

void NoopDtor(void* /*p*/, std::size_t /*n*/) {}

std::uintptr_t Addr(const void* p) { return reinterpret_cast<std::uintptr_t>(p); }

// Nothing in this file may be collected while a test inspects it.
class ArenaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    old_percent_ = gofin::debug::SetGCPercent(-1);
    (void)gofin::Alloc(1);  // the heap and this thread's cache exist from here on
  }
  void TearDown() override { gofin::debug::SetGCPercent(old_percent_); }

  static void ExpectNotInHeap(std::uintptr_t p, const char* what) {
    const ObjectRef r = FindObject(reinterpret_cast<const void*>(p));
    EXPECT_EQ(r.span, nullptr) << what << " " << std::hex << p;
    EXPECT_EQ(r.base, 0U) << what;
    EXPECT_EQ(r.index, 0U) << what;
    EXPECT_EQ(g_heap.arenas.SpanOfHeap(p), nullptr) << what << " " << std::hex << p;
  }

  // Every byte in [p, p + bytes) belongs to the object at `base`.
  static void ExpectEveryOffset(const void* p, std::size_t bytes, std::uintptr_t base,
                                const char* what) {
    const ObjectRef first = FindObject(p);
    ASSERT_NE(first.span, nullptr) << what;
    std::size_t bad = 0;
    for (std::size_t off = 0; off < bytes; ++off) {
      const ObjectRef r = FindObject(static_cast<const char*>(p) + off);
      if (r.span != first.span || r.base != base || r.index != first.index) {
        if (bad++ == 0) {
          ADD_FAILURE() << what << ": offset " << off << " of " << bytes << " maps to base "
                        << std::hex << r.base << " instead of " << base;
        }
      }
    }
    EXPECT_EQ(bad, 0U) << what;
  }

  int old_percent_ = 100;
};

TEST_F(ArenaTest, AddressesOutsideTheHeap) {
  ASSERT_TRUE(g_heap.arenas.Initialized());
  ASSERT_LT(g_heap.arenas.LoIndex(), g_heap.arenas.HiIndex());
  const std::uintptr_t lo = g_heap.arenas.LoIndex() << kArenaShift;
  const std::uintptr_t hi = g_heap.arenas.HiIndex() << kArenaShift;
  EXPECT_NE(g_heap.arenas.ArenaOf(lo), nullptr);
  EXPECT_EQ(g_heap.arenas.ArenaOf(lo)->base, lo);
  EXPECT_NE(g_heap.arenas.ArenaOf(hi - 1), nullptr);
  EXPECT_EQ(g_heap.arenas.ArenaOf(lo - 1), nullptr);
  EXPECT_EQ(g_heap.arenas.SpanOf(lo - 1), nullptr);
  EXPECT_EQ(g_heap.arenas.ArenaOf(hi), nullptr);
  EXPECT_EQ(g_heap.arenas.SpanOf(hi), nullptr);

  int local = 0;
  std::unique_ptr<char[]> from_new(new char[64]);
  void* from_malloc = std::malloc(64);
  ExpectNotInHeap(0, "address 0");
  ExpectNotInHeap(1, "address 1");
  ExpectNotInHeap(4096, "address 4096");
  ExpectNotInHeap(lo - 1, "arena base - 1");
  ExpectNotInHeap(lo - kArenaSize, "arena below the heap");
  ExpectNotInHeap(hi, "end of the last arena");
  ExpectNotInHeap(hi + 12345, "past the last arena");
  ExpectNotInHeap(Addr(&local), "stack");
  ExpectNotInHeap(Addr(from_new.get()), "operator new");
  ExpectNotInHeap(Addr(from_malloc), "malloc");
  ExpectNotInHeap(Addr(&g_global_word), "global");
  ExpectNotInHeap(Addr(reinterpret_cast<const void*>(&NoopDtor)), "text");
  ExpectNotInHeap((std::uintptr_t{1} << 47) - 8, "top of user space");
  ExpectNotInHeap(std::uintptr_t{1} << 47, "non-canonical");
  ExpectNotInHeap(~std::uintptr_t{0} - 7, "kernel");
  std::free(from_malloc);
}

// Pages of the heap's arenas that hold no in-use span answer "no object", and the index is
// consistent with itself on every page of every arena.
TEST_F(ArenaTest, IndexConsistentOnEveryPage) {
  std::size_t in_use_pages = 0;
  std::size_t other_pages = 0;
  for (std::uintptr_t idx = g_heap.arenas.LoIndex(); idx < g_heap.arenas.HiIndex(); ++idx) {
    const std::uintptr_t arena = idx << kArenaShift;
    if (g_heap.arenas.ArenaOf(arena) == nullptr) {
      ExpectNotInHeap(arena, "hole between arenas");
      continue;
    }
    for (std::uintptr_t p = arena; p < arena + kArenaSize; p += kPageSize) {
      Span* s = g_heap.arenas.SpanOf(p);
      Span* h = g_heap.arenas.SpanOfHeap(p);
      if (h != nullptr) {
        ++in_use_pages;
        ASSERT_EQ(h, s);
        ASSERT_EQ(h->state, SpanState::kInUse);
        ASSERT_TRUE(h->Contains(p));
        ASSERT_GE(p, h->start);
        ASSERT_LT(p, h->start + h->npages * kPageSize);
      } else {
        ++other_pages;
        ASSERT_TRUE(s == nullptr || s->state != SpanState::kInUse || !s->Contains(p));
        ASSERT_EQ(FindObject(reinterpret_cast<const void*>(p)).span, nullptr) << std::hex << p;
        ASSERT_EQ(FindObject(reinterpret_cast<const void*>(p + kPageSize - 1)).span, nullptr);
      }
    }
  }
  EXPECT_GT(in_use_pages, 0U);
  EXPECT_GT(other_pages, 0U) << "a small test heap leaves free pages in its arena";
}

TEST_F(ArenaTest, EveryOffsetOfEverySizeClass) {
  for (std::size_t c = 1; c < kNumSizeClasses; ++c) {
    const std::size_t size = kClassToSize[c];
    struct Variant {
      const char* name;
      void* p;
      bool noscan;
      bool dtor;
    };
    const Variant variants[] = {
        {"scan", gofin::detail::Malloc(size, 0, nullptr, 0), false, false},
        {"noscan",
         gofin::detail::Malloc(size, gofin::detail::kAllocNoScan | gofin::detail::kAllocNoTiny,
                               nullptr, 0),
         true, false},
        {"dtor", gofin::detail::Malloc(size, 0, &NoopDtor, 1), false, true},
    };
    for (const Variant& v : variants) {
      SCOPED_TRACE(testing::Message() << "class " << c << " size " << size << " " << v.name);
      const ObjectRef r = FindObject(v.p);
      ASSERT_NE(r.span, nullptr);
      EXPECT_EQ(r.base, Addr(v.p));
      EXPECT_EQ(r.span->ObjBase(r.index), Addr(v.p));
      EXPECT_EQ(r.index, r.span->ObjIndex(Addr(v.p)));
      EXPECT_FALSE(r.span->large);
      EXPECT_EQ(r.span->elemsize, size);
      EXPECT_EQ(r.span->spanclass.SizeClass(), c);
      EXPECT_EQ(r.span->spanclass.NoScan(), v.noscan);
      EXPECT_EQ(r.span->spanclass.HasDtor(), v.dtor);
      EXPECT_EQ(r.span->state, SpanState::kInUse);
      EXPECT_EQ(g_heap.arenas.SpanOf(Addr(v.p)), r.span);
      EXPECT_EQ(g_heap.arenas.SpanOfHeap(Addr(v.p) + size - 1), r.span);
      EXPECT_EQ((Addr(v.p) - r.span->start) % size, 0U);
      ExpectEveryOffset(v.p, size, Addr(v.p), v.name);
      // The byte after the object is another object (or none), never this one.
      EXPECT_NE(FindObject(static_cast<char*>(v.p) + size).base, Addr(v.p));
      EXPECT_NE(FindObject(static_cast<char*>(v.p) - 1).base, Addr(v.p));
    }
    // The public entry points pad by one byte: n = size - 1 lands in class c.
    if (size >= 16) {
      void* a = gofin::Alloc(size - 1);
      void* b = gofin::AllocNoScan(size - 1);
      for (void* p : {a, b}) {
        const ObjectRef r = FindObject(p);
        ASSERT_NE(r.span, nullptr);
        EXPECT_EQ(r.base, Addr(p));
        EXPECT_EQ(r.span->spanclass.SizeClass(), c) << "size " << size;
        EXPECT_EQ(r.span->spanclass.NoScan(), p == b);
        ExpectEveryOffset(p, size, Addr(p), p == a ? "Alloc" : "AllocNoScan");
      }
    }
  }
}

TEST_F(ArenaTest, UnallocatedSlotIsNoObject) {
  // 27264-byte objects: three to a 10-page span, so a fresh span has free slots.
  const std::size_t c = 65;
  ASSERT_EQ(kClassToSize[c], 27264);
  std::size_t checked = 0;
  for (int i = 0; i < 4 && checked == 0; ++i) {
    void* p = gofin::detail::Malloc(kClassToSize[c], 0, nullptr, 0);
    const ObjectRef r = FindObject(p);
    ASSERT_NE(r.span, nullptr);
    Span* s = r.span;
    for (std::size_t k = 0; k < s->nelems; ++k) {
      if (s->IsAllocated(k)) continue;
      ++checked;
      const std::uintptr_t slot = s->ObjBase(k);
      EXPECT_EQ(FindObject(reinterpret_cast<void*>(slot)).span, nullptr) << "slot " << k;
      EXPECT_EQ(FindObject(reinterpret_cast<void*>(slot + 100)).span, nullptr) << "slot " << k;
      // The span still covers it: it is the allocation bits that say "free".
      EXPECT_EQ(g_heap.arenas.SpanOfHeap(slot), s);
    }
  }
  EXPECT_GT(checked, 0U);
}

TEST_F(ArenaTest, TailWasteOfASpanIsNoObject) {
  // 24-byte objects: 341 to a page, the last 8 bytes of the page belong to no object.
  void* p = gofin::detail::Malloc(24, 0, nullptr, 0);
  const ObjectRef r = FindObject(p);
  ASSERT_NE(r.span, nullptr);
  ASSERT_EQ(r.span->nelems, 341U);
  const std::uintptr_t tail = r.span->start + 341 * 24;
  EXPECT_EQ(r.span->limit, tail);
  EXPECT_EQ(FindObject(reinterpret_cast<void*>(tail)).span, nullptr);
  EXPECT_EQ(FindObject(reinterpret_cast<void*>(tail + 7)).span, nullptr);
}

TEST_F(ArenaTest, TinyObjectsMapToTheirBlock) {
  for (int i = 0; i < 200; ++i) {
    char* p = static_cast<char*>(gofin::AllocNoScan(static_cast<std::size_t>(i % 8)));
    const ObjectRef r = FindObject(p);
    ASSERT_NE(r.span, nullptr);
    EXPECT_EQ(r.span->spanclass.value, kTinySpanClass.value);
    EXPECT_EQ(r.base % 16, 0U);
    EXPECT_LE(r.base, Addr(p));
    EXPECT_LT(Addr(p), r.base + 16);
    // One past the end (the padding byte) is still in the block.
    EXPECT_EQ(FindObject(p + i % 8).base, r.base);
  }
}

TEST_F(ArenaTest, OnePastTheEndStaysInside) {
  std::vector<std::size_t> sizes;
  for (std::size_t n = 0; n <= 4200; ++n) sizes.push_back(n);
  for (std::size_t c = 1; c < kNumSizeClasses; ++c) {
    for (std::size_t d : {0, 1, 2}) {
      if (kClassToSize[c] >= d) sizes.push_back(kClassToSize[c] - d);
    }
  }
  for (std::size_t n : {std::size_t{40000}, std::size_t{65536}, std::size_t{100000}}) {
    sizes.push_back(n);
  }
  for (std::size_t n : sizes) {
    char* a = static_cast<char*>(gofin::Alloc(n));
    const ObjectRef ra = FindObject(a);
    ASSERT_NE(ra.span, nullptr) << n;
    ASSERT_EQ(ra.base, Addr(a)) << "Alloc(" << n << ") is an object of its own";
    ASSERT_EQ(FindObject(a + n).base, Addr(a)) << "Alloc(" << n << ") end";
    ASSERT_GE(ra.span->elemsize, n + 1) << n;

    char* b = static_cast<char*>(gofin::AllocNoScan(n));
    const ObjectRef rb = FindObject(b);
    ASSERT_NE(rb.span, nullptr) << n;
    ASSERT_EQ(FindObject(b + n).base, rb.base) << "AllocNoScan(" << n << ") end";
    if (n + 1 >= 16) {
      ASSERT_EQ(rb.base, Addr(b)) << n;
    }
  }
  for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{3}, std::size_t{100},
                        std::size_t{1000}, std::size_t{8191}, std::size_t{10000}}) {
    long* arr = gofin::NewArray<long>(n);
    ASSERT_EQ(FindObject(arr + n).base, FindObject(arr).base) << "NewArray<long>(" << n << ")";
    int* buf = gofin::Allocator<int>().allocate(n == 0 ? 1 : n);
    ASSERT_EQ(FindObject(buf + (n == 0 ? 1 : n)).base, FindObject(buf).base)
        << "Allocator<int>::allocate(" << n << ")";
  }
}

TEST_F(ArenaTest, LargeObjectsEveryOffset) {
  struct Case {
    const char* name;
    std::size_t bytes;
    void* p;
  };
  const Case cases[] = {
      {"Alloc(32768)", 32768, gofin::Alloc(32768)},  // 32769 bytes: the first large size
      {"Alloc(100 KiB)", 100 * 1024, gofin::Alloc(100 * 1024)},
      {"AllocNoScan(1 MiB)", 1 << 20, gofin::AllocNoScan(1 << 20)},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const ObjectRef r = FindObject(c.p);
    ASSERT_NE(r.span, nullptr);
    EXPECT_TRUE(r.span->large);
    EXPECT_EQ(r.index, 0U);
    EXPECT_EQ(r.base, Addr(c.p));
    EXPECT_EQ(Addr(c.p) % kPageSize, 0U);
    EXPECT_EQ(r.span->start, Addr(c.p));
    EXPECT_EQ(r.span->npages, (c.bytes + 1 + kPageSize - 1) / kPageSize);
    EXPECT_EQ(r.span->spanclass.SizeClass(), 0U);
    // Every byte of the span, the padding byte and the page tail included.
    ExpectEveryOffset(c.p, r.span->npages * kPageSize, Addr(c.p), c.name);
    const ObjectRef after = FindObject(static_cast<char*>(c.p) + r.span->npages * kPageSize);
    EXPECT_NE(after.base, Addr(c.p));
    EXPECT_NE(FindObject(static_cast<char*>(c.p) - 1).base, Addr(c.p));
  }
}

}  // namespace
