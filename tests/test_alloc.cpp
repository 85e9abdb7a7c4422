// Allocation through the public API (Go: new(T), make([]T, n), mallocgc and its tiny
// allocator): zeroing, construction, the NoScan trait, tiny blocks, alignment, large objects,
// exceptions from constructors, gofin::Allocator, out-of-range sizes, and many threads at once.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <gofin/gofin.hpp>
#include <limits>
#include <map>
#include <mutex>
#include <new>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "heap/heap.hpp"
#include "heap/malloc.hpp"
#include "heap/size_classes.hpp"

// ---------------------------------------------------------------------------------------------
// Types used below, and their NoScan specialisations (users specialise gofin::NoScan).

namespace alloc_test {

struct Vec3 {
  double x, y, z;
};
struct Node {
  Node* next;
  long value;
};
enum Color { kRed, kGreen, kBlue };
enum class Small : std::uint8_t { kA, kB };

std::atomic<int> g_tiny_dtor_runs{0};
struct TinyDtor {  // noscan, 1 byte, but with a destructor: never tiny
  char c;
  ~TinyDtor() { g_tiny_dtor_runs.fetch_add(1, std::memory_order_relaxed); }
};

struct alignas(8) A8 {
  char c;
};
struct alignas(32) A32 {
  char c;
};
struct alignas(64) A64 {
  char c[65];  // sizeof 128
};
struct alignas(4096) A4096 {
  char c;
};
struct alignas(8192) A8192 {
  char c;
};
struct alignas(16) A16 {
  char c;
};
struct alignas(32) A32Scan {  // holds pointers: scanned
  void* p;
};

}  // namespace alloc_test

namespace gofin {
template <>
struct NoScan<alloc_test::Vec3> : std::true_type {};
template <>
struct NoScan<alloc_test::TinyDtor> : std::true_type {};
template <>
struct NoScan<alloc_test::A8> : std::true_type {};
template <>
struct NoScan<alloc_test::A32> : std::true_type {};
template <>
struct NoScan<alloc_test::A64> : std::true_type {};
template <>
struct NoScan<alloc_test::A4096> : std::true_type {};
template <>
struct NoScan<alloc_test::A8192> : std::true_type {};
}  // namespace gofin

namespace alloc_test {
namespace {

using gofin::internal::FindObject;
using gofin::internal::kPageSize;
using gofin::internal::kTinySpanClass;
using gofin::internal::ObjectRef;

std::uintptr_t Addr(const void* p) { return reinterpret_cast<std::uintptr_t>(p); }

ObjectRef Ref(const void* p) { return FindObject(p); }

bool IsTiny(const void* p) {
  const ObjectRef r = FindObject(p);
  return r.span != nullptr && r.span->spanclass.value == kTinySpanClass.value;
}

bool InNoScanSpan(const void* p) {
  const ObjectRef r = FindObject(p);
  return r.span != nullptr && r.span->spanclass.NoScan();
}

__attribute__((noinline)) bool BytesAreZero(const void* p, std::size_t n) {
  const auto* b = static_cast<const volatile unsigned char*>(p);
  for (std::size_t i = 0; i < n; ++i) {
    if (b[i] != 0) return false;
  }
  return true;
}

// Nothing is collected unless a test calls gofin::GC() itself.
class AllocTest : public ::testing::Test {
 protected:
  void SetUp() override {
    old_percent_ = gofin::debug::SetGCPercent(-1);
    (void)gofin::Alloc(1);  // registers this thread
  }
  void TearDown() override { gofin::debug::SetGCPercent(old_percent_); }
  int old_percent_ = 100;
};

// ---------------------------------------------------------------------------------------------
// New<T> and NewArray<T>

struct Probe {  // 64 bytes, scanned, trivially destructible
  long payload[7];
  long zero_at_ctor;
  Probe() : zero_at_ctor(BytesAreZero(this, sizeof(*this)) ? 1 : 0) {}
};
static_assert(sizeof(Probe) == 64);

// Fills n objects of 64 bytes (the same span class as Probe) with garbage and forgets them.
__attribute__((noinline)) void MakeDirty64(std::set<std::uintptr_t>& addrs, int n) {
  for (int i = 0; i < n; ++i) {
    void* p = gofin::Alloc(63);  // padded to 64: Probe's class, scanned, no destructor
    std::memset(p, 0xA5, 64);
    addrs.insert(Addr(p));
  }
}

TEST_F(AllocTest, NewRunsConstructorOnZeroedMemory) {
  std::set<std::uintptr_t> old;  // malloc'd: never scanned, keeps nothing alive
  MakeDirty64(old, 4000);
  gofin::GC();
  std::size_t reused = 0;
  std::size_t from_dirty_spans = 0;
  for (int i = 0; i < 4000; ++i) {
    Probe* p = gofin::New<Probe>();
    ASSERT_EQ(p->zero_at_ctor, 1) << "object " << i << " was not zero when its constructor ran";
    ASSERT_TRUE(BytesAreZero(p->payload, sizeof(p->payload))) << i;
    if (old.count(Addr(p)) != 0) ++reused;
    // needzero: the span's memory held objects before, so the allocator had to clear it.
    if (Ref(p).span->needzero) ++from_dirty_spans;
  }
  // The checks above only mean something if recycled memory came back. (Which freed objects
  // are reused first depends on what earlier tests left behind, so count either kind.)
  EXPECT_GT(reused + from_dirty_spans, 0U)
      << "no object came from recycled memory; the zeroing check proved nothing";
}

struct Pair {
  long a;
  long b;
  Pair(long x, long y) : a(x), b(y) {}
};
struct Agg {
  int x;
  double y;
};

// Allocation runs (ThreadCache::runs) across spans that survive a collection half full: a run
// that ends where its span turns out to be full must give nothing back when the cache moves
// to the next span (an early version counted the span's free objects twice there and then
// took full spans for partial ones: allocation failed with the heap nearly empty).
struct TreeNode {
  TreeNode* left;
  TreeNode* right;
};
__attribute__((noinline)) TreeNode* BuildTree(int depth) {
  if (depth <= 0) return gofin::New<TreeNode>();
  TreeNode* left = BuildTree(depth - 1);
  TreeNode* right = BuildTree(depth - 1);
  TreeNode* n = gofin::New<TreeNode>();
  n->left = left;
  n->right = right;
  return n;
}
__attribute__((noinline)) long CountTree(const TreeNode* n) {
  return n->left == nullptr ? 1 : 1 + CountTree(n->left) + CountTree(n->right);
}

TEST_F(AllocTest, RunsStayExactAcrossCollectionsOfHalfFullSpans) {
  gofin::debug::SetGCPercent(100);  // automatic collections, between any two allocations
  gofin::Root<TreeNode> keep(BuildTree(16));
  const gofin::MemStats before = gofin::ReadMemStats();
  for (int i = 0; i < 300; ++i) ASSERT_EQ(CountTree(BuildTree(10)), 2047) << i;
  EXPECT_EQ(CountTree(keep.get()), 131071);
  const gofin::MemStats after = gofin::ReadMemStats();
  EXPECT_GT(after.NumGC, before.NumGC);
  // No collection was forced by an allocation that failed.
  EXPECT_EQ(after.NumForcedGC, before.NumForcedGC);
}

TEST_F(AllocTest, NewForwardsArguments) {
  Pair* p = gofin::New<Pair>(3, 4);
  EXPECT_EQ(p->a, 3);
  EXPECT_EQ(p->b, 4);
  Agg* a = gofin::New<Agg>(7, 2.5);  // aggregate: brace-initialised
  EXPECT_EQ(a->x, 7);
  EXPECT_EQ(a->y, 2.5);
  Agg* z = gofin::New<Agg>();
  EXPECT_EQ(z->x, 0);
  EXPECT_EQ(z->y, 0.0);
  int* i = gofin::New<int>(42);
  EXPECT_EQ(*i, 42);
  Node* n = gofin::New<Node>(nullptr, 9L);
  EXPECT_EQ(n->next, nullptr);
  EXPECT_EQ(n->value, 9);
  EXPECT_EQ(Ref(n).base, Addr(n));
}

struct FortyTwo {
  int v;
  FortyTwo() : v(42) {}
};
struct WithInit {
  int a = 7;
  int* p;
  double d;
};

__attribute__((noinline)) void MakeDirtyNoScan4096(int n) {
  for (int i = 0; i < n; ++i) std::memset(gofin::AllocNoScan(4000), 0xFF, 4001);
}

TEST_F(AllocTest, NewArrayValueInitialises) {
  MakeDirtyNoScan4096(200);
  gofin::GC();
  std::size_t from_dirty_spans = 0;
  for (int k = 0; k < 200; ++k) {
    int* v = gofin::NewArray<int>(1000);  // 4001 bytes: the class the garbage was in
    ASSERT_TRUE(std::all_of(v, v + 1000, [](int x) { return x == 0; })) << k;
    if (Ref(v).span->needzero) ++from_dirty_spans;
  }
  EXPECT_GT(from_dirty_spans, 0U) << "no array came from recycled memory";
  FortyTwo* f = gofin::NewArray<FortyTwo>(100);
  EXPECT_TRUE(std::all_of(f, f + 100, [](const FortyTwo& x) { return x.v == 42; }));
  WithInit* w = gofin::NewArray<WithInit>(50);
  for (int i = 0; i < 50; ++i) {
    EXPECT_EQ(w[i].a, 7);
    EXPECT_EQ(w[i].p, nullptr);
    EXPECT_EQ(w[i].d, 0.0);
  }
  double* d = gofin::NewArray<double>(5000);  // large
  EXPECT_TRUE(std::all_of(d, d + 5000, [](double x) { return x == 0.0; }));
  EXPECT_NE(gofin::NewArray<int>(0), nullptr);
}

// ---------------------------------------------------------------------------------------------
// NoScan

static_assert(gofin::NoScan<int>::value);
static_assert(gofin::NoScan<char>::value);
static_assert(gofin::NoScan<bool>::value);
static_assert(gofin::NoScan<double>::value);
static_assert(gofin::NoScan<unsigned long long>::value);
static_assert(gofin::NoScan<Color>::value);
static_assert(gofin::NoScan<Small>::value);
static_assert(gofin::NoScan<std::byte>::value);
static_assert(gofin::NoScan<const int>::value);
static_assert(gofin::NoScan<int[4]>::value);
static_assert(gofin::NoScan<double[2][3]>::value);
static_assert(gofin::NoScan<Color[8]>::value);
static_assert(gofin::NoScan<int[]>::value);
static_assert(!gofin::NoScan<int*>::value);
static_assert(!gofin::NoScan<void*>::value);
static_assert(!gofin::NoScan<const char*>::value);
static_assert(!gofin::NoScan<int* [4]>::value);
static_assert(!gofin::NoScan<Node>::value);
static_assert(!gofin::NoScan<Pair>::value);  // a struct is scanned unless specialised
static_assert(!gofin::NoScan<std::nullptr_t>::value);
static_assert(gofin::NoScan<Vec3>::value);  // user specialisation
static_assert(gofin::NoScan<Vec3[3]>::value);
static_assert(gofin::NoScan<const Vec3>::value);

TEST_F(AllocTest, NoScanObjectsLandInNoScanSpans) {
  EXPECT_TRUE(InNoScanSpan(gofin::New<Vec3>()));
  EXPECT_TRUE(InNoScanSpan(gofin::New<double>(1.0)));
  EXPECT_TRUE(InNoScanSpan(gofin::New<Color>(kBlue)));
  EXPECT_TRUE(InNoScanSpan(gofin::NewArray<double>(100)));
  EXPECT_TRUE(InNoScanSpan(gofin::NewArray<char>(1000)));
  EXPECT_TRUE(InNoScanSpan(gofin::NewArray<Vec3>(10)));
  EXPECT_TRUE(InNoScanSpan(gofin::NewArray<std::uint64_t>(100000)));  // large
  EXPECT_TRUE(InNoScanSpan(gofin::AllocNoScan(100)));
  EXPECT_TRUE(InNoScanSpan(gofin::Allocator<int>().allocate(100)));

  EXPECT_FALSE(InNoScanSpan(gofin::New<Node>()));
  EXPECT_FALSE(InNoScanSpan(gofin::New<Pair>(1, 2)));
  EXPECT_FALSE(InNoScanSpan(gofin::NewArray<void*>(100)));
  EXPECT_FALSE(InNoScanSpan(gofin::NewArray<Node>(100000)));  // large
  EXPECT_FALSE(InNoScanSpan(gofin::Alloc(100)));
  EXPECT_FALSE(InNoScanSpan(gofin::Allocator<int*>().allocate(100)));

  // A pointer-sized scanned object is not tiny: it gets an object of its own, padded to the
  // 16-byte class so that a pointer one past its end stays inside it.
  int** pp = gofin::New<int*>();
  EXPECT_FALSE(IsTiny(pp));
  EXPECT_EQ(Ref(pp).base, Addr(pp));
  EXPECT_EQ(Ref(pp).span->elemsize, 16U);
}

struct WithDtor {
  long v = 0;
  ~WithDtor() { v = -1; }
};

TEST_F(AllocTest, DestructorTypesGetDestructorSpans) {
  WithDtor* w = gofin::New<WithDtor>();
  EXPECT_TRUE(Ref(w).span->spanclass.HasDtor());
  EXPECT_FALSE(Ref(w).span->spanclass.NoScan());
  Pair* p = gofin::New<Pair>(1, 2);
  EXPECT_FALSE(Ref(p).span->spanclass.HasDtor());
  WithDtor* arr = gofin::NewArray<WithDtor>(10000);  // large, with a destructor
  EXPECT_TRUE(Ref(arr).span->large);
  EXPECT_TRUE(Ref(arr).span->spanclass.HasDtor());
}

// ---------------------------------------------------------------------------------------------
// The tiny allocator (Go: mallocgc's tiny path)

TEST_F(AllocTest, TinyObjectsShareOneBlockWithGoAlignment) {
  gofin::GC();  // flushes this thread's cache: the next tiny object starts a fresh block
  char* c1 = gofin::New<char>('a');
  char* c2 = gofin::New<char>('b');
  short* s = gofin::New<short>(static_cast<short>(0x1234));
  int* i = gofin::New<int>(0x55667788);
  long* l = gofin::New<long>(0x0102030405060708L);
  char* next = gofin::New<char>('z');
  const ObjectRef block = Ref(c1);
  ASSERT_NE(block.span, nullptr);
  EXPECT_TRUE(IsTiny(c1));
  EXPECT_EQ(Addr(c1) % 16, 0U) << "a fresh tiny block starts 16-aligned";
  EXPECT_EQ(block.base, Addr(c1));
  // Go: off = alignUp(off, 8 / 4 / 2) by the size's low bits, then off += size.
  EXPECT_EQ(Addr(c2), Addr(c1) + 1);
  EXPECT_EQ(Addr(s), Addr(c1) + 2);
  EXPECT_EQ(Addr(i), Addr(c1) + 4);
  EXPECT_EQ(Addr(l), Addr(c1) + 8);
  for (const void* p : {static_cast<const void*>(c2), static_cast<const void*>(s),
                        static_cast<const void*>(i), static_cast<const void*>(l)}) {
    EXPECT_EQ(Ref(p).base, block.base);
    EXPECT_EQ(Ref(p).span, block.span);
  }
  // The block is full (offset 16): the next object starts another one.
  EXPECT_TRUE(IsTiny(next));
  EXPECT_NE(Ref(next).base, block.base);
  EXPECT_EQ(Addr(next) % 16, 0U);
  EXPECT_EQ(*c1, 'a');
  EXPECT_EQ(*c2, 'b');
  EXPECT_EQ(*s, 0x1234);
  EXPECT_EQ(*i, 0x55667788);
  EXPECT_EQ(*l, 0x0102030405060708L);
  EXPECT_EQ(*next, 'z');
}

TEST_F(AllocTest, TinyKeepsTheBlockWithMoreRoom) {
  gofin::GC();
  long* l = gofin::New<long>(1);             // new block X, offset 8
  char* twelve = gofin::NewArray<char>(11);  // 12 bytes: does not fit X's last 8
  char* c = gofin::New<char>('c');           // X still has room: Go keeps X
  ASSERT_TRUE(IsTiny(l));
  ASSERT_TRUE(IsTiny(twelve));
  EXPECT_NE(Ref(twelve).base, Ref(l).base);
  EXPECT_EQ(Ref(twelve).base, Addr(twelve));
  EXPECT_EQ(Addr(c), Addr(l) + 8) << "Go keeps the old block when it has more room left";
  // Another object that fits neither block starts a third one and, being small, becomes
  // the current block: the next char follows it.
  gofin::GC();
  long* a = gofin::New<long>(2);        // block Y, offset 8
  int* b = gofin::New<int>(3);          // offset 12
  double* d = gofin::New<double>(4.0);  // 8-aligned: 16 -> a new block Z, offset 8 < 12
  char* e = gofin::New<char>('e');      // Z + 8
  EXPECT_EQ(Addr(b), Addr(a) + 8);
  EXPECT_EQ(Ref(d).base, Addr(d));
  EXPECT_NE(Ref(d).base, Ref(a).base);
  EXPECT_EQ(Addr(e), Addr(d) + 8);
  EXPECT_EQ(*a, 2);
  EXPECT_EQ(*b, 3);
  EXPECT_EQ(*d, 4.0);
}

// Go's tiny alignment rule, applied to the size the caller asked for.
std::size_t GoTinyAlign(std::size_t size) {
  if ((size & 7) == 0) return 8;
  if ((size & 3) == 0) return 4;
  if ((size & 1) == 0) return 2;
  return 1;
}

TEST_F(AllocTest, TinyRandomTypedObjectsAlignedAndDisjoint) {
  gofin::GC();
  std::mt19937 rng(7);
  struct Obj {
    std::uintptr_t p;
    std::size_t size;
    std::size_t align;
    std::uint64_t value;
    std::size_t value_bytes = 0;  // bytes holding `value` (0: all of size)
  };
  std::vector<Obj> objs;
  for (int k = 0; k < 20000; ++k) {
    const auto v = static_cast<std::uint64_t>(k) * 0x9E3779B97F4A7C15ULL;
    switch (rng() % 7) {
      case 0:
        objs.push_back({Addr(gofin::New<char>(static_cast<char>(v))), 1, 1, v & 0xff});
        break;
      case 1:
        objs.push_back(
            {Addr(gofin::New<std::uint16_t>(static_cast<std::uint16_t>(v))), 2, 2, v & 0xffff});
        break;
      case 2:
        objs.push_back(
            {Addr(gofin::New<std::uint32_t>(static_cast<std::uint32_t>(v))), 4, 4, v & 0xffffffff});
        break;
      case 3:
        objs.push_back({Addr(gofin::New<std::uint64_t>(v)), 8, 8, v});
        break;
      case 4:
        // A8's 7 padding bytes may be copied from the temporary: only its char is checked.
        objs.push_back({Addr(gofin::New<A8>(A8{static_cast<char>(v)})), 8, 8, v & 0xff, 1});
        break;
      case 5: {
        float* f = gofin::New<float>(static_cast<float>(k));
        std::uint32_t bits = 0;
        std::memcpy(&bits, f, 4);
        objs.push_back({Addr(f), 4, 4, bits});
        break;
      }
      default: {
        double* d = gofin::New<double>(static_cast<double>(k));
        std::uint64_t bits = 0;
        std::memcpy(&bits, d, 8);
        objs.push_back({Addr(d), 8, 8, bits});
        break;
      }
    }
  }
  std::vector<std::pair<std::uintptr_t, std::uintptr_t>> ranges;
  for (const Obj& o : objs) {
    ASSERT_EQ(o.p % o.align, 0U) << "size " << o.size;
    ASSERT_TRUE(IsTiny(reinterpret_cast<void*>(o.p))) << "size " << o.size;
    const ObjectRef r = Ref(reinterpret_cast<void*>(o.p));
    ASSERT_LE(o.p + o.size, r.base + 16) << "object crosses its tiny block";
    std::uint64_t got = 0;
    std::memcpy(&got, reinterpret_cast<void*>(o.p), o.value_bytes != 0 ? o.value_bytes : o.size);
    ASSERT_EQ(got, o.value) << "tiny object overwritten";
    ranges.emplace_back(o.p, o.p + o.size);
  }
  std::sort(ranges.begin(), ranges.end());
  for (std::size_t k = 1; k < ranges.size(); ++k) {
    ASSERT_LE(ranges[k - 1].second, ranges[k].first) << "tiny objects overlap";
  }
}

// NewArray<T>, Allocator<T> and AllocNoScan pad their size by one byte; the tiny allocator
// must still give T (or, for raw bytes, Go's rule on the requested size) its alignment.
TEST_F(AllocTest, TinyPaddedArraysKeepElementAlignment) {
  struct Case {
    const char* what;
    std::size_t align;
    void* (*alloc)();
  };
  const Case cases[] = {
      {"NewArray<short>(1)", alignof(short),
       [] { return static_cast<void*>(gofin::NewArray<short>(1)); }},
      {"NewArray<short>(3)", alignof(short),
       [] { return static_cast<void*>(gofin::NewArray<short>(3)); }},
      {"NewArray<int>(1)", alignof(int),
       [] { return static_cast<void*>(gofin::NewArray<int>(1)); }},
      {"NewArray<int>(2)", alignof(int),
       [] { return static_cast<void*>(gofin::NewArray<int>(2)); }},
      {"NewArray<float>(3)", alignof(float),
       [] { return static_cast<void*>(gofin::NewArray<float>(3)); }},
      {"NewArray<long>(1)", alignof(long),
       [] { return static_cast<void*>(gofin::NewArray<long>(1)); }},
      {"NewArray<double>(1)", alignof(double),
       [] { return static_cast<void*>(gofin::NewArray<double>(1)); }},
      {"Allocator<int>::allocate(1)", alignof(int),
       [] { return static_cast<void*>(gofin::Allocator<int>().allocate(1)); }},
      {"Allocator<long>::allocate(1)", alignof(long),
       [] { return static_cast<void*>(gofin::Allocator<long>().allocate(1)); }},
      {"AllocNoScan(2)", GoTinyAlign(2), [] { return gofin::AllocNoScan(2); }},
      {"AllocNoScan(4)", GoTinyAlign(4), [] { return gofin::AllocNoScan(4); }},
      {"AllocNoScan(8)", GoTinyAlign(8), [] { return gofin::AllocNoScan(8); }},
      {"AllocNoScan(12)", GoTinyAlign(12), [] { return gofin::AllocNoScan(12); }},
  };
  for (const Case& c : cases) {
    // Put the current tiny block at an odd offset, then allocate.
    gofin::GC();
    (void)gofin::New<char>();
    void* p = c.alloc();
    EXPECT_EQ(Addr(p) % c.align, 0U)
        << c.what << " returned " << p << " (tiny block " << reinterpret_cast<void*>(Ref(p).base)
        << "): misaligned for its element type";
    // And with the block at every offset 1..15.
    for (int off = 1; off < 16; ++off) {
      gofin::GC();
      for (int k = 0; k < off; ++k) (void)gofin::New<char>();
      void* q = c.alloc();
      if (Addr(q) % c.align != 0) {
        ADD_FAILURE() << c.what << " misaligned after " << off << " tiny bytes: " << q;
        break;
      }
    }
  }
}

TEST_F(AllocTest, DestructorAndOverAlignedTypesNeverShareABlock) {
  std::set<std::uintptr_t> bases;
  for (int k = 0; k < 100; ++k) {
    TinyDtor* t = gofin::New<TinyDtor>();
    const ObjectRef r = Ref(t);
    ASSERT_NE(r.span, nullptr);
    EXPECT_EQ(r.base, Addr(t)) << "an object with a destructor is an object of its own";
    EXPECT_FALSE(IsTiny(t));
    EXPECT_TRUE(r.span->spanclass.HasDtor());
    EXPECT_TRUE(r.span->spanclass.NoScan());
    EXPECT_TRUE(bases.insert(r.base).second) << "two TinyDtor objects share a block";
  }
  bases.clear();
  for (int k = 0; k < 100; ++k) {
    A16* a = gofin::New<A16>();  // 16 bytes: not tiny (tiny is < 16)
    EXPECT_EQ(Addr(a) % 16, 0U);
    EXPECT_EQ(Ref(a).base, Addr(a));
    EXPECT_TRUE(bases.insert(Ref(a).base).second);
  }
}

// alignof(T) == 16 takes the unaligned path (Malloc, not MallocAligned). New<T> is fine
// (sizeof(T) is a multiple of 16, and every class >= 16 but 24 is one too), but a padded
// NewArray<T>(1) / Allocator<T>::allocate(1) asks for 17 bytes: the 24-byte class.
TEST_F(AllocTest, SixteenByteAlignedTypesInArrays) {
  static_assert(alignof(A16) == 16 && alignof(long double) == 16 && alignof(__int128) == 16);
  std::map<std::string, int> bad;  // what -> misaligned results out of 64
  auto check = [&](const void* p, const char* what) {
    if (Addr(p) % 16 != 0) ++bad[what];
  };
  for (int k = 0; k < 64; ++k) {
    check(gofin::New<A16>(), "New<A16>()");
    check(gofin::NewArray<A16>(1), "NewArray<A16>(1)");
    check(gofin::NewArray<long double>(1), "NewArray<long double>(1)");
    check(gofin::NewArray<__int128>(1), "NewArray<__int128>(1)");
    check(gofin::Allocator<__int128>().allocate(1), "Allocator<__int128>::allocate(1)");
    std::vector<long double, gofin::Allocator<long double>> v;
    v.reserve(1);  // no element is constructed: the buffer may be misaligned
    check(v.data(), "vector<long double, Allocator>::reserve(1)");
    for (std::size_t n = 2; n < 40; ++n) {
      check(gofin::NewArray<A16>(n), "NewArray<A16>(n > 1)");
    }
  }
  for (const auto& [what, n] : bad) {
    ADD_FAILURE() << what << ": " << n << " of 64 results not 16-byte aligned";
  }
}

template <class T>
void CheckOverAligned(const char* what, int count) {
  std::set<std::uintptr_t> bases;
  for (int k = 0; k < count; ++k) {
    T* p = gofin::New<T>();
    ASSERT_EQ(Addr(p) % alignof(T), 0U) << what << " #" << k;
    const ObjectRef r = Ref(p);
    ASSERT_NE(r.span, nullptr) << what;
    ASSERT_EQ(r.base, Addr(p)) << what << ": must be an object of its own";
    ASSERT_FALSE(IsTiny(p)) << what;
    ASSERT_GE(r.span->elemsize, sizeof(T)) << what;
    ASSERT_TRUE(bases.insert(r.base).second) << what;
    std::memset(static_cast<void*>(p), 0x5C, sizeof(T));
  }
  for (std::size_t n : {std::size_t{1}, std::size_t{2}, std::size_t{3}, std::size_t{7},
                        std::size_t{9}, std::size_t{100}}) {
    T* a = gofin::NewArray<T>(n);
    ASSERT_EQ(Addr(a) % alignof(T), 0U) << what << " NewArray(" << n << ")";
    ASSERT_EQ(Ref(a).base, Addr(a)) << what;
    ASSERT_GE(Ref(a).span->elemsize, n * sizeof(T) + 1) << what;
    T* b = gofin::Allocator<T>().allocate(n);
    ASSERT_EQ(Addr(b) % alignof(T), 0U) << what << " Allocator(" << n << ")";
  }
}

TEST_F(AllocTest, OverAlignedTypes) {
  CheckOverAligned<A32>("alignas(32)", 300);
  CheckOverAligned<A32Scan>("alignas(32) scanned", 300);
  CheckOverAligned<A64>("alignas(64)", 300);
  CheckOverAligned<A4096>("alignas(4096)", 40);
  CheckOverAligned<A8192>("alignas(8192)", 20);
  EXPECT_TRUE(InNoScanSpan(gofin::New<A64>()));
  EXPECT_FALSE(InNoScanSpan(gofin::New<A32Scan>()));
}

TEST_F(AllocTest, AlignedAllocSizeAlwaysAligned) {
  using gofin::internal::AlignedAllocSize;
  using gofin::internal::kMaxSmallSize;
  for (std::size_t align = 32; align <= kPageSize; align *= 2) {
    for (std::size_t size = 1; size <= kMaxSmallSize + 100; size += (size < 2000 ? 1 : 37)) {
      const std::size_t got = AlignedAllocSize(size, align);
      ASSERT_GE(got, size) << size << " @" << align;
      if (got <= kMaxSmallSize) {
        // A small class whose size is a multiple of align (span bases are page-aligned).
        ASSERT_EQ(got % align, 0U) << size << " @" << align;
        ASSERT_EQ(gofin::internal::kClassToSize[gofin::internal::SizeToClass(got)], got);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Large objects

struct Big {
  char data[100000];
};

__attribute__((noinline)) void MakeDirtyLarge(int n) {
  for (int i = 0; i < n; ++i) std::memset(gofin::AllocNoScan(200000), 0xCC, 200000);
}

TEST_F(AllocTest, LargeObjectsArePageAlignedAndZeroed) {
  MakeDirtyLarge(30);
  gofin::GC();
  std::size_t from_dirty_pages = 0;
  for (int k = 0; k < 30; ++k) {
    char* p = static_cast<char*>(gofin::AllocNoScan(200000));
    ASSERT_EQ(Addr(p) % kPageSize, 0U);
    ASSERT_TRUE(Ref(p).span->large);
    ASSERT_TRUE(BytesAreZero(p, 200001)) << "large object " << k << " not zeroed";
    if (Ref(p).span->needzero) ++from_dirty_pages;
  }
  EXPECT_GT(from_dirty_pages, 0U) << "no large object came from recycled pages";
  Big* b = gofin::New<Big>();
  EXPECT_EQ(Addr(b) % kPageSize, 0U);
  EXPECT_TRUE(BytesAreZero(b, sizeof(Big)));
  EXPECT_FALSE(InNoScanSpan(b));
  void* s = gofin::Alloc(40000);
  EXPECT_EQ(Addr(s) % kPageSize, 0U);
  EXPECT_TRUE(BytesAreZero(s, 40001));
  // 32767 (+1) is the largest small object; 32768 (+1) the smallest large one.
  EXPECT_FALSE(Ref(gofin::Alloc(32767)).span->large);
  EXPECT_TRUE(Ref(gofin::Alloc(32768)).span->large);
  void* m = gofin::AllocNoScan(std::size_t{16} << 20);
  EXPECT_EQ(Addr(m) % kPageSize, 0U);
  EXPECT_TRUE(BytesAreZero(m, std::size_t{16} << 20));
}

// ---------------------------------------------------------------------------------------------
// Destructors and exceptions

std::atomic<int> g_thrower_dtors{0};
std::atomic<int> g_thrower_generation{0};  // only this phase's objects count
struct Thrower {
  int generation;
  long pad[4];
  explicit Thrower(bool fail) : generation(g_thrower_generation.load()), pad{} {
    if (fail) throw std::runtime_error("Thrower");
  }
  ~Thrower() {
    if (generation == g_thrower_generation.load()) g_thrower_dtors.fetch_add(1);
  }
};

__attribute__((noinline)) void MakeThrowerGarbage(int n) {
  for (int i = 0; i < n; ++i) (void)gofin::New<Thrower>(false);
}

TEST_F(AllocTest, ThrowingConstructorPropagatesAndItsDestructorNeverRuns) {
  g_thrower_generation.fetch_add(1);
  const int before = g_thrower_dtors.load();
  for (int i = 0; i < 300; ++i) {
    EXPECT_THROW((void)gofin::New<Thrower>(true), std::runtime_error);
  }
  gofin::GC();
  gofin::GC();
  EXPECT_EQ(g_thrower_dtors.load(), before)
      << "the destructor of an object whose constructor threw ran";

  // Control: the same type's destructor does run for objects that were constructed.
  g_thrower_generation.fetch_add(1);
  const int control_before = g_thrower_dtors.load();
  MakeThrowerGarbage(1000);
  gofin::GC();
  gofin::GC();
  EXPECT_GT(g_thrower_dtors.load() - control_before, 500)
      << "collected objects' destructors must run";
}

struct Elem {
  static inline std::atomic<int> next_id{0};
  static inline int throw_at = -1;
  static inline std::mutex mu;
  static inline std::vector<int>* destroyed = new std::vector<int>();  // NOLINT
  static inline std::atomic<int> total_destroyed{0};
  static inline std::atomic<int> generation_now{0};  // only this phase's elements count

  int id;
  int generation;
  Elem() : generation(generation_now.load()) {
    const int k = next_id.fetch_add(1);
    if (k == throw_at) throw std::runtime_error("Elem");
    id = k;
  }
  ~Elem() {
    if (generation != generation_now.load()) return;
    std::lock_guard lock(mu);
    destroyed->push_back(id);
    total_destroyed.fetch_add(1);
  }
};

__attribute__((noinline)) void MakeElemGarbage(int arrays) {
  Elem::throw_at = -1;
  for (int i = 0; i < arrays; ++i) (void)gofin::NewArray<Elem>(10);
}

TEST_F(AllocTest, NewArrayThrowingElementDestroysTheConstructedOnesOnce) {
  Elem::generation_now.fetch_add(1);
  int expected_total = Elem::total_destroyed.load();
  for (int iter = 0; iter < 100; ++iter) {
    const int k = iter % 10;
    {
      std::lock_guard lock(Elem::mu);
      Elem::destroyed->clear();
    }
    Elem::next_id = 0;
    Elem::throw_at = k;
    EXPECT_THROW((void)gofin::NewArray<Elem>(10), std::runtime_error);
    std::vector<int> got;
    {
      std::lock_guard lock(Elem::mu);
      got = *Elem::destroyed;
    }
    std::vector<int> want;
    for (int i = k - 1; i >= 0; --i) want.push_back(i);
    std::sort(got.rbegin(), got.rend());
    EXPECT_EQ(got, want) << "throw at element " << k;
    expected_total += k;
  }
  Elem::throw_at = -1;
  EXPECT_EQ(Elem::total_destroyed.load(), expected_total);
  gofin::GC();
  gofin::GC();
  EXPECT_EQ(Elem::total_destroyed.load(), expected_total)
      << "the sweeper destroyed elements of an array whose construction failed";

  // Control: arrays that were constructed have all their elements destroyed when collected.
  Elem::generation_now.fetch_add(1);
  expected_total = Elem::total_destroyed.load();
  MakeElemGarbage(100);
  gofin::GC();
  gofin::GC();
  const int extra = Elem::total_destroyed.load() - expected_total;
  EXPECT_GT(extra, 500);
  EXPECT_EQ(extra % 10, 0) << "array destructors run for every element";
}

constexpr int kTracked = 5000;
// Ids below kTracked: first-generation garbage. Ids from kTracked on: objects kept alive while
// they reuse the garbage's slots (they die later; not checked).
std::array<std::atomic<int>, 2 * kTracked> g_tracked_dtors{};
std::atomic<int> g_tracked_generation{0};  // objects of earlier test repetitions don't count
struct Tracked {
  int id;
  int generation;
  long pad[3];
  explicit Tracked(int i) : id(i), generation(g_tracked_generation.load()), pad{} {}
  ~Tracked() {
    if (generation == g_tracked_generation.load()) {
      g_tracked_dtors[static_cast<std::size_t>(id)].fetch_add(1);
    }
  }
};

__attribute__((noinline)) void MakeTrackedGarbage() {
  for (int i = 0; i < kTracked; ++i) (void)gofin::New<Tracked>(i);
}

TEST_F(AllocTest, DestructorsRunAtMostOncePerObject) {
  g_tracked_generation.fetch_add(1);
  for (auto& c : g_tracked_dtors) c = 0;
  MakeTrackedGarbage();
  for (int round = 0; round < 3; ++round) {
    gofin::GC();
    // Objects of the same class take the freed slots and stay alive through a collection.
    std::vector<Tracked*, gofin::Allocator<Tracked*>> live;
    for (int i = 0; i < 2000; ++i) live.push_back(gofin::New<Tracked>(kTracked + i % kTracked));
    gofin::GC();
    for (int i = 0; i < 2000; ++i) {
      ASSERT_EQ(live[static_cast<std::size_t>(i)]->id, kTracked + i % kTracked)
          << "round " << round;
    }
  }
  gofin::GC();
  int destroyed = 0;
  for (int i = 0; i < kTracked; ++i) {
    const int n = g_tracked_dtors[static_cast<std::size_t>(i)].load();
    ASSERT_LE(n, 1) << "the destructor of object " << i << " ran " << n << " times";
    destroyed += n;
  }
  EXPECT_GT(destroyed, kTracked / 2);
}

std::atomic<long> g_large_elem_dtors{0};
std::atomic<int> g_large_elem_generation{0};  // arrays of earlier repetitions don't count
struct LargeElem {
  int generation = g_large_elem_generation.load();
  char data[60];
  ~LargeElem() {
    if (generation == g_large_elem_generation.load()) g_large_elem_dtors.fetch_add(1);
  }
};

__attribute__((noinline)) void MakeLargeArrays(int n) {
  for (int i = 0; i < n; ++i) (void)gofin::NewArray<LargeElem>(1000);  // 64001 bytes: large
}

TEST_F(AllocTest, LargeArrayDestructorsRunForEveryElement) {
  g_large_elem_generation.fetch_add(1);
  const long before = g_large_elem_dtors.load();
  MakeLargeArrays(20);
  gofin::GC();
  gofin::GC();
  const long ran = g_large_elem_dtors.load() - before;
  EXPECT_EQ(ran % 1000, 0) << "a large array was destroyed partially";
  EXPECT_GE(ran, 10 * 1000) << "most of the 20 unreachable arrays must have been destroyed";
  EXPECT_LE(ran, 20 * 1000) << "an array was destroyed twice";
}

// ---------------------------------------------------------------------------------------------
// Zero sizes, out-of-range sizes

struct Empty {};

TEST_F(AllocTest, ZeroSizeAllocationsAreDistinct) {
  void* a = gofin::Alloc(0);
  void* b = gofin::Alloc(0);
  void* c = gofin::AllocNoScan(0);
  void* d = gofin::AllocNoScan(0);
  int* e = gofin::NewArray<int>(0);
  int* f = gofin::NewArray<int>(0);
  Empty* g = gofin::New<Empty>();
  Empty* h = gofin::New<Empty>();
  const std::vector<void*> all = {a, b, c, d, e, f, g, h};
  for (void* p : all) {
    ASSERT_NE(p, nullptr);
    EXPECT_NE(Ref(p).span, nullptr);
  }
  EXPECT_EQ(std::set<void*>(all.begin(), all.end()).size(), all.size());
  EXPECT_EQ(Ref(a).base, Addr(a));
  EXPECT_NE(Ref(a).base, Ref(b).base);
}

TEST_F(AllocTest, OutOfRangeSizesThrowBadAlloc) {
  constexpr std::size_t kMax = std::numeric_limits<std::size_t>::max();
  EXPECT_THROW((void)gofin::NewArray<long>(kMax / 4), std::bad_alloc);
  EXPECT_THROW((void)gofin::NewArray<long>(kMax / 8), std::bad_alloc);
  EXPECT_THROW((void)gofin::NewArray<char>(kMax), std::bad_alloc);
  EXPECT_THROW((void)gofin::NewArray<long>(kMax / 16), std::bad_alloc);  // 2^63 bytes
  EXPECT_THROW((void)gofin::Alloc(kMax), std::bad_alloc);
  EXPECT_THROW((void)gofin::Alloc(kMax - 1), std::bad_alloc);
  EXPECT_THROW((void)gofin::AllocNoScan(kMax), std::bad_alloc);
  EXPECT_THROW((void)gofin::AllocNoScan(std::size_t{1} << 50), std::bad_alloc);
  EXPECT_THROW((void)gofin::Allocator<long>().allocate(kMax / 4), std::bad_alloc);
  EXPECT_THROW((void)gofin::Allocator<long>().allocate(kMax / 16), std::bad_alloc);
  // The heap still works afterwards.
  int* ok = gofin::NewArray<int>(100);
  ASSERT_NE(ok, nullptr);
  ok[99] = 1;
  EXPECT_EQ(ok[99], 1);
}

// ---------------------------------------------------------------------------------------------
// Allocation counters (Go: MemStats.Mallocs / TotalAlloc / HeapObjects)

__attribute__((noinline)) void AllocateCounted(int small, int tiny, int large) {
  for (int i = 0; i < small; ++i) (void)gofin::Alloc(100);     // 101 bytes: the 112 class
  for (int i = 0; i < tiny; ++i) (void)gofin::New<char>('x');  // tiny
  for (int i = 0; i < large; ++i) (void)gofin::Alloc(100000);  // 13 pages each
}

TEST_F(AllocTest, MemStatsCountEveryAllocation) {
  gofin::GC();  // nothing left to sweep, the tiny block reset
  const gofin::MemStats before = gofin::ReadMemStats();
  AllocateCounted(1000, 1000, 10);
  const gofin::MemStats after = gofin::ReadMemStats();
  // Go counts every tiny allocation as a malloc once: the combined ones as tinyAllocs, the ones
  // that start a block as the block's own malloc.
  EXPECT_EQ(after.Mallocs - before.Mallocs, 2010U);
  const std::uint64_t blocks = (1000 + 15) / 16;  // 16 one-byte objects per block
  EXPECT_EQ(after.TotalAlloc - before.TotalAlloc, 1000U * 112 + blocks * 16 + 10U * 13 * 8192);
  EXPECT_EQ(after.HeapObjects - before.HeapObjects, 1000U + blocks + 10U);
  // ... and the combined ones as frees too, since they are not heap objects (Go: nFree +=
  // tinyAllocCount). Nothing else was freed.
  EXPECT_EQ(after.Frees - before.Frees, 1000U - blocks);
  EXPECT_EQ(after.HeapObjects, after.Mallocs - after.Frees);
  EXPECT_GE(after.HeapInuse, before.HeapInuse + 10U * 13 * 8192);
  EXPECT_GE(after.HeapSys, after.HeapInuse);
}

// ---------------------------------------------------------------------------------------------
// gofin::Allocator with standard containers

__attribute__((noinline)) void Churn(int n) {
  for (int i = 0; i < n; ++i) *gofin::New<long>() = -1;
  for (int i = 0; i < n / 10; ++i) std::memset(gofin::Alloc(40), 0xEE, 41);
}

TEST_F(AllocTest, AllocatorKeepsVectorElementsAlive) {
  std::vector<long*, gofin::Allocator<long*>> v;
  for (long i = 0; i < 20000; ++i) v.push_back(gofin::New<long>(i * 7 + 3));
  std::vector<int, gofin::Allocator<int>> ints(5000);
  for (int i = 0; i < 5000; ++i) ints[static_cast<std::size_t>(i)] = i;
  EXPECT_NE(Ref(v.data()).span, nullptr);
  EXPECT_FALSE(InNoScanSpan(v.data()));
  EXPECT_TRUE(InNoScanSpan(ints.data()));
  for (int round = 0; round < 3; ++round) {
    gofin::GC();
    Churn(50000);  // reuses whatever the collection freed
  }
  for (long i = 0; i < 20000; ++i) {
    ASSERT_EQ(*v[static_cast<std::size_t>(i)], i * 7 + 3) << "element " << i << " was freed";
  }
  for (int i = 0; i < 5000; ++i) ASSERT_EQ(ints[static_cast<std::size_t>(i)], i);
}

TEST_F(AllocTest, AllocatorRebindsForNodeContainers) {
  using Map = std::map<int, long*, std::less<>, gofin::Allocator<std::pair<const int, long*>>>;
  Map m;
  for (int i = 0; i < 10000; ++i) m.emplace(i, gofin::New<long>(i * 3L));
  EXPECT_NE(Ref(&*m.begin()).span, nullptr) << "map nodes live in the GC heap";
  for (int round = 0; round < 2; ++round) {
    gofin::GC();
    Churn(30000);
  }
  ASSERT_EQ(m.size(), 10000U);
  int expect = 0;
  for (const auto& [k, v] : m) {
    ASSERT_EQ(k, expect);
    ASSERT_EQ(*v, k * 3L) << "key " << k;
    ++expect;
  }
  gofin::Allocator<int> ai;
  gofin::Allocator<double> ad(ai);
  EXPECT_TRUE(ai == ad);
}

// ---------------------------------------------------------------------------------------------
// Many threads

struct Record {
  std::uintptr_t p;
  std::uint32_t size;
  std::uint8_t tag;
};

std::uint8_t TagOf(int thread, int i) {
  return static_cast<std::uint8_t>(1 + ((thread * 131 + i * 7) % 251));
}

void CheckThreads(bool collect) {
  constexpr int kThreads = 4;
  constexpr int kPerThread = 100000;
  // The vectors live on this (registered) thread's stack; their buffers are in the GC heap
  // and scanned, so every object stays reachable whatever the collector does.
  std::array<std::vector<void*, gofin::Allocator<void*>>, kThreads> keep;
  std::array<std::vector<Record>, kThreads> records;  // malloc'd: addresses only
  std::array<int, kThreads> not_zero{};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(static_cast<unsigned>(1000 + t));
      keep[static_cast<std::size_t>(t)].reserve(kPerThread);
      records[static_cast<std::size_t>(t)].reserve(kPerThread);
      for (int i = 0; i < kPerThread; ++i) {
        std::size_t size = 0;
        if (rng() % 500 == 0) {
          size = 40 * 1024;
        } else {
          const unsigned k = rng() % 10;  // 8 << k: 8 .. 4096
          size = std::clamp<std::size_t>(8 + rng() % (std::size_t{8} << k), 8, 4096);
        }
        const bool noscan = (rng() & 1) != 0;
        void* p = noscan ? gofin::AllocNoScan(size) : gofin::Alloc(size);
        if (!BytesAreZero(p, size)) ++not_zero[static_cast<std::size_t>(t)];
        const std::uint8_t tag = TagOf(t, i);
        std::memset(p, tag, size);
        keep[static_cast<std::size_t>(t)].push_back(p);
        records[static_cast<std::size_t>(t)].push_back(
            {Addr(p), static_cast<std::uint32_t>(size), tag});
        if (collect && t == 0 && i % 25000 == 12345) gofin::GC();
      }
    });
  }
  for (auto& th : threads) th.join();
  if (collect) {
    gofin::GC();
    gofin::GC();
  }
  std::vector<std::pair<std::uintptr_t, std::uintptr_t>> ranges;
  ranges.reserve(kThreads * kPerThread);
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(not_zero[static_cast<std::size_t>(t)], 0) << "thread " << t << " got dirty memory";
    ASSERT_EQ(keep[static_cast<std::size_t>(t)].size(), static_cast<std::size_t>(kPerThread));
    std::size_t damaged = 0;
    for (const Record& r : records[static_cast<std::size_t>(t)]) {
      const auto* b = reinterpret_cast<const std::uint8_t*>(r.p);
      if (b[0] != r.tag || b[r.size - 1] != r.tag ||
          !std::all_of(b, b + r.size, [&](std::uint8_t x) { return x == r.tag; })) {
        if (damaged++ == 0) {
          ADD_FAILURE() << "thread " << t << ": object " << reinterpret_cast<void*>(r.p) << " of "
                        << r.size << " bytes was overwritten";
        }
      }
      ranges.emplace_back(r.p, r.p + r.size);
    }
    EXPECT_EQ(damaged, 0U) << "thread " << t;
  }
  std::sort(ranges.begin(), ranges.end());
  std::size_t overlaps = 0;
  for (std::size_t k = 1; k < ranges.size(); ++k) {
    if (ranges[k - 1].second > ranges[k].first) {
      if (overlaps++ == 0) {
        ADD_FAILURE() << "objects overlap: [" << std::hex << ranges[k - 1].first << ", "
                      << ranges[k - 1].second << ") and [" << ranges[k].first << ", "
                      << ranges[k].second << ")";
      }
    }
  }
  EXPECT_EQ(overlaps, 0U);
  // Every object still maps to itself (or to its tiny block).
  for (const auto& [lo, hi] : ranges) {
    const ObjectRef r = FindObject(reinterpret_cast<void*>(lo));
    ASSERT_NE(r.span, nullptr);
    ASSERT_EQ(FindObject(reinterpret_cast<void*>(hi - 1)).base, r.base);
  }
}

TEST_F(AllocTest, ManyThreadsWithoutCollection) { CheckThreads(false); }

TEST_F(AllocTest, ManyThreadsWithCollections) {
  gofin::debug::SetGCPercent(100);  // pacing on: cycles start while the threads allocate
  CheckThreads(true);
  const gofin::MemStats ms = gofin::ReadMemStats();
  EXPECT_GT(ms.NumGC, 2U);
}

}  // namespace
}  // namespace alloc_test
