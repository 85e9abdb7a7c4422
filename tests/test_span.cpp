// Span records (Go: mspan, mbitmap.go nextFreeIndex / refillAllocCache / isFree, mcache
// nextFreeFast, mark bits). Every span here describes a test-local page-aligned buffer and is
// never handed to the page heap.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "heap/size_classes.hpp"
#include "heap/span.hpp"
#include "heap/thread_cache.hpp"

namespace {

using gofin::internal::DtorSlot;
using gofin::internal::kBitmapBytes;
using gofin::internal::kClassToDivMagic;
using gofin::internal::kClassToPages;
using gofin::internal::kClassToSize;
using gofin::internal::kNumSizeClasses;
using gofin::internal::kPageSize;
using gofin::internal::NextFreeFast;
using gofin::internal::Span;
using gofin::internal::SpanClass;
using gofin::internal::SpanList;

// Page-aligned memory for a span to describe.
class PageBuffer {
 public:
  explicit PageBuffer(std::size_t pages)
      : p_(static_cast<char*>(std::aligned_alloc(kPageSize, pages * kPageSize))) {}
  ~PageBuffer() { std::free(p_); }
  PageBuffer(const PageBuffer&) = delete;
  PageBuffer& operator=(const PageBuffer&) = delete;
  [[nodiscard]] std::uintptr_t base() const { return reinterpret_cast<std::uintptr_t>(p_); }

 private:
  char* p_;
};

struct TestSpan {
  explicit TestSpan(std::size_t sizeclass, bool noscan = false)
      : buf(kClassToPages[sizeclass]), span(std::make_unique<Span>()) {
    span->InitSmall(buf.base(), kClassToPages[sizeclass],
                    SpanClass::Make(sizeclass, noscan, false));
  }
  PageBuffer buf;
  std::unique_ptr<Span> span;
};

void SetAllocBit(Span& s, std::size_t i) {
  s.alloc_bits[i / 8] |= static_cast<std::uint8_t>(1U << (i % 8));
}

// Puts s into the state a cached span has after sweeping: allocation bits from `allocated`,
// freeindex at `from`, and the allocCache loaded the way mcentral.cacheSpan does.
void LoadPattern(Span& s, const std::vector<bool>& allocated, std::uint32_t from) {
  s.ResetBitmaps();
  std::uint32_t count = 0;
  for (std::size_t i = 0; i < allocated.size(); ++i) {
    if (allocated[i]) {
      SetAllocBit(s, i);
      ++count;
    }
  }
  s.freeindex = from;
  s.alloc_count = count;
  s.RefillAllocCache((from & ~63U) / 8);
  const std::uint32_t shift = from % 64;
  if (shift != 0) s.alloc_cache >>= shift;
}

std::vector<std::uint32_t> ExpectedFree(const std::vector<bool>& allocated, std::uint32_t from) {
  std::vector<std::uint32_t> out;
  for (std::uint32_t i = from; i < allocated.size(); ++i) {
    if (!allocated[i]) out.push_back(i);
  }
  return out;
}

// Named allocation-bit patterns for a span of n objects.
std::vector<std::pair<const char*, std::vector<bool>>> Patterns(std::size_t n) {
  std::vector<std::pair<const char*, std::vector<bool>>> out;
  out.emplace_back("empty", std::vector<bool>(n, false));
  out.emplace_back("full", std::vector<bool>(n, true));
  {
    std::vector<bool> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = i % 3 != 1;
    out.emplace_back("every-third-free", v);
  }
  {
    std::vector<bool> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = i < 64;
    out.emplace_back("first-word-full", v);
  }
  {
    std::vector<bool> v(n, true);
    for (std::size_t i : {std::size_t{63}, std::size_t{64}, std::size_t{127}, std::size_t{128},
                          std::size_t{511}, std::size_t{512}, n - 1}) {
      if (i < n) v[i] = false;
    }
    out.emplace_back("word-boundaries-free", v);
  }
  {
    std::vector<bool> v(n, true);
    v[n - 1] = false;
    out.emplace_back("only-last-free", v);
  }
  {
    std::vector<bool> v(n, true);
    v[0] = false;
    out.emplace_back("only-first-free", v);
  }
  std::mt19937 rng(12345 + static_cast<unsigned>(n));
  for (double p : {0.5, 0.95}) {
    std::bernoulli_distribution d(p);
    std::vector<bool> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = d(rng);
    out.emplace_back(p < 0.9 ? "random-50" : "random-95", v);
  }
  return out;
}

std::vector<std::uint32_t> StartPoints(std::uint32_t n) {
  std::vector<std::uint32_t> out;
  for (std::uint32_t k : {0U, 1U, 63U, 64U, 65U, 128U, n / 2, n - 1}) {
    if (k < n && std::find(out.begin(), out.end(), k) == out.end()) out.push_back(k);
  }
  return out;
}

TEST(Span, InitSmallEveryClass) {
  for (std::size_t c = 1; c < kNumSizeClasses; ++c) {
    TestSpan t(c, c % 2 == 0);
    Span& s = *t.span;
    const std::size_t pages = kClassToPages[c];
    EXPECT_EQ(s.start, t.buf.base());
    EXPECT_EQ(s.npages, pages);
    EXPECT_FALSE(s.large);
    EXPECT_EQ(s.elemsize, kClassToSize[c]);
    EXPECT_EQ(s.nelems, pages * kPageSize / kClassToSize[c]);
    EXPECT_EQ(s.divmagic, kClassToDivMagic[c]);
    EXPECT_EQ(s.limit, s.start + s.nelems * s.elemsize);
    EXPECT_LE(s.limit, s.start + pages * kPageSize);
    EXPECT_EQ(s.spanclass.SizeClass(), c);
    EXPECT_EQ(s.spanclass.NoScan(), c % 2 == 0);
    EXPECT_EQ(s.freeindex, 0U);
    EXPECT_EQ(s.alloc_count, 0U);
    EXPECT_EQ(s.alloc_cache, ~std::uint64_t{0});
    EXPECT_NE(s.alloc_bits, s.mark_bits);
    EXPECT_EQ(s.dtors, nullptr);
    for (std::size_t i = 0; i < kBitmapBytes + 8; ++i) {
      ASSERT_EQ(s.alloc_bits[i], 0) << "class " << c;
      ASSERT_EQ(s.mark_bits[i], 0) << "class " << c;
    }
    EXPECT_TRUE(s.Contains(s.start));
    EXPECT_TRUE(s.Contains(s.limit - 1));
    EXPECT_FALSE(s.Contains(s.limit));
    EXPECT_FALSE(s.Contains(s.start - 1));
  }
}

TEST(Span, ContainsExcludesTailWaste) {
  TestSpan t(3);  // 24-byte objects: 341 per page, 8 bytes of tail
  Span& s = *t.span;
  ASSERT_EQ(s.nelems, 341U);
  EXPECT_EQ(s.limit, s.start + 8184);
  EXPECT_TRUE(s.Contains(s.start + 8183));
  EXPECT_FALSE(s.Contains(s.start + 8184));
  EXPECT_FALSE(s.Contains(s.start + 8191));
}

TEST(Span, InitLarge) {
  PageBuffer buf(5);
  auto s = std::make_unique<Span>();
  s->InitLarge(buf.base(), 5, SpanClass::Make(0, true, true));
  EXPECT_TRUE(s->large);
  EXPECT_EQ(s->npages, 5U);
  EXPECT_EQ(s->elemsize, 5 * kPageSize);
  EXPECT_EQ(s->nelems, 1U);
  EXPECT_EQ(s->limit, buf.base() + 5 * kPageSize);
  EXPECT_TRUE(s->spanclass.NoScan());
  EXPECT_TRUE(s->spanclass.HasDtor());
  EXPECT_EQ(s->spanclass.SizeClass(), 0U);
  for (std::size_t off = 0; off < 5 * kPageSize; off += 8) {
    ASSERT_EQ(s->ObjIndex(buf.base() + off), 0U) << off;
  }
  EXPECT_EQ(s->ObjBase(0), buf.base());
  EXPECT_EQ(s->DtorFor(0), &s->large_dtor);
}

TEST(Span, ObjIndexEveryOffsetEveryClass) {
  for (std::size_t c = 1; c < kNumSizeClasses; ++c) {
    TestSpan t(c);
    Span& s = *t.span;
    const std::size_t bytes = s.nelems * s.elemsize;
    std::size_t bad = 0;
    for (std::size_t off = 0; off < bytes; ++off) {
      const std::size_t idx = s.ObjIndex(s.start + off);
      if (idx != off / s.elemsize || s.ObjBase(idx) > s.start + off ||
          s.ObjBase(idx) + s.elemsize <= s.start + off) {
        ++bad;
      }
    }
    EXPECT_EQ(bad, 0U) << "class " << c;
    EXPECT_EQ(s.ObjBase(s.nelems - 1) + s.elemsize, s.limit) << "class " << c;
  }
}

TEST(Span, NextFreeIndexFreshSpanWalksEveryObject) {
  for (std::size_t c = 1; c < kNumSizeClasses; ++c) {
    TestSpan t(c);
    Span& s = *t.span;
    for (std::uint32_t i = 0; i < s.nelems; ++i) {
      ASSERT_EQ(s.NextFreeIndex(), i) << "class " << c;
      ASSERT_EQ(s.freeindex, i + 1) << "class " << c;
    }
    EXPECT_EQ(s.NextFreeIndex(), s.nelems) << "class " << c;
    EXPECT_EQ(s.NextFreeIndex(), s.nelems) << "class " << c;
    EXPECT_EQ(s.freeindex, s.nelems);
    for (std::uint32_t i = 0; i < s.nelems; ++i) ASSERT_TRUE(s.IsAllocated(i));
  }
}

TEST(Span, NextFreeIndexFollowsAllocBits) {
  for (std::size_t c = 1; c < kNumSizeClasses; ++c) {
    TestSpan t(c);
    Span& s = *t.span;
    for (const auto& [name, pattern] : Patterns(s.nelems)) {
      for (std::uint32_t from : StartPoints(s.nelems)) {
        LoadPattern(s, pattern, from);
        // Before walking, IsAllocated reports the bits above freeindex.
        for (std::uint32_t i = from; i < s.nelems; ++i) {
          ASSERT_EQ(s.IsAllocated(i), static_cast<bool>(pattern[i]))
              << "class " << c << " " << name << " i " << i;
        }
        const std::vector<std::uint32_t> want = ExpectedFree(pattern, from);
        std::vector<std::uint32_t> got;
        for (;;) {
          const std::uint32_t idx = s.NextFreeIndex();
          if (idx == s.nelems) break;
          got.push_back(idx);
          ASSERT_LE(got.size(), s.nelems) << "class " << c << " " << name << ": runaway walk";
        }
        ASSERT_EQ(got, want) << "class " << c << " pattern " << name << " from " << from;
        EXPECT_EQ(s.freeindex, s.nelems);
        EXPECT_EQ(s.NextFreeIndex(), s.nelems);
        for (std::uint32_t i = 0; i < s.nelems; ++i) ASSERT_TRUE(s.IsAllocated(i));
      }
    }
  }
}

// The allocation fast path (nextFreeFast) with the slow path (nextFreeIndex) as fallback,
// exactly as mallocgc combines them, hands out every free object once, in order.
TEST(Span, NextFreeFastWithSlowFallback) {
  for (std::size_t c = 1; c < kNumSizeClasses; ++c) {
    TestSpan t(c);
    Span& s = *t.span;
    for (const auto& [name, pattern] : Patterns(s.nelems)) {
      for (std::uint32_t from : StartPoints(s.nelems)) {
        LoadPattern(s, pattern, from);
        const std::uint32_t count0 = s.alloc_count;
        const std::vector<std::uint32_t> want = ExpectedFree(pattern, from);
        std::vector<std::uint32_t> got;
        std::size_t fast = 0;
        for (;;) {
          std::uintptr_t v = NextFreeFast(&s);
          std::uint32_t idx = 0;
          if (v != 0) {
            ++fast;
            ASSERT_EQ((v - s.start) % s.elemsize, 0U);
            idx = static_cast<std::uint32_t>((v - s.start) / s.elemsize);
            ASSERT_EQ(s.freeindex, idx + 1);
          } else {
            idx = s.NextFreeIndex();
            if (idx == s.nelems) break;
            ++s.alloc_count;
          }
          ASSERT_LT(idx, s.nelems);
          got.push_back(idx);
          ASSERT_LE(got.size(), s.nelems) << "runaway";
        }
        ASSERT_EQ(got, want) << "class " << c << " pattern " << name << " from " << from;
        EXPECT_EQ(s.alloc_count, count0 + want.size()) << "class " << c << " " << name;
        EXPECT_EQ(NextFreeFast(&s), 0U);
        // With more than one free object per 64-bit word, the fast path did most of the work.
        if (std::string(name) == "empty" && want.size() >= 128) {
          EXPECT_GT(fast, want.size() / 2) << "class " << c;
        }
      }
    }
  }
}

TEST(Span, NextFreeFastStopsAtWordBoundary) {
  TestSpan t(1);  // 8-byte objects, 1024 per span
  Span& s = *t.span;
  for (std::uint32_t i = 0; i < 63; ++i) {
    ASSERT_EQ(NextFreeFast(&s), s.start + i * 8) << i;
  }
  EXPECT_EQ(s.alloc_count, 63U);
  // Object 63 would leave freeindex at a word boundary with the cache needing a refill:
  // Go's nextFreeFast declines and the slow path takes it.
  EXPECT_EQ(NextFreeFast(&s), 0U);
  EXPECT_EQ(s.freeindex, 63U);
  EXPECT_EQ(s.NextFreeIndex(), 63U);
  EXPECT_EQ(s.freeindex, 64U);
  EXPECT_EQ(NextFreeFast(&s), s.start + 64 * 8);
}

TEST(Span, NextFreeFastOnFullAndEmptySpan) {
  EXPECT_EQ(NextFreeFast(&gofin::internal::g_empty_span), 0U);
  EXPECT_EQ(gofin::internal::g_empty_span.NextFreeIndex(), gofin::internal::g_empty_span.nelems);

  TestSpan t(67);  // one 32 KiB object
  Span& s = *t.span;
  ASSERT_EQ(s.nelems, 1U);
  EXPECT_EQ(NextFreeFast(&s), s.start);
  EXPECT_EQ(NextFreeFast(&s), 0U);
  EXPECT_EQ(s.NextFreeIndex(), 1U);
}

TEST(Span, IsAllocatedBelowFreeIndex) {
  TestSpan t(5);  // 48-byte objects, 170 per span
  Span& s = *t.span;
  for (std::uint32_t i = 0; i < s.nelems; ++i) ASSERT_FALSE(s.IsAllocated(i));
  for (int i = 0; i < 100; ++i) s.NextFreeIndex();
  for (std::uint32_t i = 0; i < s.nelems; ++i) ASSERT_EQ(s.IsAllocated(i), i < 100) << i;
  SetAllocBit(s, 150);
  EXPECT_TRUE(s.IsAllocated(150));
  EXPECT_FALSE(s.IsAllocated(149));
  EXPECT_FALSE(s.IsAllocated(151));
}

TEST(Span, TryMarkAndIsMarked) {
  TestSpan t(1);
  Span& s = *t.span;
  for (std::uint32_t i = 0; i < s.nelems; ++i) ASSERT_FALSE(s.IsMarked(i));
  EXPECT_TRUE(s.TryMark(5));
  EXPECT_FALSE(s.TryMark(5));
  EXPECT_TRUE(s.IsMarked(5));
  EXPECT_FALSE(s.IsMarked(4));
  EXPECT_FALSE(s.IsMarked(6));
  for (std::uint32_t i = 0; i < s.nelems; i += 2) s.TryMark(i);
  for (std::uint32_t i = 0; i < s.nelems; ++i) {
    ASSERT_EQ(s.IsMarked(i), i % 2 == 0 || i == 5) << i;
  }
  // Marking never touches the allocation bits.
  for (std::size_t i = 0; i < kBitmapBytes + 8; ++i) ASSERT_EQ(s.alloc_bits[i], 0);
  s.SetMarkNonAtomic(1023);
  EXPECT_TRUE(s.IsMarked(1023));
  EXPECT_FALSE(s.TryMark(1023));
  s.ResetBitmaps();
  for (std::uint32_t i = 0; i < s.nelems; ++i) ASSERT_FALSE(s.IsMarked(i));
}

TEST(Span, TryMarkConcurrentExactlyOneWinner) {
  TestSpan t(1);
  Span& s = *t.span;
  constexpr int kThreads = 4;
  std::vector<std::atomic<int>> wins(s.nelems);
  std::vector<std::thread> threads;
  for (int th = 0; th < kThreads; ++th) {
    threads.emplace_back([&, th] {
      for (int round = 0; round < 50; ++round) {
        for (std::uint32_t k = 0; k < s.nelems; ++k) {
          // Different orders per thread, so neighbours in one byte race.
          const std::uint32_t i = (th % 2 == 0) ? k : s.nelems - 1 - k;
          if (s.TryMark(i)) wins[i].fetch_add(1);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  for (std::uint32_t i = 0; i < s.nelems; ++i) {
    ASSERT_EQ(wins[i].load(), 1) << i;
    ASSERT_TRUE(s.IsMarked(i)) << i;
  }
}

// Sweep's bitmap swap: the mark bits become the allocation bits, so only unmarked objects are
// handed out again.
TEST(Span, MarkBitsBecomeAllocBitsAfterSwap) {
  TestSpan t(4);  // 32-byte objects, 256 per span
  Span& s = *t.span;
  while (s.NextFreeIndex() != s.nelems) {
  }
  std::vector<bool> live(s.nelems);
  for (std::uint32_t i = 0; i < s.nelems; ++i) {
    live[i] = (i * 7) % 5 == 0 || (i >= 100 && i < 140);
    if (live[i]) {
      EXPECT_TRUE(s.TryMark(i));
    }
  }
  std::swap(s.alloc_bits, s.mark_bits);
  std::memset(s.mark_bits, 0, kBitmapBytes + 8);
  s.freeindex = 0;
  s.RefillAllocCache(0);
  std::vector<std::uint32_t> got;
  for (std::uint32_t idx = s.NextFreeIndex(); idx != s.nelems; idx = s.NextFreeIndex()) {
    got.push_back(idx);
  }
  EXPECT_EQ(got, ExpectedFree(live, 0));
}

TEST(Span, DtorFor) {
  TestSpan t(6);
  Span& s = *t.span;
  EXPECT_EQ(s.DtorFor(0), nullptr);
  std::vector<DtorSlot> table(s.nelems);
  s.dtors = table.data();
  EXPECT_EQ(s.DtorFor(0), &table[0]);
  EXPECT_EQ(s.DtorFor(s.nelems - 1), &table[s.nelems - 1]);
  s.ResetBitmaps();
  EXPECT_EQ(s.dtors, nullptr);
}

// Allocation runs (gofin: ThreadCache::runs). A run is every free object from the next free one
// to the end of its 64-object allocCache word; handing out objects from runs must visit exactly
// the free objects the bitmap walk visits, freeindex must say exactly which objects were handed
// out, and giving a run's tail back must leave the span as if those objects had never been
// claimed.

// Takes a run and hands out n of its objects as the thread cache does (freeindex follows).
std::uint32_t TakeRun(Span& s, std::uint32_t& count, std::uint32_t n = ~0U) {
  const std::uint32_t first = s.NextFreeRun(count);
  if (first == s.nelems) return first;
  EXPECT_EQ(s.freeindex, first + 1);  // the first object is handed out at once
  for (std::uint32_t k = 1; k < std::min(n, count); ++k) s.SetFreeIndex(s.freeindex + 1);
  return first;
}

TEST(Span, NextFreeRunClaimsFreeObjectsUpToTheWordEnd) {
  TestSpan t(2);  // 16-byte objects, 512 per span
  Span& s = *t.span;
  ASSERT_EQ(s.nelems, 512U);
  std::vector<bool> allocated(s.nelems, false);
  allocated[3] = allocated[4] = allocated[70] = true;
  LoadPattern(s, allocated, 0);
  std::uint32_t count = 0;
  EXPECT_EQ(TakeRun(s, count), 0U);
  EXPECT_EQ(count, 3U);  // 0, 1, 2: object 3 is allocated
  EXPECT_EQ(s.freeindex, 3U);
  EXPECT_EQ(TakeRun(s, count), 5U);
  EXPECT_EQ(count, 59U);  // 5..63: the run ends with the word
  EXPECT_EQ(s.freeindex, 64U);
  EXPECT_EQ(TakeRun(s, count), 64U);
  EXPECT_EQ(count, 6U);  // 64..69
  EXPECT_EQ(s.alloc_count, 3U + 3U + 59U + 6U);
}

TEST(Span, NextFreeRunSpansWhollyFreeWords) {
  TestSpan t(2);
  Span& s = *t.span;
  LoadPattern(s, std::vector<bool>(s.nelems, false), 0);
  std::uint32_t count = 0;
  EXPECT_EQ(TakeRun(s, count), 0U);
  EXPECT_EQ(count, 512U);  // an empty span is one run
  EXPECT_EQ(TakeRun(s, count), 512U);
  // Free words after a partly allocated one: the run goes on while whole words are free.
  std::vector<bool> allocated(s.nelems, false);
  allocated[200] = allocated[300] = true;
  LoadPattern(s, allocated, 0);
  EXPECT_EQ(TakeRun(s, count), 0U);
  EXPECT_EQ(count, 192U);  // words 0..2 whole; word 3 holds object 200
  EXPECT_EQ(TakeRun(s, count), 192U);
  EXPECT_EQ(count, 8U);
  EXPECT_EQ(TakeRun(s, count), 201U);
  EXPECT_EQ(count, 55U);  // 201..255: word 4 holds object 300
  EXPECT_EQ(TakeRun(s, count), 256U);
  EXPECT_EQ(count, 44U);
  EXPECT_EQ(TakeRun(s, count), 301U);
  EXPECT_EQ(count, 211U);  // 301..319, then words 5..7 whole
  EXPECT_EQ(TakeRun(s, count), 512U);
  // A class whose last word is partial (24-byte objects: 341 per span).
  TestSpan t24(3);
  Span& s24 = *t24.span;
  ASSERT_EQ(s24.nelems, 341U);
  LoadPattern(s24, std::vector<bool>(s24.nelems, false), 0);
  EXPECT_EQ(TakeRun(s24, count), 0U);
  EXPECT_EQ(count, 341U);
  EXPECT_EQ(TakeRun(s24, count), 341U);
}

TEST(Span, FreeIndexSaysExactlyWhatARunHandedOut) {
  TestSpan t(2);
  Span& s = *t.span;
  LoadPattern(s, std::vector<bool>(s.nelems, false), 0);
  std::uint32_t count = 0;
  ASSERT_EQ(TakeRun(s, count, 5), 0U);
  ASSERT_EQ(count, 512U);
  for (std::size_t i = 0; i < 5; ++i) EXPECT_TRUE(s.IsAllocatedFromAnyThread(i)) << i;
  for (std::size_t i = 5; i < 512; ++i) EXPECT_FALSE(s.IsAllocatedFromAnyThread(i)) << i;
}

TEST(Span, RunsVisitExactlyTheFreeObjects) {
  std::mt19937 rng(7);
  for (std::size_t sizeclass : {std::size_t{1}, std::size_t{2}, std::size_t{5}, std::size_t{30}}) {
    TestSpan t(sizeclass);
    Span& s = *t.span;
    for (int round = 0; round < 20; ++round) {
      std::vector<bool> allocated(s.nelems);
      for (std::size_t i = 0; i < s.nelems; ++i) allocated[i] = rng() % 3 == 0;
      LoadPattern(s, allocated, 0);
      std::vector<bool> seen(s.nelems, false);
      for (;;) {
        std::uint32_t count = 0;
        const std::uint32_t first = TakeRun(s, count);
        if (first == s.nelems) break;
        ASSERT_GE(count, 1U);
        for (std::uint32_t k = first; k < first + count; ++k) {
          ASSERT_LT(k, s.nelems);
          ASSERT_FALSE(allocated[k]) << "class " << sizeclass << " object " << k;
          ASSERT_FALSE(seen[k]);
          seen[k] = true;
        }
      }
      for (std::size_t i = 0; i < s.nelems; ++i) ASSERT_EQ(seen[i], !allocated[i]) << i;
      EXPECT_EQ(s.alloc_count, s.nelems);
    }
  }
}

TEST(Span, ReturnRunTailUndoesTheUnusedPartOfARun) {
  TestSpan t(2);
  Span& s = *t.span;
  std::vector<bool> allocated(s.nelems, false);
  allocated[10] = allocated[100] = true;
  LoadPattern(s, allocated, 0);
  std::uint32_t count = 0;
  ASSERT_EQ(TakeRun(s, count), 0U);
  ASSERT_EQ(TakeRun(s, count, 2), 11U);  // 11..63, two of them handed out
  s.ReturnRunTail(64);
  EXPECT_EQ(s.freeindex, 13U);
  EXPECT_EQ(s.alloc_count, 2U + 10U + 2U);
  EXPECT_FALSE(s.IsAllocated(13));
  EXPECT_TRUE(s.IsAllocated(12));
  // The walk resumes where the run was cut: the same free objects, in the same order.
  std::vector<std::uint32_t> order;
  for (std::uint32_t i = s.NextFreeIndex(); i != s.nelems; i = s.NextFreeIndex()) {
    order.push_back(i);
  }
  ASSERT_FALSE(order.empty());
  EXPECT_EQ(order.front(), 13U);
  EXPECT_EQ(std::count(order.begin(), order.end(), 100U), 0);
  EXPECT_EQ(order.size(), s.nelems - 13U - 1U);
  // A run given back whole at a word boundary resumes there too.
  LoadPattern(s, allocated, 0);
  ASSERT_EQ(TakeRun(s, count), 0U);
  ASSERT_EQ(TakeRun(s, count), 11U);
  ASSERT_EQ(TakeRun(s, count, 1), 64U);  // 64..99, only 64 handed out
  s.ReturnRunTail(100);
  EXPECT_EQ(s.NextFreeIndex(), 65U);
}

TEST(SpanList, PushRemovePop) {
  Span a;
  Span b;
  Span c;
  SpanList list;
  EXPECT_TRUE(list.Empty());
  list.PushFront(&a);
  list.PushFront(&b);
  list.PushFront(&c);  // c b a
  EXPECT_EQ(list.count, 3U);
  EXPECT_EQ(list.first, &c);
  EXPECT_EQ(a.list, &list);
  list.Remove(&b);  // c a
  EXPECT_EQ(b.list, nullptr);
  EXPECT_EQ(b.next, nullptr);
  EXPECT_EQ(b.prev, nullptr);
  EXPECT_EQ(c.next, &a);
  EXPECT_EQ(a.prev, &c);
  EXPECT_EQ(list.count, 2U);
  EXPECT_EQ(list.PopFront(), &c);
  EXPECT_EQ(a.prev, nullptr);
  EXPECT_EQ(list.PopFront(), &a);
  EXPECT_EQ(list.PopFront(), nullptr);
  EXPECT_TRUE(list.Empty());
  EXPECT_EQ(list.count, 0U);
}

}  // namespace
