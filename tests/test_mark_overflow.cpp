// The mark queue's overflow (a capped queue, bdwgc's mark-stack overflow: past the cap the
// marker records an overflow and rescans the marked objects) must not lose what a finalized
// object references (Go's markrootSpans: everything reachable from an object with a finalizer
// stays alive until the finalizer ran). The finalized object itself is not marked, so a
// rescan that visits only marked objects never sees it: when pushing its contents fails (an
// object > 128 KiB is queued as oblets), its referents must still be marked.
//
// Setup: a small queue cap (internal::SetMarkQueueCapForTesting) and hundreds of thousands of
// distinct live scanned objects reachable from AddRoots ranges, so that the queue is full when
// markrootSpans reaches the finalized objects; unreachable 1 MiB gofin::Alloc objects with
// finalizers, whose every slot points to a referent (each referent also points to a leaf).
// Every other referent has a finalizer of its own; the others only a destructor. After GC():
// no referent or leaf may have been destroyed before the large objects' finalizers ran, and
// no referent's finalizer may run in the same cycle as the large object's (its only
// referrer).
//
// ctest runs this file with GOFIN_GCWORKERS=1 and 2 as well (tests/CMakeLists.txt).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <gofin/gofin.hpp>
#include <thread>
#include <utility>

#include "gc/marker.hpp"
#include "gc/work_queue.hpp"
#include "test_support.hpp"

namespace {

using namespace std::chrono_literals;

[[gnu::noinline]] void CollectClean() {
  gofin_test::ClobberStack();
  gofin::GC();
}

bool Drain() { return gofin::testing::BlockUntilEmptyFinalizerQueue(60s); }

using gofin_test::InThread;

int Load(const std::atomic<int>& a) { return a.load(); }

[[maybe_unused]] ::testing::Environment* const g_env =
    ::testing::AddGlobalTestEnvironment(new gofin_test::NoPacingEnvironment);

constexpr std::uint64_t kCanary = 0x9e3779b97f4a7c15ULL;
constexpr std::uint64_t kDead = 0xdeadbeefdeadbeefULL;

constexpr std::size_t kLive = 300000;  // live scanned objects reachable from the roots
constexpr std::size_t kRootRanges = 64;
constexpr int kBig = 2;                                  // finalized large objects
constexpr std::size_t kBigBytes = std::size_t{1} << 20;  // each 1 MiB of pointers
constexpr std::size_t kSlots = kBigBytes / sizeof(void*);
constexpr std::size_t kSlotsPerRef = 16;  // so that every oblet references its own referents
constexpr std::size_t kRefsPerBig = kSlots / kSlotsPerRef;
constexpr int kRefs = static_cast<int>(kRefsPerBig) * kBig;

std::atomic<int> g_cycle{0};

struct Live {
  void* p = nullptr;
  std::uint64_t v = kCanary;
};

std::atomic<int> g_leaf_dtors{0};
std::atomic<int> g_ref_dtors{0};
std::atomic<int> g_ref_fin_runs{0};
std::atomic<int> g_ref_fin_same_cycle{0};  // a referent finalized with its large object
std::atomic<int> g_ref_fin_bad{0};
std::atomic<int> g_big_runs{0};
std::atomic<int> g_big_cycle{0};
std::atomic<int> g_big_saw_dtors{0};  // referents/leaves destroyed before the finalizer ran
std::atomic<int> g_big_saw_fins{0};   // referents finalized before it ran
std::atomic<int> g_big_bad_slots{0};  // slots whose referent or leaf is damaged

// The canaries are atomics: if a referent is (wrongly) freed while the large object's finalizer
// reads it, the sweeper's destructor writes it concurrently.
struct Leaf {
  std::atomic<std::uint64_t> canary{kCanary};
  void* p = nullptr;
  ~Leaf() {
    canary.store(kDead, std::memory_order_relaxed);
    g_leaf_dtors.fetch_add(1);
  }
};

struct Ref {
  explicit Ref(int i) : id(i) {}
  ~Ref() {
    canary.store(kDead, std::memory_order_relaxed);
    g_ref_dtors.fetch_add(1);
  }
  Ref(const Ref&) = delete;
  Ref& operator=(const Ref&) = delete;
  [[nodiscard]] bool Ok() const {
    const Leaf* l = leaf.load(std::memory_order_relaxed);
    return canary.load(std::memory_order_relaxed) == kCanary && l != nullptr &&
           l->canary.load(std::memory_order_relaxed) == kCanary;
  }
  std::atomic<std::uint64_t> canary{kCanary};
  int id;
  std::atomic<Leaf*> leaf{nullptr};
};

void RefFin(Ref* r) {
  if (!r->Ok()) g_ref_fin_bad.fetch_add(1);
  // The large object's finalizer must have run, after an earlier cycle than this one.
  if (Load(g_big_runs) < kBig || g_big_cycle.load() >= g_cycle.load()) {
    g_ref_fin_same_cycle.fetch_add(1);
  }
  g_ref_fin_runs.fetch_add(1);
}

void BigFin(void** slots) {
  const int dtors = Load(g_ref_dtors) + Load(g_leaf_dtors);
  g_big_saw_dtors.fetch_add(dtors);
  g_big_saw_fins.fetch_add(Load(g_ref_fin_runs));
  if (dtors == 0) {  // otherwise the memory may be reused already: don't read it
    for (std::size_t i = 0; i < kSlots; ++i) {
      const auto* r = static_cast<const Ref*>(slots[i]);
      if (r == nullptr || !r->Ok()) g_big_bad_slots.fetch_add(1);
    }
  }
  g_big_cycle = g_cycle.load();
  g_big_runs.fetch_add(1);
}

[[gnu::noinline]] void MakeLive(void** roots) {
  for (std::size_t i = 0; i < kLive; ++i) roots[i] = gofin::New<Live>();
}

// The finalized large objects and their referents, reachable from nothing once this returns.
// The referents are allocated first, so that no span of theirs follows a large object in
// memory: a pointer to a span's first object, one past the end of a large object just below
// it, keeps that large object alive (API.md: one-past-the-end pointers keep their object).
// A dropped guard object follows the last large object for the same reason.
[[gnu::noinline]] void MakeBig() {
  auto** refs = static_cast<Ref**>(std::calloc(kRefs, sizeof(Ref*)));  // not scanned: no GC runs
  ASSERT_NE(refs, nullptr);
  for (int id = 0; id < kRefs; ++id) {
    auto* ref = gofin::New<Ref>(id);
    ref->leaf.store(gofin::New<Leaf>(), std::memory_order_relaxed);
    if (id % 2 == 1) gofin::SetFinalizer(ref, &RefFin);
    refs[id] = ref;
  }
  int id = 0;
  for (int b = 0; b < kBig; ++b) {
    auto** slots = static_cast<void**>(gofin::Alloc(kBigBytes));
    for (std::size_t r = 0; r < kRefsPerBig; ++r, ++id) {
      for (std::size_t k = 0; k < kSlotsPerRef; ++k) slots[r * kSlotsPerRef + k] = refs[id];
    }
    gofin::SetFinalizer(slots, &BigFin);
  }
  (void)gofin::AllocNoScan(kBigBytes);  // the guard
  std::free(refs);
}

class MarkOverflow : public ::testing::Test {
 protected:
  void SetUp() override {
    for (int i = 0; i < 3; ++i) {
      CollectClean();
      ASSERT_TRUE(Drain());
    }
  }
  void TearDown() override {
    gofin::internal::SetMarkQueueCapForTesting(0);  // the default again, whatever happened
    if (roots_ != nullptr) {
      for (std::size_t r = 0; r < kRootRanges; ++r) {
        gofin::RemoveRoots(roots_ + Lo(r), roots_ + Lo(r + 1));
      }
      std::free(roots_);
      roots_ = nullptr;
    }
  }
  static std::size_t Lo(std::size_t range) { return kLive * range / kRootRanges; }

  // Collects once with the world's roots full of live objects, then drains.
  void Cycle() {
    g_cycle.fetch_add(1);
    CollectClean();
    ASSERT_TRUE(Drain()) << "the finalizer queue did not drain within 60 s";
  }

  // The scenario, with the mark queue capped at cap_bytes (0: the default).
  void Run(std::size_t cap_bytes);

  void** roots_ = nullptr;
};

}  // namespace

void MarkOverflow::Run(std::size_t cap_bytes) {
  for (auto* c :
       {&g_leaf_dtors, &g_ref_dtors, &g_ref_fin_runs, &g_ref_fin_same_cycle, &g_ref_fin_bad,
        &g_big_runs, &g_big_cycle, &g_big_saw_dtors, &g_big_saw_fins, &g_big_bad_slots}) {
    c->store(0);
  }
  // Many distinct live scan objects, each reachable only from a malloc'd array given to
  // AddRoots in several ranges (so that every mark worker scans roots until they run out).
  roots_ = static_cast<void**>(std::calloc(kLive, sizeof(void*)));
  ASSERT_NE(roots_, nullptr);
  for (std::size_t r = 0; r < kRootRanges; ++r) {
    gofin::AddRoots(roots_ + Lo(r), roots_ + Lo(r + 1));
  }
  void** roots = roots_;
  InThread([roots] {
    MakeLive(roots);
    MakeBig();
  });

  gofin::internal::SetMarkQueueCapForTesting(cap_bytes);
  Cycle();
  ASSERT_EQ(Load(g_big_runs), kBig) << "the unreachable large objects were not finalized";
  // GC() returns once the destructors of everything it freed have run.
  EXPECT_EQ(Load(g_ref_dtors) + Load(g_leaf_dtors), 0)
      << "referents (or their leaves) reachable only from a finalized 1 MiB object were freed "
         "(destructors ran) by the cycle that queued its finalizer: the mark queue overflowed "
         "while its contents were queued, and the rescan visits only marked objects";
  // The finalizer thread may run a finalizer while that cycle's sweep is still going on.
  EXPECT_EQ(Load(g_big_saw_dtors), 0)
      << "referents or leaves were destroyed before the large object's finalizer ran";
  EXPECT_EQ(Load(g_big_saw_fins), 0)
      << "referents' own finalizers ran before the finalizer of the object referencing them";
  EXPECT_EQ(Load(g_big_bad_slots), 0) << "the finalized object's referents were damaged";
  EXPECT_EQ(Load(g_ref_fin_same_cycle), 0)
      << "referents were finalized in the same cycle as the large object, their only referrer";

  // Afterwards: the large objects are freed, then each referent is finalized (odd ids) or
  // freed, each once, within a bounded number of cycles.
  for (int i = 0; i < 8 && (Load(g_ref_fin_runs) < kRefs / 2 || Load(g_ref_dtors) < kRefs); ++i) {
    Cycle();
  }
  EXPECT_EQ(Load(g_ref_fin_runs), kRefs / 2) << "referents' finalizers";
  EXPECT_EQ(Load(g_ref_fin_bad), 0) << "a referent's finalizer saw it or its leaf damaged";
  EXPECT_EQ(Load(g_ref_dtors), kRefs) << "referents freed";
  EXPECT_EQ(Load(g_leaf_dtors), kRefs) << "leaves freed";
  EXPECT_EQ(Load(g_big_runs), kBig) << "a large object's finalizer ran twice";

  // The live objects survived every overflowed cycle.
  std::atomic<std::size_t> damaged{0};
  InThread([roots, &damaged] {
    for (std::size_t i = 0; i < kLive; ++i) {
      if (static_cast<const Live*>(roots[i])->v != kCanary) damaged.fetch_add(1);
    }
  });
  EXPECT_EQ(damaged.load(), 0U) << "live objects reachable from the roots were damaged";
}

// 8 buffers of ~510 entries: far fewer than the live objects the roots reach.
TEST_F(MarkOverflow, FinalizedLargeObjectKeepsItsReferentsAliveUntilItsFinalizerRan) {
  gofin_test::Watchdog dog("MarkOverflow.FinalizedLargeObjectKeepsItsReferentsAlive");
  Run(8 * sizeof(gofin::internal::WorkBuf));
}

// Control: the same heap with the default cap (no overflow) passes the same checks.
TEST_F(MarkOverflow, WithoutAnOverflowTheSameHeapKeepsThemToo) {
  gofin_test::Watchdog dog("MarkOverflow.WithoutAnOverflow");
  Run(0);
}
