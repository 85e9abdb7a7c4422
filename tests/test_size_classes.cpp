// Size-class table invariants (Go: mksizeclasses.go, sizeclasses.go, msize.go).
//
// The table in heap/size_classes.hpp is Go's. These tests re-derive it with Go's generator
// (makeClasses in runtime/mksizeclasses.go), and check the properties the allocator and the
// collector rely on: alignment, waste bounds, size -> class lookup and the division magic.
#include <gtest/gtest.h>

#include <bit>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "heap/size_classes.hpp"
#include "heap/span.hpp"

namespace {

using gofin::internal::ClassObjects;
using gofin::internal::kClassToDivMagic;
using gofin::internal::kClassToPages;
using gofin::internal::kClassToSize;
using gofin::internal::kLargeSizeDiv;
using gofin::internal::kMaxSmallSize;
using gofin::internal::kNumSizeClasses;
using gofin::internal::kPageSize;
using gofin::internal::SizeToClass;
using gofin::internal::SpanClass;

struct GoClass {
  std::size_t size;
  std::size_t npages;
};

// A transcription of Go's makeClasses (runtime/mksizeclasses.go, minHeapAlign = 8,
// pageSize = 8192, maxSmallSize = 32768, largeSizeDiv = 128).
std::vector<GoClass> GoMakeClasses() {
  auto pow2 = [](std::size_t x) { return x != 0 && (x & (x - 1)) == 0; };
  std::vector<GoClass> classes;
  classes.push_back({0, 0});
  std::size_t align = 8;
  for (std::size_t size = align; size <= 32768; size += align) {
    if (pow2(size)) {
      if (size >= 2048) {
        align = 256;
      } else if (size >= 128) {
        align = size / 8;
      } else if (size >= 32) {
        align = 16;
      }
    }
    std::size_t allocsize = 8192;
    while (allocsize % size > allocsize / 8) allocsize += 8192;
    const std::size_t npages = allocsize / 8192;
    if (classes.size() > 1 && npages == classes.back().npages &&
        allocsize / size == allocsize / classes.back().size) {
      classes.back().size = size;
      continue;
    }
    classes.push_back({size, npages});
  }
  for (std::size_t i = 1; i < classes.size(); ++i) {
    GoClass& c = classes[i];
    const std::size_t psize = c.npages * 8192;
    const std::size_t new_size = (psize / (psize / c.size)) & ~std::size_t{128 - 1};
    if (new_size > c.size) c.size = new_size;
  }
  return classes;
}

TEST(SizeClasses, Constants) {
  EXPECT_EQ(kNumSizeClasses, 68U);
  EXPECT_EQ(kPageSize, 8192U);
  EXPECT_EQ(kMaxSmallSize, 32768U);
  EXPECT_EQ(gofin::internal::kTinySize, 16U);
  EXPECT_EQ(kClassToSize.size(), kNumSizeClasses);
  EXPECT_EQ(kClassToPages.size(), kNumSizeClasses);
  EXPECT_EQ(kClassToDivMagic.size(), kNumSizeClasses);
  EXPECT_EQ(kClassToSize[0], 0);
  EXPECT_EQ(kClassToPages[0], 0);
  EXPECT_EQ(kClassToSize[1], 8);
  EXPECT_EQ(kClassToSize[2], 16);  // the tiny allocator's block class
  EXPECT_EQ(kClassToSize[kNumSizeClasses - 1], kMaxSmallSize);
}

TEST(SizeClasses, MatchesGoGenerator) {
  const std::vector<GoClass> go = GoMakeClasses();
  ASSERT_EQ(go.size(), kNumSizeClasses);
  for (std::size_t c = 0; c < kNumSizeClasses; ++c) {
    EXPECT_EQ(kClassToSize[c], go[c].size) << "class " << c;
    EXPECT_EQ(kClassToPages[c], go[c].npages) << "class " << c;
  }
}

TEST(SizeClasses, StrictlyIncreasing) {
  for (std::size_t c = 1; c < kNumSizeClasses; ++c) {
    EXPECT_LT(kClassToSize[c - 1], kClassToSize[c]) << "class " << c;
  }
}

TEST(SizeClasses, Alignment) {
  for (std::size_t c = 1; c < kNumSizeClasses; ++c) {
    const std::size_t size = kClassToSize[c];
    EXPECT_EQ(size % 8, 0U) << "class " << c << " size " << size;
    // Go: "heap bitmaps assume 16 byte alignment for allocations >= 32 bytes".
    if (size >= 32) {
      EXPECT_EQ(size % 16, 0U) << "class " << c << " size " << size;
    }
    // Up to 1 KiB, sizes in (P, 2P] (P >= 128 a power of two) are multiples of P/8.
    if (size > 128 && size <= 1024) {
      const std::size_t p = std::bit_floor(size - 1);
      EXPECT_EQ(size % (p / 8), 0U) << "class " << c << " size " << size;
    }
    // Above 1 KiB every size is a multiple of largeSizeDiv, or size_to_class128 breaks.
    if (size > 1024) {
      EXPECT_EQ(size % kLargeSizeDiv, 0U) << "class " << c << " size " << size;
    }
    // Power-of-two sizes: every object of the span is naturally aligned (span bases are
    // page-aligned, and the size divides the span).
    if (std::has_single_bit(size)) {
      const std::size_t span_bytes = kClassToPages[c] * kPageSize;
      EXPECT_EQ(span_bytes % size, 0U) << "class " << c;
    }
  }
}

TEST(SizeClasses, ObjectsPerSpan) {
  for (std::size_t c = 1; c < kNumSizeClasses; ++c) {
    const std::size_t size = kClassToSize[c];
    const std::size_t span_bytes = kClassToPages[c] * kPageSize;
    EXPECT_GE(kClassToPages[c], 1) << "class " << c;
    EXPECT_LE(kClassToPages[c], 10) << "class " << c;
    EXPECT_EQ(ClassObjects(c), span_bytes / size) << "class " << c;
    EXPECT_GE(ClassObjects(c), 1U) << "class " << c;
    // The span's bitmaps hold at most kMaxObjectsPerSpan bits.
    EXPECT_LE(ClassObjects(c), gofin::internal::kMaxObjectsPerSpan) << "class " << c;
  }
  EXPECT_EQ(ClassObjects(1), 1024U);
  EXPECT_EQ(ClassObjects(kNumSizeClasses - 1), 1U);
}

TEST(SizeClasses, TailWasteAtMostOneEighth) {
  for (std::size_t c = 1; c < kNumSizeClasses; ++c) {
    const std::size_t size = kClassToSize[c];
    const std::size_t span_bytes = kClassToPages[c] * kPageSize;
    const std::size_t tail = span_bytes % size;
    EXPECT_LE(tail * 8, span_bytes) << "class " << c << " size " << size << " tail " << tail;
  }
}

// Go's printComment: max waste = ((size - prevsize - 1) * objects + tail) / span bytes.
TEST(SizeClasses, MaxWaste) {
  double worst_above_112 = 0;
  for (std::size_t c = 1; c < kNumSizeClasses; ++c) {
    const std::size_t size = kClassToSize[c];
    const std::size_t prev = kClassToSize[c - 1];
    const std::size_t span_bytes = kClassToPages[c] * kPageSize;
    const std::size_t objects = span_bytes / size;
    const std::size_t tail = span_bytes - objects * size;
    const double waste =
        static_cast<double>((size - prev - 1) * objects + tail) / static_cast<double>(span_bytes);
    EXPECT_LE(waste, 0.875) << "class " << c;
    if (size >= 112) {
      EXPECT_LT(waste, 0.17) << "class " << c << " size " << size;
      if (waste > worst_above_112) worst_above_112 = waste;
    }
  }
  // Go's table comments: class 1 (8 bytes) wastes at most 87.50%, class 45 (4864) 16.65%.
  const auto waste_of = [](std::size_t c) {
    const std::size_t size = kClassToSize[c];
    const std::size_t span_bytes = kClassToPages[c] * kPageSize;
    const std::size_t objects = span_bytes / size;
    return static_cast<double>((size - kClassToSize[c - 1] - 1) * objects + span_bytes -
                               objects * size) /
           static_cast<double>(span_bytes);
  };
  EXPECT_NEAR(waste_of(1), 0.8750, 1e-4);
  EXPECT_NEAR(waste_of(45), 0.1665, 1e-4);
  EXPECT_NEAR(worst_above_112, 0.1665, 1e-4);
}

TEST(SizeClasses, SizeToClassIsSmallestFit) {
  std::size_t c = 1;
  for (std::size_t n = 1; n <= kMaxSmallSize; ++n) {
    while (kClassToSize[c] < n) ++c;
    ASSERT_EQ(SizeToClass(n), c) << "size " << n;
    ASSERT_GE(kClassToSize[SizeToClass(n)], n) << "size " << n;
    ASSERT_LT(kClassToSize[SizeToClass(n) - 1], n) << "size " << n;
  }
  // Every class size maps to itself.
  for (std::size_t k = 1; k < kNumSizeClasses; ++k) EXPECT_EQ(SizeToClass(kClassToSize[k]), k);
}

TEST(SizeClasses, SizeToClassIsConstexpr) {
  static_assert(SizeToClass(1) == 1);
  static_assert(SizeToClass(8) == 1);
  static_assert(SizeToClass(9) == 2);
  static_assert(SizeToClass(1016) == 32);  // last size_to_class8 entry (1024 - 8)
  static_assert(SizeToClass(1017) == 32);  // first size_to_class128 entry
  static_assert(SizeToClass(1025) == 33);
  static_assert(SizeToClass(32768) == 67);
  SUCCEED();
}

TEST(SizeClasses, DivMagicIsExactForEveryOffset) {
  for (std::size_t c = 1; c < kNumSizeClasses; ++c) {
    const std::uint64_t magic = kClassToDivMagic[c];
    const std::uint64_t size = kClassToSize[c];
    const std::uint64_t span_bytes = kClassToPages[c] * kPageSize;
    ASSERT_NE(magic, 0U) << "class " << c;
    std::size_t bad = 0;
    for (std::uint64_t off = 0; off < span_bytes; ++off) {
      if (((off * magic) >> 32) != off / size) {
        if (bad++ == 0) {
          ADD_FAILURE() << "class " << c << " size " << size << " offset " << off << ": "
                        << ((off * magic) >> 32) << " != " << off / size;
        }
      }
    }
    EXPECT_EQ(bad, 0U) << "class " << c;
  }
  EXPECT_EQ(kClassToDivMagic[0], 0U);
}

TEST(SizeClasses, SpanClassPacking) {
  for (std::size_t c = 0; c < kNumSizeClasses; ++c) {
    for (int noscan = 0; noscan < 2; ++noscan) {
      for (int dtor = 0; dtor < 2; ++dtor) {
        const SpanClass spc = SpanClass::Make(c, noscan != 0, dtor != 0);
        EXPECT_EQ(spc.SizeClass(), c);
        EXPECT_EQ(spc.NoScan(), noscan != 0);
        EXPECT_EQ(spc.HasDtor(), dtor != 0);
        EXPECT_LT(spc.value, gofin::internal::kNumSpanClasses);
      }
    }
  }
  // Distinct (class, noscan, dtor) triples give distinct values.
  std::vector<bool> seen(gofin::internal::kNumSpanClasses, false);
  for (std::size_t c = 0; c < kNumSizeClasses; ++c) {
    for (int bits = 0; bits < 4; ++bits) {
      const SpanClass spc = SpanClass::Make(c, (bits & 1) != 0, (bits & 2) != 0);
      EXPECT_FALSE(seen[spc.value]) << spc.value;
      seen[spc.value] = true;
    }
  }
}

}  // namespace
