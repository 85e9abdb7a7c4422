// The specials layer (src/specials: Go's addspecial / removespecial / the specials part of
// markrootSpans and mspan.sweep), tested below the finalizer API:
//   - AddSpecial / RemoveSpecial / HasSpecial on exact addresses, kinds kept apart;
//   - one record per (address, kind): duplicates rejected, the original kept;
//   - records kept in (offset, kind) order whatever the insertion order. The order is observed
//     two ways: duplicate detection must still work after any insertion order (a list that is
//     not sorted makes the early-exit search miss duplicates), and the sweeper hands the records
//     of a dead object to their kinds in list order;
//   - tiny blocks: several records at different offsets of one 16-byte block;
//   - the collector's two moments: the mark hook sees the object's base, object_dead sees the
//     exact address the record was set for and the object size; a resurrecting kind keeps the
//     object one more cycle and leaves the other kinds' records attached.
//
// This binary never calls SetFinalizer, so no kind is registered by the library; the fixture
// registers recording ops for every kind (and unregisters them after each test).
//
// Conservative scanning: objects that must die are allocated and dropped in short-lived
// threads (a dead thread's stack is not scanned); what the hooks saw is recorded lock-free
// (mark runs with the world stopped) with addresses XOR-encoded, since globals are roots.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <gofin/gofin.hpp>
#include <mutex>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "heap/hooks.hpp"
#include "heap/malloc.hpp"
#include "heap/span.hpp"
#include "specials/special.hpp"
#include "test_support.hpp"

namespace {

using gofin_test::Watchdog;

using gofin::internal::AddSpecial;
using gofin::internal::FreeSpecialRecord;
using gofin::internal::HasSpecial;
using gofin::internal::NewSpecial;
using gofin::internal::RemoveSpecial;
using gofin::internal::Special;
using gofin::internal::SpecialKind;
using gofin::internal::SpecialKindOps;

constexpr std::array<SpecialKind, 4> kKinds = {SpecialKind::kFinalizer, SpecialKind::kWeakHandle,
                                               SpecialKind::kProfile, SpecialKind::kCleanup};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

[[gnu::noinline]] void ClobberStack() {
  volatile std::uintptr_t buf[16 * 1024];
  for (std::size_t i = 0; i < sizeof(buf) / sizeof(buf[0]); ++i) buf[i] = 0;
  asm volatile("" ::: "memory");
}

[[gnu::noinline]] void CollectClean() {
  ClobberStack();
  gofin::GC();
}

template <class F>
void InThread(F&& f) {
  std::thread t(std::forward<F>(f));
  t.join();
}

// Addresses kept where the collector looks (globals, the test's frame) are stored XOR this
// mask: the result is a non-canonical address, never inside the heap.
volatile std::uintptr_t g_mask = 0x5a5a000000000000ULL;
std::uintptr_t Encode(const volatile void* p) {
  return reinterpret_cast<std::uintptr_t>(p) ^ g_mask;
}
std::uintptr_t Encode(std::uintptr_t p) { return p ^ g_mask; }

std::uintptr_t BaseOf(const void* p) { return gofin::internal::FindObject(p).base; }
std::size_t ElemSizeOf(const void* p) {
  const gofin::internal::ObjectRef r = gofin::internal::FindObject(p);
  return r.span == nullptr ? 0 : r.span->elemsize;
}
std::uintptr_t SpanStartOf(const void* p) {
  const gofin::internal::ObjectRef r = gofin::internal::FindObject(p);
  return r.span == nullptr ? 0 : r.span->start;
}

// What the hooks saw. Lock-free: mark runs with the world stopped.
struct DeadEvent {
  std::uintptr_t addr_enc;  // Encode(p)
  std::uint32_t offset;
  SpecialKind kind;
  std::size_t size;
  Special* record;
};
constexpr int kMaxEvents = 1 << 14;
DeadEvent g_dead[kMaxEvents];
std::atomic<int> g_ndead{0};
std::atomic<int> g_dead_overflow{0};

struct MarkEvent {
  std::uintptr_t base_enc;
  std::uint32_t offset;
  SpecialKind kind;
};
MarkEvent g_marks[kMaxEvents];
std::atomic<int> g_nmarks{0};

void RecordDead(Special* s, void* p, std::size_t size) {
  const int i = g_ndead.fetch_add(1);
  if (i >= kMaxEvents) {
    g_dead_overflow.fetch_add(1);
    return;
  }
  g_dead[i] = DeadEvent{Encode(p), s->offset, s->kind, size, s};
}

void RecordMark(Special* s, std::uintptr_t base, gofin::internal::MarkWorker& /*w*/) {
  const int i = g_nmarks.fetch_add(1);
  if (i < kMaxEvents) g_marks[i] = MarkEvent{Encode(base), s->offset, s->kind};
}

std::vector<DeadEvent> DeadEvents() {
  const int n = std::min(g_ndead.load(), kMaxEvents);
  return std::vector<DeadEvent>(g_dead, g_dead + n);
}

void ResetEvents() {
  g_ndead.store(0);
  g_nmarks.store(0);
  g_dead_overflow.store(0);
}

void RegisterRecorder(SpecialKind kind, bool resurrects) {
  SpecialKindOps ops;
  ops.mark = &RecordMark;
  ops.object_dead = &RecordDead;
  ops.resurrects = resurrects;
  gofin::internal::RegisterSpecialKind(kind, ops);
}

bool KindLess(std::uint32_t oa, SpecialKind ka, std::uint32_t ob, SpecialKind kb) {
  return oa < ob || (oa == ob && static_cast<int>(ka) < static_cast<int>(kb));
}

std::atomic<int> g_counted_dtors{0};
struct Counted {
  std::uint64_t canary = 0xC0FFEEULL;
  void* pad = nullptr;  // a pointer: never tiny
  ~Counted() { g_counted_dtors.fetch_add(1); }
};

// A 64-byte scanned object of its own (Alloc pads by one byte: 63 + 1).
[[gnu::noinline]] char* New64() { return static_cast<char*>(gofin::Alloc(63)); }

// Three 4-byte noscan objects that share one tiny block, or false.
[[gnu::noinline]] bool ThreeInOneTinyBlock(std::uint32_t* out[3]) {
  for (int attempt = 0; attempt < 32; ++attempt) {
    auto* a = gofin::New<std::uint32_t>(0xA1A1A1A1U);
    auto* b = gofin::New<std::uint32_t>(0xB2B2B2B2U);
    auto* c = gofin::New<std::uint32_t>(0xC3C3C3C3U);
    if (BaseOf(a) != 0 && BaseOf(a) == BaseOf(b) && BaseOf(b) == BaseOf(c)) {
      out[0] = a;
      out[1] = b;
      out[2] = c;
      return true;
    }
  }
  return false;
}

class SpecialsEnv : public ::testing::Environment {
 public:
  void SetUp() override {
    old_ = gofin::debug::SetGCPercent(-1);
    // These tests take every kind over with recorders, the heap profile's too: no sampled
    // allocation may add a profile record of its own to their objects.
    gofin::SetMemProfileRate(0);
    // The profile registers its kind at the first thread's registration: before the tests
    // take the kinds over, not in the middle of one.
    gofin::internal::InitMemProfile();
    gofin::internal::InitSpecials();
  }
  void TearDown() override { gofin::debug::SetGCPercent(old_); }

 private:
  int old_ = 100;
};
[[maybe_unused]] ::testing::Environment* const g_env =
    ::testing::AddGlobalTestEnvironment(new SpecialsEnv);

class Specials : public ::testing::Test {
 protected:
  void SetUp() override {
    for (SpecialKind k : kKinds) RegisterRecorder(k, false);
    CollectClean();  // anything left by an earlier test is delivered now, not during this one
    ResetEvents();
  }
  void TearDown() override {
    CollectClean();
    for (SpecialKind k : kKinds) gofin::internal::RegisterSpecialKind(k, SpecialKindOps{});
  }
};

// Adds a fresh record of `kind` at p; returns it, or nullptr (freed) if AddSpecial refused.
Special* Add(const void* p, SpecialKind kind) {
  Special* s = NewSpecial(kind);
  if (!AddSpecial(p, s)) {
    FreeSpecialRecord(s);
    return nullptr;
  }
  return s;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Records and their lookup
// ---------------------------------------------------------------------------------------------

TEST_F(Specials, NewSpecialSetsTheKind) {
  for (SpecialKind k : kKinds) {
    Special* s = NewSpecial(k);
    ASSERT_NE(s, nullptr);
    EXPECT_EQ(s->kind, k);
    FreeSpecialRecord(s);
  }
}

TEST_F(Specials, AddHasRemove) {
  gofin::Root<char> obj(New64());
  Special* s = NewSpecial(SpecialKind::kProfile);
  ASSERT_TRUE(AddSpecial(obj.get(), s));
  EXPECT_EQ(s->kind, SpecialKind::kProfile);
  EXPECT_EQ(s->offset, static_cast<std::uint32_t>(reinterpret_cast<std::uintptr_t>(obj.get()) -
                                                  SpanStartOf(obj.get())))
      << "offset is from the span's start";
  EXPECT_TRUE(HasSpecial(obj.get(), SpecialKind::kProfile));
  for (SpecialKind k : {SpecialKind::kFinalizer, SpecialKind::kWeakHandle, SpecialKind::kCleanup}) {
    EXPECT_FALSE(HasSpecial(obj.get(), k)) << "kind " << static_cast<int>(k);
    EXPECT_EQ(RemoveSpecial(obj.get(), k), nullptr) << "kind " << static_cast<int>(k);
  }
  // Only the exact address matches.
  EXPECT_FALSE(HasSpecial(obj.get() + 8, SpecialKind::kProfile));
  EXPECT_EQ(RemoveSpecial(obj.get() + 8, SpecialKind::kProfile), nullptr);
  EXPECT_TRUE(HasSpecial(obj.get(), SpecialKind::kProfile));

  EXPECT_EQ(RemoveSpecial(obj.get(), SpecialKind::kProfile), s) << "returns the very record";
  EXPECT_FALSE(HasSpecial(obj.get(), SpecialKind::kProfile));
  EXPECT_EQ(RemoveSpecial(obj.get(), SpecialKind::kProfile), nullptr) << "removed only once";
  FreeSpecialRecord(s);

  // Adding again after removal works.
  Special* t = Add(obj.get(), SpecialKind::kProfile);
  ASSERT_NE(t, nullptr);
  EXPECT_TRUE(HasSpecial(obj.get(), SpecialKind::kProfile));
  EXPECT_EQ(RemoveSpecial(obj.get(), SpecialKind::kProfile), t);
  FreeSpecialRecord(t);
}

TEST_F(Specials, DuplicateRejectedOriginalKept) {
  gofin::Root<char> obj(New64());
  Special* first = Add(obj.get(), SpecialKind::kCleanup);
  ASSERT_NE(first, nullptr);
  Special* dup = NewSpecial(SpecialKind::kCleanup);
  EXPECT_FALSE(AddSpecial(obj.get(), dup)) << "same address, same kind";
  FreeSpecialRecord(dup);

  // Another kind at the same address, and the same kind at another offset, are distinct.
  Special* other_kind = Add(obj.get(), SpecialKind::kWeakHandle);
  Special* other_offset = Add(obj.get() + 16, SpecialKind::kCleanup);
  EXPECT_NE(other_kind, nullptr);
  EXPECT_NE(other_offset, nullptr);

  EXPECT_EQ(RemoveSpecial(obj.get(), SpecialKind::kCleanup), first)
      << "the rejected duplicate must not have replaced the original";
  EXPECT_EQ(RemoveSpecial(obj.get(), SpecialKind::kCleanup), nullptr);
  EXPECT_TRUE(HasSpecial(obj.get(), SpecialKind::kWeakHandle));
  EXPECT_TRUE(HasSpecial(obj.get() + 16, SpecialKind::kCleanup));
  EXPECT_EQ(RemoveSpecial(obj.get(), SpecialKind::kWeakHandle), other_kind);
  EXPECT_EQ(RemoveSpecial(obj.get() + 16, SpecialKind::kCleanup), other_offset);
  for (Special* s : {first, other_kind, other_offset}) {
    if (s != nullptr) FreeSpecialRecord(s);
  }
}

// 8 offsets x 4 kinds inserted in many random orders: every record is found, every duplicate
// is refused (the search stops early at the first larger (offset, kind) — that is only correct
// if the list is sorted), and removal in another random order returns the exact records and
// leaves the rest in place.
TEST_F(Specials, AnyInsertionOrderKeepsLookupAndDuplicateDetectionExact) {
  gofin::Root<char> obj(New64());
  struct Key {
    std::uint32_t off;
    SpecialKind kind;
  };
  std::vector<Key> keys;
  for (std::uint32_t off = 0; off < 64; off += 8) {
    for (SpecialKind k : kKinds) keys.push_back(Key{off, k});
  }
  for (unsigned seed = 1; seed <= 25; ++seed) {
    std::mt19937 rng(seed);
    std::vector<std::size_t> order(keys.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::shuffle(order.begin(), order.end(), rng);
    std::vector<Special*> rec(keys.size(), nullptr);
    for (std::size_t i : order) {
      rec[i] = Add(obj.get() + keys[i].off, keys[i].kind);
      ASSERT_NE(rec[i], nullptr) << "seed " << seed << " off " << keys[i].off;
    }
    std::shuffle(order.begin(), order.end(), rng);
    int dup_accepted = 0;
    for (std::size_t i : order) {
      Special* dup = NewSpecial(keys[i].kind);
      if (AddSpecial(obj.get() + keys[i].off, dup)) {
        ++dup_accepted;
        // Take the duplicate out again (whichever record RemoveSpecial finds first).
        Special* r = RemoveSpecial(obj.get() + keys[i].off, keys[i].kind);
        if (r == dup) {
          FreeSpecialRecord(dup);
        } else if (r == rec[i]) {
          rec[i] = dup;
          FreeSpecialRecord(r);
        }
      } else {
        FreeSpecialRecord(dup);
      }
    }
    EXPECT_EQ(dup_accepted, 0) << "seed " << seed << ": duplicates accepted";
    std::shuffle(order.begin(), order.end(), rng);
    std::vector<bool> present(keys.size(), true);
    for (std::size_t i : order) {
      EXPECT_EQ(RemoveSpecial(obj.get() + keys[i].off, keys[i].kind), rec[i])
          << "seed " << seed << " off " << keys[i].off << " kind "
          << static_cast<int>(keys[i].kind);
      present[i] = false;
      if (seed <= 3) {  // the full cross-check is quadratic: a few seeds suffice
        for (std::size_t j = 0; j < keys.size(); ++j) {
          EXPECT_EQ(HasSpecial(obj.get() + keys[j].off, keys[j].kind), present[j])
              << "seed " << seed << " after removing #" << i << ", key #" << j;
        }
      }
      FreeSpecialRecord(rec[i]);
    }
  }
}

// The sweeper hands a dead object's records to their kinds in list order: (offset, kind).
TEST_F(Specials, SweepDeliversRecordsInOffsetKindOrder) {
  std::atomic<std::uintptr_t> base_enc{0};
  std::atomic<std::size_t> elemsize{0};
  std::atomic<int> added{0};
  InThread([&] {
    char* p = New64();
    base_enc = Encode(p);
    elemsize = ElemSizeOf(p);
    std::vector<std::pair<std::uint32_t, SpecialKind>> keys;
    for (std::uint32_t off = 0; off < 64; off += 8) {
      for (SpecialKind k : kKinds) keys.emplace_back(off, k);
    }
    std::mt19937 rng(12345);
    std::shuffle(keys.begin(), keys.end(), rng);
    for (auto [off, kind] : keys) {
      if (Add(p + off, kind) != nullptr) added.fetch_add(1);
    }
  });
  ASSERT_EQ(added.load(), 32);
  CollectClean();
  const std::vector<DeadEvent> ev = DeadEvents();
  ASSERT_EQ(ev.size(), 32U) << "every record of the dead object is delivered once";
  for (std::size_t i = 0; i < ev.size(); ++i) {
    const std::uint32_t in_obj =
        static_cast<std::uint32_t>(Encode(ev[i].addr_enc) - Encode(base_enc.load()));
    EXPECT_EQ(in_obj, static_cast<std::uint32_t>(i / 4) * 8) << "event " << i;
    EXPECT_EQ(ev[i].kind, kKinds[i % 4]) << "event " << i;
    EXPECT_EQ(ev[i].size, elemsize.load()) << "event " << i;
    if (i > 0) {
      EXPECT_TRUE(KindLess(ev[i - 1].offset, ev[i - 1].kind, ev[i].offset, ev[i].kind))
          << "events " << i - 1 << ", " << i << " out of (offset, kind) order";
    }
  }
  // Records were freed with the object: nothing is delivered again.
  CollectClean();
  CollectClean();
  EXPECT_EQ(g_ndead.load(), 32);
}

TEST_F(Specials, RecordsOfLiveObjectsStayAndAreMarkedWithTheObjectBase) {
  gofin::Root<char> obj(New64());
  Special* s = Add(obj.get() + 24, SpecialKind::kProfile);
  ASSERT_NE(s, nullptr);
  const std::uintptr_t base_enc = Encode(obj.get());
  ResetEvents();
  CollectClean();
  CollectClean();
  EXPECT_EQ(g_ndead.load(), 0) << "the object is alive: its record is not delivered";
  const int n = std::min(g_nmarks.load(), kMaxEvents);
  int seen = 0;
  for (int i = 0; i < n; ++i) {
    if (g_marks[i].kind == SpecialKind::kProfile && g_marks[i].base_enc == base_enc) {
      ++seen;
      EXPECT_EQ(g_marks[i].offset, s->offset);
    }
  }
  EXPECT_EQ(seen, 2) << "the mark hook runs once per cycle per record, with the object's base";
  EXPECT_TRUE(HasSpecial(obj.get() + 24, SpecialKind::kProfile));
  EXPECT_EQ(RemoveSpecial(obj.get() + 24, SpecialKind::kProfile), s);
  FreeSpecialRecord(s);
}

TEST_F(Specials, NonHeapAddressesHaveNoRecords) {
  int local = 0;
  static int global = 0;
  void* m = std::malloc(64);
  for (SpecialKind k : kKinds) {
    EXPECT_FALSE(HasSpecial(&local, k));
    EXPECT_FALSE(HasSpecial(&global, k));
    EXPECT_FALSE(HasSpecial(m, k));
    EXPECT_EQ(RemoveSpecial(&local, k), nullptr);
    EXPECT_EQ(RemoveSpecial(&global, k), nullptr);
    EXPECT_EQ(RemoveSpecial(m, k), nullptr);
  }
  std::free(m);
}

// ---------------------------------------------------------------------------------------------
// Tiny blocks: several objects, several records, one 16-byte block
// ---------------------------------------------------------------------------------------------

TEST_F(Specials, TinyBlockOffsets) {
  std::uint32_t* t[3] = {};
  if (!ThreeInOneTinyBlock(t)) GTEST_SKIP() << "could not get three objects in one tiny block";
  gofin::Root<std::uint32_t> r0(t[0]), r1(t[1]), r2(t[2]);
  t[0] = t[1] = t[2] = nullptr;
  const std::uintptr_t base = BaseOf(r0.get());
  EXPECT_EQ(ElemSizeOf(r0.get()), 16U);
  EXPECT_NE(reinterpret_cast<std::uintptr_t>(r1.get()), base) << "b is an inner pointer";

  Special* s[3];
  std::uint32_t* objs[3] = {r0.get(), r1.get(), r2.get()};
  for (int i = 2; i >= 0; --i) {  // inserted against address order
    s[i] = Add(objs[i], SpecialKind::kProfile);
    ASSERT_NE(s[i], nullptr) << i;
    EXPECT_EQ(s[i]->offset, static_cast<std::uint32_t>(reinterpret_cast<std::uintptr_t>(objs[i]) -
                                                       SpanStartOf(objs[i])));
    EXPECT_EQ(s[i]->offset % 16,
              static_cast<std::uint32_t>(reinterpret_cast<std::uintptr_t>(objs[i]) - base));
  }
  Special* cleanup_mid = Add(objs[1], SpecialKind::kCleanup);
  ASSERT_NE(cleanup_mid, nullptr);
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(HasSpecial(objs[i], SpecialKind::kProfile)) << i;
    Special* dup = NewSpecial(SpecialKind::kProfile);
    EXPECT_FALSE(AddSpecial(objs[i], dup)) << "duplicate at tiny offset " << i;
    FreeSpecialRecord(dup);
  }
  // Offsets of the block that hold no record.
  for (std::uintptr_t a = base; a < base + 16; ++a) {
    bool is_obj = false;
    for (auto* o : objs) is_obj |= reinterpret_cast<std::uintptr_t>(o) == a;
    if (!is_obj) {
      EXPECT_FALSE(HasSpecial(reinterpret_cast<void*>(a), SpecialKind::kProfile))
          << "offset " << a - base;
    }
  }
  // Removing the middle one leaves the others (and the middle one's other kind).
  EXPECT_EQ(RemoveSpecial(objs[1], SpecialKind::kProfile), s[1]);
  EXPECT_FALSE(HasSpecial(objs[1], SpecialKind::kProfile));
  EXPECT_TRUE(HasSpecial(objs[1], SpecialKind::kCleanup));
  EXPECT_TRUE(HasSpecial(objs[0], SpecialKind::kProfile));
  EXPECT_TRUE(HasSpecial(objs[2], SpecialKind::kProfile));
  EXPECT_EQ(RemoveSpecial(objs[0], SpecialKind::kProfile), s[0]);
  EXPECT_EQ(RemoveSpecial(objs[2], SpecialKind::kProfile), s[2]);
  EXPECT_EQ(RemoveSpecial(objs[1], SpecialKind::kCleanup), cleanup_mid);
  for (Special* x : {s[0], s[1], s[2], cleanup_mid}) FreeSpecialRecord(x);
}

// The block dies as a unit: all its records are delivered in one sweep, in offset order, each
// with its exact address; while one of its objects is reachable, none is.
TEST_F(Specials, TinyBlockRecordsDeliveredTogetherOnlyWhenTheBlockDies) {
  static gofin::Root<std::uint32_t> keep;  // holds the last object of the block for a while
  std::atomic<std::uintptr_t> enc[3] = {0, 0, 0};
  std::atomic<bool> ok{false};
  InThread([&] {
    std::uint32_t* t[3] = {};
    if (!ThreeInOneTinyBlock(t)) return;
    for (int i = 0; i < 3; ++i) {
      enc[i] = Encode(t[i]);
      if (Add(t[i], SpecialKind::kProfile) == nullptr) return;
    }
    keep = t[2];
    ok = true;
  });
  if (!ok.load()) GTEST_SKIP() << "could not get three objects in one tiny block";
  CollectClean();
  CollectClean();
  EXPECT_EQ(g_ndead.load(), 0) << "one object of the block is reachable: the block lives";
  keep.reset();
  CollectClean();
  const std::vector<DeadEvent> ev = DeadEvents();
  ASSERT_EQ(ev.size(), 3U) << "all three records go in the same cycle";
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(ev[i].addr_enc, enc[i].load()) << "record " << i << ": exact address, offset order";
    EXPECT_EQ(ev[i].kind, SpecialKind::kProfile);
    EXPECT_EQ(ev[i].size, 16U);
  }
  CollectClean();
  EXPECT_EQ(g_ndead.load(), 3);
}

// ---------------------------------------------------------------------------------------------
// Resurrecting kinds
// ---------------------------------------------------------------------------------------------

// A kind registered as resurrecting (what finalizers are) keeps its object for one more cycle;
// the other kinds' records stay attached and go when the object really dies.
TEST_F(Specials, ResurrectingKindKeepsObjectOneMoreCycle) {
  RegisterRecorder(SpecialKind::kProfile, /*resurrects=*/true);
  const int dtors0 = g_counted_dtors.load();
  std::atomic<std::uintptr_t> enc{0};
  std::atomic<int> added{0};
  InThread([&] {
    auto* c = gofin::New<Counted>();
    enc = Encode(c);
    for (SpecialKind k : {SpecialKind::kCleanup, SpecialKind::kProfile, SpecialKind::kWeakHandle}) {
      if (Add(c, k) != nullptr) added.fetch_add(1);
    }
  });
  ASSERT_EQ(added.load(), 3);
  CollectClean();
  std::vector<DeadEvent> ev = DeadEvents();
  ASSERT_EQ(ev.size(), 1U) << "first cycle: only the resurrecting record is delivered";
  EXPECT_EQ(ev[0].kind, SpecialKind::kProfile);
  EXPECT_EQ(ev[0].addr_enc, enc.load());
  EXPECT_EQ(g_counted_dtors.load() - dtors0, 0) << "resurrected: not freed";

  CollectClean();
  ev = DeadEvents();
  ASSERT_EQ(ev.size(), 3U) << "second cycle: the object dies with its remaining records";
  EXPECT_EQ(ev[1].kind, SpecialKind::kWeakHandle);
  EXPECT_EQ(ev[2].kind, SpecialKind::kCleanup);
  EXPECT_EQ(ev[1].addr_enc, enc.load());
  EXPECT_EQ(ev[2].addr_enc, enc.load());
  EXPECT_EQ(g_counted_dtors.load() - dtors0, 1) << "freed by the second cycle";

  CollectClean();
  EXPECT_EQ(g_ndead.load(), 3);
  EXPECT_EQ(g_counted_dtors.load() - dtors0, 1);
}

// With a resurrecting record at any offset of a tiny block, the whole block lives one more
// cycle and every resurrecting record of the block is delivered in the same cycle.
TEST_F(Specials, ResurrectingRecordsOfATinyBlockAreDeliveredTogether) {
  RegisterRecorder(SpecialKind::kProfile, /*resurrects=*/true);
  std::atomic<bool> ok{false};
  InThread([&] {
    std::uint32_t* t[3] = {};
    if (!ThreeInOneTinyBlock(t)) return;
    if (Add(t[0], SpecialKind::kProfile) == nullptr) return;
    if (Add(t[1], SpecialKind::kCleanup) == nullptr) return;
    if (Add(t[2], SpecialKind::kProfile) == nullptr) return;
    ok = true;
  });
  if (!ok.load()) GTEST_SKIP() << "could not get three objects in one tiny block";
  CollectClean();
  std::vector<DeadEvent> ev = DeadEvents();
  ASSERT_EQ(ev.size(), 2U);
  EXPECT_EQ(ev[0].kind, SpecialKind::kProfile);
  EXPECT_EQ(ev[1].kind, SpecialKind::kProfile);
  EXPECT_LT(ev[0].offset, ev[1].offset);
  CollectClean();
  ev = DeadEvents();
  ASSERT_EQ(ev.size(), 3U);
  EXPECT_EQ(ev[2].kind, SpecialKind::kCleanup);
}

// ---------------------------------------------------------------------------------------------
// Large objects
// ---------------------------------------------------------------------------------------------

TEST_F(Specials, LargeObject) {
  constexpr std::size_t kBytes = 100 * 1024;
  std::atomic<std::uintptr_t> enc{0};
  std::atomic<std::size_t> elemsize{0};
  std::atomic<int> failures{0};
  InThread([&] {
    char* p = static_cast<char*>(gofin::Alloc(kBytes));
    enc = Encode(p);
    elemsize = ElemSizeOf(p);
    Special* a = Add(p + 50000, SpecialKind::kCleanup);
    Special* b = Add(p, SpecialKind::kCleanup);
    Special* c = Add(p + 50000, SpecialKind::kWeakHandle);
    if (a == nullptr || b == nullptr || c == nullptr) failures.fetch_add(1);
    if (Add(p + 50000, SpecialKind::kCleanup) != nullptr) failures.fetch_add(1);
    if (!HasSpecial(p + 50000, SpecialKind::kCleanup) || !HasSpecial(p, SpecialKind::kCleanup)) {
      failures.fetch_add(1);
    }
    if (HasSpecial(p + 8, SpecialKind::kCleanup)) failures.fetch_add(1);
  });
  EXPECT_EQ(failures.load(), 0);
  EXPECT_GE(elemsize.load(), kBytes);
  CollectClean();
  const std::vector<DeadEvent> ev = DeadEvents();
  ASSERT_EQ(ev.size(), 3U);
  EXPECT_EQ(ev[0].addr_enc, enc.load());
  EXPECT_EQ(ev[0].kind, SpecialKind::kCleanup);
  EXPECT_EQ(ev[1].addr_enc, Encode(Encode(enc.load()) + 50000));
  EXPECT_EQ(ev[1].kind, SpecialKind::kWeakHandle);
  EXPECT_EQ(ev[2].addr_enc, Encode(Encode(enc.load()) + 50000));
  EXPECT_EQ(ev[2].kind, SpecialKind::kCleanup);
  for (const DeadEvent& e : ev) EXPECT_EQ(e.size, elemsize.load());
}

// ---------------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------------

// Threads add, look up and remove records on distinct objects of the same spans while another
// thread collects: every operation sees exactly its own records, and no record of these live
// objects is ever delivered. The workers register (ThreadScope: the specials layer itself does
// not register a thread, and only registered threads are stopped for a collection) and do not
// exit before the collector has stopped: a thread that exits during a collection blocks on the
// registry's mutex, where ThreadSanitizer holds back the stop signal (see
// test_finalizer_threads.cpp, CollectionsFromSeveralThreadsWhileThreadsComeAndGo).
TEST_F(Specials, ConcurrentAddRemoveWithCollections) {
  Watchdog dog("ConcurrentAddRemoveWithCollections");
  constexpr int kThreads = 4;
  constexpr int kObjects = 256;
  constexpr int kRounds = 200;
  std::vector<gofin::Root<char>> objs;
  objs.reserve(kObjects);
  for (int i = 0; i < kObjects; ++i) objs.emplace_back(New64());
  std::atomic<int> errors{0};
  std::atomic<bool> stop{false};
  std::atomic<int> collections{0};
  std::atomic<int> finished{0};
  std::atomic<bool> may_exit{false};
  std::thread collector([&] {
    do {  // at least one collection, however the threads are scheduled
      gofin::GC();
      collections.fetch_add(1);
    } while (!stop.load());
  });
  std::vector<std::thread> workers;
  for (int t = 0; t < kThreads; ++t) {
    workers.emplace_back([&, t] {
      gofin::ThreadScope scope;
      for (int round = 0; round < kRounds; ++round) {
        for (int i = t; i < kObjects; i += kThreads) {
          char* p = objs[i].get();
          Special* a = Add(p + 8 * (round % 8), SpecialKind::kCleanup);
          Special* b = Add(p, SpecialKind::kWeakHandle);
          if (a == nullptr || b == nullptr) errors.fetch_add(1);
          if (Add(p, SpecialKind::kWeakHandle) != nullptr) errors.fetch_add(1);
          if (!HasSpecial(p + 8 * (round % 8), SpecialKind::kCleanup)) errors.fetch_add(1);
          if (RemoveSpecial(p, SpecialKind::kWeakHandle) != b) errors.fetch_add(1);
          if (RemoveSpecial(p + 8 * (round % 8), SpecialKind::kCleanup) != a) errors.fetch_add(1);
          if (HasSpecial(p, SpecialKind::kWeakHandle)) errors.fetch_add(1);
          if (a != nullptr) FreeSpecialRecord(a);
          if (b != nullptr) FreeSpecialRecord(b);
        }
      }
      finished.fetch_add(1);
      while (!may_exit.load()) std::this_thread::yield();  // stoppable: atomics only
    });
  }
  while (finished.load() < kThreads) std::this_thread::yield();
  stop = true;
  collector.join();
  may_exit = true;
  for (auto& w : workers) w.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(g_ndead.load(), 0);
  EXPECT_GT(collections.load(), 0);
}

// Records move through per-thread caches. A thread that exits must hand its cached records
// back (the thread registry's exit hook), or every short-lived thread would strand up to a
// cache's worth: 2,000 threads, each taking and returning 40 records of two kinds, must leave
// the number of records drawn from the fixalloc bounded by what a few caches and the shared
// chains hold, not growing with the number of threads.
TEST_F(Specials, RecordCachesOfExitedThreadsAreReturned) {
  using gofin::internal::SpecialRecordsOutstanding;
  constexpr int kThreads = 2000;
  constexpr int kRecords = 40;
  auto one_thread = [] {
    gofin::ThreadScope scope;  // registered: its cache is flushed when it unregisters
    std::vector<Special*> taken;
    taken.reserve(2 * kRecords);
    for (int i = 0; i < kRecords; ++i) {
      taken.push_back(NewSpecial(SpecialKind::kFinalizer));
      taken.push_back(NewSpecial(SpecialKind::kCleanup));
    }
    for (Special* s : taken) FreeSpecialRecord(s);
  };
  std::thread(one_thread).join();  // warm: the first chains exist
  const std::size_t fin0 = SpecialRecordsOutstanding(SpecialKind::kFinalizer);
  const std::size_t cln0 = SpecialRecordsOutstanding(SpecialKind::kCleanup);
  for (int t = 0; t < kThreads; ++t) std::thread(one_thread).join();
  const std::size_t fin1 = SpecialRecordsOutstanding(SpecialKind::kFinalizer);
  const std::size_t cln1 = SpecialRecordsOutstanding(SpecialKind::kCleanup);
  // A leak of even one record per thread would add 2,000.
  EXPECT_LT(fin1, fin0 + 200) << "finalizer records stranded in exited threads' caches";
  EXPECT_LT(cln1, cln0 + 200) << "cleanup records stranded in exited threads' caches";
}

// A thread that takes a single record refills its cache with a chain of fresh records from the
// fixalloc when no shared chain is left; at exit the untouched ones go back to their fixalloc
// by kind, so they must carry it (fresh records once had kind 0, which no case of the exit
// path's free matched: 31 records, about 1 KiB, stranded per thread).
TEST_F(Specials, FreshRecordsOfAnExitedThreadGoBackToTheirFixalloc) {
  using gofin::internal::SpecialRecordsOutstanding;
  constexpr int kThreads = 300;
  // Each thread keeps one record (as a SetFinalizer leaves one attached): the other 31 of its
  // fresh chain stay in its cache until it exits.
  std::vector<Special*> kept;
  auto one_thread = [&kept] {
    gofin::ThreadScope scope;
    kept.push_back(NewSpecial(SpecialKind::kProfile));  // no chains of this kind exist
  };
  std::thread(one_thread).join();
  const std::size_t before = SpecialRecordsOutstanding(SpecialKind::kProfile);
  for (int t = 0; t < kThreads; ++t) std::thread(one_thread).join();
  const std::size_t after = SpecialRecordsOutstanding(SpecialKind::kProfile);
  EXPECT_LT(after, before + kThreads + 64) << "fresh records stranded in exited threads' caches";
  for (Special* r : kept) FreeSpecialRecord(r);
}

// A sweep that frees a million records hands them to the shared stack of chains, which has no
// cap: records come back whole to the next thread that wants them, not from fresh fixalloc
// memory, and each comes back default-constructed (the chains are linked through the first
// record's storage).
TEST_F(Specials, RecordsFreedInBulkComeBackThroughTheSharedChains) {
  using gofin::internal::SpecialFinalizer;
  using gofin::internal::SpecialRecordsOutstanding;
  constexpr int kRecords = 50000;  // more than the 1,024 chains of 32 the stack once held
  std::vector<Special*> taken;
  taken.reserve(kRecords);
  auto take_all = [&] {
    gofin::ThreadScope scope;
    for (int i = 0; i < kRecords; ++i) taken.push_back(NewSpecial(SpecialKind::kFinalizer));
  };
  auto give_all = [&] {
    gofin::ThreadScope scope;
    for (Special* s : taken) {
      auto* f = static_cast<SpecialFinalizer*>(s);
      f->ctx = &taken;  // payload a reused record must not carry back
      f->invoke = [](void*, void*) {};
      FreeSpecialRecord(s);
    }
    taken.clear();
  };
  std::thread(take_all).join();
  std::thread(give_all).join();
  const std::size_t before = SpecialRecordsOutstanding(SpecialKind::kFinalizer);
  int bad = 0;
  std::thread([&] {
    take_all();
    for (Special* s : taken) {
      const auto* f = static_cast<const SpecialFinalizer*>(s);
      if (s->kind != SpecialKind::kFinalizer || s->next != nullptr || f->ctx != nullptr ||
          f->invoke != nullptr) {
        ++bad;
      }
    }
  }).join();
  const std::size_t after = SpecialRecordsOutstanding(SpecialKind::kFinalizer);
  EXPECT_EQ(bad, 0) << "reused records must come back default-constructed";
  // Taking them again draws (almost) nothing new from the fixalloc.
  EXPECT_LT(after, before + 100) << "records freed in bulk did not come back through the chains";
  std::thread(give_all).join();
}
