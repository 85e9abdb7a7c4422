// Collection (API.md "Collection"): unreachable objects are freed exactly once, their memory
// is reused, GC() returns after every destructor of what it freed ran, destructors may
// allocate and call GC(), and ReadMemStats' fields keep Go's relations.
//
// Objects meant to be garbage are created in threads that exit before the collection (their
// stacks are gone, so no stale word can keep anything alive) or in [[gnu::noinline]] helpers
// followed by a stack clobber; "freed" is measured with destructor counters and MemStats.
#include <gtest/gtest.h>
#include <pthread.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <gofin/gofin.hpp>
#include <mutex>
#include <thread>
#include <vector>

#include "gc/thread_registry.hpp"
#include "test_support.hpp"

namespace {

using gofin_test::ClobberStack;

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
#else
constexpr bool kSanitized = false;
#endif

constexpr std::uint64_t kMiB = std::uint64_t{1} << 20;

class Watchdog {
 public:
  explicit Watchdog(const char* what, std::chrono::seconds limit = std::chrono::seconds(120))
      : thread_([this, what, limit] {
          std::unique_lock lock(mu_);
          if (!cv_.wait_for(lock, limit, [this] { return done_; })) {
            std::fprintf(stderr, "WATCHDOG: '%s' did not finish within %lld s; aborting\n", what,
                         static_cast<long long>(limit.count()));
            std::abort();
          }
        }) {}
  ~Watchdog() {
    {
      std::lock_guard lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

// Before every test, the dead stack below gtest's per-test frames is zeroed, so that the test
// body's frame (whose unwritten slots, e.g. sanitizer redzones, would otherwise hold words
// left by earlier tests) starts clean.
class ClobberBeforeEachTest : public ::testing::EmptyTestEventListener {
  void OnTestStart(const ::testing::TestInfo& /*info*/) override { ClobberStack(); }
};
[[maybe_unused]] const bool g_clobber_registered = [] {
  ::testing::UnitTest::GetInstance()->listeners().Append(new ClobberBeforeEachTest);
  return true;
}();

[[gnu::noinline]] void CollectClean() {
  ClobberStack();
  gofin::GC();
}

// Runs fn on a thread that exits before this returns.
template <class F>
void InThread(F&& fn) {
  std::thread(std::forward<F>(fn)).join();
}

constexpr std::uint64_t kCanary = 0x9e3779b97f4a7c15ULL;
constexpr std::uint64_t kDead = 0xdeadbeefdeadbeefULL;

struct Tracked {
  Tracked(std::atomic<int>* c, std::uint64_t v) : counter(c), canary(kCanary ^ v), value(v) {}
  ~Tracked() {
    counter->fetch_add(1, std::memory_order_relaxed);
    canary = kDead;
    asm volatile("" : : "r"(this) : "memory");  // keep the store: it is not dead to us
  }
  Tracked(const Tracked&) = delete;
  Tracked& operator=(const Tracked&) = delete;
  [[nodiscard]] bool Ok(std::uint64_t v) const { return value == v && canary == (kCanary ^ v); }

  std::atomic<int>* counter;
  std::uint64_t canary;
  std::uint64_t value;
};

int Load(const std::atomic<int>& a) { return a.load(std::memory_order_relaxed); }

[[gnu::noinline]] void MakeGarbage(std::atomic<int>* counter, int n) {
  for (int i = 0; i < n; ++i) {
    auto* t = gofin::New<Tracked>(counter, static_cast<std::uint64_t>(i));
    asm volatile("" : : "r"(t) : "memory");
  }
}

// Every collection in this binary is an explicit GC() unless a test turns pacing back on.
class CollectorEnv : public ::testing::Environment {
 public:
  void SetUp() override { old_ = gofin::debug::SetGCPercent(-1); }
  void TearDown() override { gofin::debug::SetGCPercent(old_); }

 private:
  int old_ = 100;
};
[[maybe_unused]] ::testing::Environment* const g_env =
    ::testing::AddGlobalTestEnvironment(new CollectorEnv);

void ExpectHeapRelations(const gofin::MemStats& m, const char* where) {
  SCOPED_TRACE(where);
  EXPECT_LE(m.HeapInuse, m.HeapSys);
  EXPECT_EQ(m.HeapIdle, m.HeapSys - m.HeapInuse);
  EXPECT_LE(m.HeapReleased, m.HeapIdle);
  EXPECT_EQ(m.Mallocs - m.Frees, m.HeapObjects);
  EXPECT_GE(m.Mallocs, m.Frees);
  EXPECT_EQ(m.Alloc, m.HeapAlloc);
  EXPECT_LE(m.HeapAlloc, m.HeapInuse);
  EXPECT_LE(m.HeapAlloc, m.TotalAlloc);
  EXPECT_GE(m.Sys, m.HeapSys);
  EXPECT_GE(m.NumGC, m.NumForcedGC);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Unreachable objects are freed, exactly once
// ---------------------------------------------------------------------------------------------

TEST(Collector, UnreachableObjectsAreFreedExactlyOnce) {
  Watchdog wd("UnreachableObjectsAreFreedExactlyOnce");
  static std::atomic<int> dtors{0};
  dtors = 0;
  constexpr int kN = 20000;
  CollectClean();
  const gofin::MemStats base = gofin::ReadMemStats();

  std::mutex mu;
  std::condition_variable cv;
  bool allocated = false;
  bool drop = false;
  bool intact = true;
  gofin::MemStats mid{};
  std::thread t([&] {
    // The objects are kept in a scanned GC array held on this thread's stack.
    Tracked** keep = gofin::NewArray<Tracked*>(kN);
    for (int i = 0; i < kN; ++i) keep[i] = gofin::New<Tracked>(&dtors, i);
    {
      std::lock_guard lock(mu);
      allocated = true;
    }
    cv.notify_all();
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return drop; });
    for (int i = 0; i < kN; ++i) intact = intact && keep[i]->Ok(i);
  });
  {
    std::unique_lock lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(60), [&] { return allocated; }));
  }
  CollectClean();  // everything is reachable from t's stack
  mid = gofin::ReadMemStats();
  EXPECT_EQ(Load(dtors), 0) << "reachable objects were freed";
  EXPECT_GE(mid.HeapObjects, base.HeapObjects + kN + 1);
  {
    std::lock_guard lock(mu);
    drop = true;
  }
  cv.notify_all();
  t.join();
  EXPECT_TRUE(intact);

  CollectClean();
  // A stale word (seen once under ASan on a loaded machine) may keep the array one cycle
  // longer; it must not survive clean cycles.
  for (int i = 0; i < 3 && Load(dtors) < kN; ++i) CollectClean();
  EXPECT_EQ(Load(dtors), kN) << "every unreachable object's destructor runs once";
  const gofin::MemStats after = gofin::ReadMemStats();
  EXPECT_LE(after.HeapObjects, base.HeapObjects) << "HeapObjects did not drop back";
  EXPECT_GE(mid.HeapObjects - after.HeapObjects, static_cast<std::uint64_t>(kN + 1));
  EXPECT_GE(after.Frees - mid.Frees, static_cast<std::uint64_t>(kN + 1));
  EXPECT_LT(after.HeapAlloc, mid.HeapAlloc);
  EXPECT_GE(mid.HeapAlloc - after.HeapAlloc, static_cast<std::uint64_t>(kN) * sizeof(Tracked));
  ExpectHeapRelations(after, "after");

  // A second and third collection find nothing more to destroy: no double destruction.
  CollectClean();
  CollectClean();
  EXPECT_EQ(Load(dtors), kN);
}

// Leaves copies of a fresh object's address in the dead stack just below the caller's frame,
// where a deep call chain that allocated leaves them; returns only a scrambled address.
[[gnu::noinline]] std::uintptr_t LeaveStaleCopiesBelow(std::atomic<int>* dtors) {
  volatile std::uintptr_t slots[1024];
  const auto a = reinterpret_cast<std::uintptr_t>(gofin::New<Tracked>(dtors, 7));
  for (auto& slot : slots) slot = a;
  return ~a;
}

// GC() builds its frames on dead stack, and the unwritten slots of those frames are scanned as
// the collecting thread's stack: without clearing it first (bdwgc: GC_clear_stack), the object
// the caller made last survives the collection that should free it.
TEST(Collector, GCDoesNotScanStaleWordsBelowItsCaller) {
  Watchdog wd("GCDoesNotScanStaleWordsBelowItsCaller");
  static std::atomic<int> dtors{0};
  dtors = 0;
  const std::uintptr_t scrambled = LeaveStaleCopiesBelow(&dtors);
  gofin::GC();
  EXPECT_EQ(Load(dtors), 1) << "the object at 0x" << std::hex << ~scrambled
                            << " was kept by a stale word under GC()'s own frames";
}

// ---------------------------------------------------------------------------------------------
// Memory reuse
// ---------------------------------------------------------------------------------------------

TEST(Collector, FreedSmallObjectMemoryIsReused) {
  Watchdog wd("FreedSmallObjectMemoryIsReused");
  static std::atomic<int> dtors{0};
  dtors = 0;
  // 24 MiB of 32-byte objects per round (small in sanitizer builds).
  const int per_round = kSanitized ? 200000 : 800000;
  InThread([&] { MakeGarbage(&dtors, per_round); });
  CollectClean();
  ASSERT_EQ(Load(dtors), per_round);
  const gofin::MemStats first = gofin::ReadMemStats();
  for (int round = 1; round <= 5; ++round) {
    InThread([&] { MakeGarbage(&dtors, per_round); });
    CollectClean();
    EXPECT_EQ(Load(dtors), per_round * (round + 1));
  }
  const gofin::MemStats last = gofin::ReadMemStats();
  // The heap grew for the first round; later rounds reuse the same pages.
  EXPECT_LE(last.HeapSys, first.HeapSys + first.HeapSys / 8 + 4 * kMiB)
      << "HeapSys grew from " << first.HeapSys << " to " << last.HeapSys
      << ": freed memory is not reused";
  ExpectHeapRelations(last, "last");
}

namespace large {
std::atomic<int> g_dtors{0};
struct Big {
  std::uint64_t words[128 * 1024];  // 1 MiB: a large object
  ~Big() { g_dtors.fetch_add(1, std::memory_order_relaxed); }
};
[[gnu::noinline]] void MakeBigGarbage(int n) {
  for (int i = 0; i < n; ++i) {
    Big* b = gofin::New<Big>();
    b->words[0] = static_cast<std::uint64_t>(i);
    b->words[128 * 1024 - 1] = kCanary;
    asm volatile("" : : "r"(b) : "memory");
  }
}
}  // namespace large

TEST(Collector, LargeObjectsAreFreedAndTheirPagesReused) {
  Watchdog wd("LargeObjectsAreFreedAndTheirPagesReused");
  using large::g_dtors;
  g_dtors = 0;
  constexpr int kN = 64;  // 64 MiB per round
  CollectClean();
  const gofin::MemStats base = gofin::ReadMemStats();
  InThread([] { large::MakeBigGarbage(kN); });
  const gofin::MemStats mid = gofin::ReadMemStats();
  EXPECT_GE(mid.HeapInuse, base.HeapInuse + kN * kMiB);
  EXPECT_GE(mid.HeapObjects, base.HeapObjects + kN);
  CollectClean();
  EXPECT_EQ(Load(g_dtors), kN);
  const gofin::MemStats first = gofin::ReadMemStats();
  EXPECT_LE(first.HeapInuse, base.HeapInuse + 2 * kMiB) << "large objects' pages stay in use";
  EXPECT_LE(first.HeapObjects, base.HeapObjects);
  for (int round = 1; round <= 4; ++round) {
    InThread([] { large::MakeBigGarbage(kN); });
    CollectClean();
    EXPECT_EQ(Load(g_dtors), kN * (round + 1));
  }
  const gofin::MemStats last = gofin::ReadMemStats();
  EXPECT_LE(last.HeapSys, first.HeapSys + 8 * kMiB)
      << "HeapSys grew from " << first.HeapSys << " to " << last.HeapSys
      << ": freed large-object pages are not reused";
  ExpectHeapRelations(last, "last");
}

// ---------------------------------------------------------------------------------------------
// GC() returns after every destructor of what it freed ran
// ---------------------------------------------------------------------------------------------

namespace slow_dtor {
std::atomic<int> g_dtors{0};
std::atomic<std::uint64_t> g_sink{0};  // destructors run on several threads at once
struct Slow {
  std::uint64_t v = 0;
  ~Slow() {
    // Some work, so that the sweep takes a while and a racing return would show.
    std::uint64_t h = v;
    for (int i = 0; i < 50; ++i) h = h * 6364136223846793005ULL + 1442695040888963407ULL;
    g_sink.store(h, std::memory_order_relaxed);
    g_dtors.fetch_add(1, std::memory_order_relaxed);
  }
};
[[gnu::noinline]] void MakeSlowGarbage(int n) {
  for (int i = 0; i < n; ++i) gofin::New<Slow>()->v = static_cast<std::uint64_t>(i);
}
}  // namespace slow_dtor

TEST(Collector, GCReturnsOnlyAfterAllDestructorsRan) {
  Watchdog wd("GCReturnsOnlyAfterAllDestructorsRan", std::chrono::seconds(300));
  using slow_dtor::g_dtors;
  g_dtors = 0;
  const int n = kSanitized ? 50000 : 200000;
  // Another thread allocates throughout, so spans are also swept by allocation and by the
  // background sweeper while GC() runs.
  std::atomic<bool> stop{false};
  static std::atomic<int> noise_dtors{0};
  std::thread noise([&] {
    while (!stop.load(std::memory_order_relaxed)) MakeGarbage(&noise_dtors, 1000);
  });
  int expected = 0;
  for (int round = 0; round < 5; ++round) {
    InThread([&] { slow_dtor::MakeSlowGarbage(n); });
    expected += n;
    CollectClean();
    EXPECT_EQ(Load(g_dtors), expected)
        << "GC() returned before its destructors ran (round " << round << ")";
  }
  stop.store(true);
  noise.join();
}

// ---------------------------------------------------------------------------------------------
// Destructors that allocate or call GC()
// ---------------------------------------------------------------------------------------------

namespace alloc_in_dtor {
std::atomic<int> g_outer{0};
std::atomic<int> g_inner{0};
struct AllocatesInDtor {
  std::uint64_t v = 0;
  ~AllocatesInDtor() {
    // Small (same and other size classes) and large allocations while the sweeper runs.
    auto* t = gofin::New<Tracked>(&g_inner, v);
    void* small = gofin::Alloc(200);
    void* big = (v % 64 == 0) ? gofin::AllocNoScan(100000) : nullptr;
    asm volatile("" : : "r"(t), "r"(small), "r"(big) : "memory");
    g_outer.fetch_add(1, std::memory_order_relaxed);
  }
};
[[gnu::noinline]] void MakeGarbage(int n) {
  for (int i = 0; i < n; ++i) gofin::New<AllocatesInDtor>()->v = static_cast<std::uint64_t>(i);
}
}  // namespace alloc_in_dtor

TEST(Collector, DestructorsMayAllocateDuringSweep) {
  Watchdog wd("DestructorsMayAllocateDuringSweep");
  using namespace alloc_in_dtor;  // NOLINT
  g_outer = 0;
  g_inner = 0;
  const int n = kSanitized ? 5000 : 20000;
  InThread([&] { alloc_in_dtor::MakeGarbage(n); });
  CollectClean();
  EXPECT_EQ(Load(g_outer), n);
  EXPECT_EQ(Load(g_inner), 0);
  // What the destructors allocated is garbage for the next collection: the sweeping frames
  // that held it are gofin's own (dead below this frame, or on the unregistered background
  // sweeper), never roots.
  CollectClean();
  EXPECT_EQ(Load(g_inner), n);
  EXPECT_EQ(Load(g_outer), n);
}

namespace gc_in_dtor {
std::atomic<int> g_dtors{0};
struct CallsGC {
  ~CallsGC() {
    gofin::GC();  // on the destructor thread: collects, without waiting for itself
    g_dtors.fetch_add(1, std::memory_order_relaxed);
  }
};
[[gnu::noinline]] void MakeGarbage(int n) {
  for (int i = 0; i < n; ++i) {
    auto* p = gofin::New<CallsGC>();
    asm volatile("" : : "r"(p) : "memory");
  }
}
}  // namespace gc_in_dtor

TEST(Collector, GCInsideADestructorCollectsAndReturns) {
  Watchdog wd("GCInsideADestructorCollectsAndReturns");
  using gc_in_dtor::g_dtors;
  g_dtors = 0;
  constexpr int kN = 100;
  InThread([] { gc_in_dtor::MakeGarbage(kN); });
  const std::uint64_t gcs_before = gofin::ReadMemStats().NumGC;
  CollectClean();
  const std::uint64_t gcs_after = gofin::ReadMemStats().NumGC;
  EXPECT_EQ(Load(g_dtors), kN);
  // Destructors run on gofin's destructor thread, outside every collection: a GC() there is
  // a collection like any other, and GC() returned after all of them.
  EXPECT_EQ(gcs_after - gcs_before, 1U + kN) << "each GC() called from a destructor collects";
}

namespace stats_in_dtor {
std::atomic<int> g_dtors{0};
std::atomic<int> g_bad{0};
struct ReadsStats {
  ~ReadsStats() {
    const gofin::MemStats m = gofin::ReadMemStats();
    if (m.HeapInuse > m.HeapSys) g_bad.fetch_add(1, std::memory_order_relaxed);
    g_dtors.fetch_add(1, std::memory_order_relaxed);
  }
};
[[gnu::noinline]] void MakeGarbage(int n) {
  for (int i = 0; i < n; ++i) {
    auto* p = gofin::New<ReadsStats>();
    asm volatile("" : : "r"(p) : "memory");
  }
}
}  // namespace stats_in_dtor

// Destructors are user code; reading the statistics from one must not hang (Go lets a
// finalizer call runtime.ReadMemStats).
TEST(Collector, ReadMemStatsInsideADestructorDoesNotDeadlock) {
  Watchdog wd("ReadMemStatsInsideADestructorDoesNotDeadlock", std::chrono::seconds(30));
  using namespace stats_in_dtor;  // NOLINT
  g_dtors = 0;
  g_bad = 0;
  InThread([] { stats_in_dtor::MakeGarbage(100); });
  CollectClean();
  EXPECT_EQ(Load(g_dtors), 100);
  EXPECT_EQ(Load(g_bad), 0);
}

// ---------------------------------------------------------------------------------------------
// ReadMemStats
// ---------------------------------------------------------------------------------------------

TEST(Collector, MemStatsRelationsHold) {
  CollectClean();
  const gofin::MemStats m0 = gofin::ReadMemStats();
  ExpectHeapRelations(m0, "m0");
  EXPECT_NE(m0.LastGC, 0U) << "LastGC is zero after a GC";
  const auto now_ns =
      static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                     std::chrono::system_clock::now().time_since_epoch())
                                     .count());
  EXPECT_LE(m0.LastGC, now_ns) << "LastGC is in the future (it is Unix nanoseconds)";
  EXPECT_GE(m0.LastGC, now_ns - 60ULL * 1000000000ULL) << "LastGC is not Unix nanoseconds";
  EXPECT_GT(m0.PauseTotalNs, 0U);
  EXPECT_GT(m0.NextGC, 0U);

  // Allocation moves the cumulative counters by what was allocated.
  static std::atomic<int> dtors{0};
  dtors = 0;
  constexpr int kN = 1000;
  InThread([] { MakeGarbage(&dtors, kN); });
  const gofin::MemStats m1 = gofin::ReadMemStats();
  ExpectHeapRelations(m1, "m1");
  EXPECT_EQ(m1.Mallocs - m0.Mallocs, static_cast<std::uint64_t>(kN));
  EXPECT_GE(m1.TotalAlloc - m0.TotalAlloc, kN * sizeof(Tracked));
  EXPECT_EQ(m1.HeapObjects - m0.HeapObjects, static_cast<std::uint64_t>(kN));
  EXPECT_EQ(m1.NumGC, m0.NumGC) << "pacing is off: nothing but GC() collects";
  EXPECT_EQ(m1.LastGC, m0.LastGC);
  EXPECT_EQ(m1.PauseTotalNs, m0.PauseTotalNs);

  // One GC(): NumGC and NumForcedGC by exactly one; PauseTotalNs and LastGC grow.
  CollectClean();
  const gofin::MemStats m2 = gofin::ReadMemStats();
  ExpectHeapRelations(m2, "m2");
  EXPECT_EQ(m2.NumGC, m1.NumGC + 1);
  EXPECT_EQ(m2.NumForcedGC, m1.NumForcedGC + 1);
  EXPECT_GT(m2.PauseTotalNs, m1.PauseTotalNs);
  EXPECT_GT(m2.LastGC, m1.LastGC);
  EXPECT_EQ(m2.TotalAlloc, m1.TotalAlloc) << "TotalAlloc is cumulative: a GC never lowers it";
  EXPECT_EQ(m2.Mallocs, m1.Mallocs);
  // At least the kN objects (an object an earlier test left on some thread's stack may go too).
  EXPECT_GE(m2.Frees - m1.Frees, static_cast<std::uint64_t>(kN));
  EXPECT_GE(m1.HeapObjects - m2.HeapObjects, static_cast<std::uint64_t>(kN));
  EXPECT_EQ(Load(dtors), kN);

  for (int i = 0; i < 5; ++i) CollectClean();
  const gofin::MemStats m3 = gofin::ReadMemStats();
  EXPECT_EQ(m3.NumGC, m2.NumGC + 5);
  EXPECT_EQ(m3.NumForcedGC, m2.NumForcedGC + 5);
  EXPECT_GE(m3.TotalAlloc, m2.TotalAlloc);
}

namespace {
// 48-byte objects (a size class of its own), made and dropped on a short-lived thread.
struct Obj48 {
  std::uint64_t w[6];
};
[[gnu::noinline]] void Make48(int n) {
  for (int i = 0; i < n; ++i) gofin::KeepAlive(gofin::New<Obj48>());
}
}  // namespace

TEST(Collector, MemStatsPausesCPUFractionAndBySize) {
  CollectClean();
  const gofin::MemStats m0 = gofin::ReadMemStats();
  ASSERT_GT(m0.NumGC, 0U);
  // Go: the most recent cycle is at (NumGC+255)%256; its end is LastGC.
  const std::size_t last0 = (m0.NumGC + 255) % 256;
  EXPECT_GT(m0.PauseNs[last0], 0U);
  EXPECT_EQ(m0.PauseEnd[last0], m0.LastGC);
  EXPECT_EQ(m0.Lookups, 0U);
  EXPECT_GT(m0.GCCPUFraction, 0.0);
  EXPECT_LE(m0.GCCPUFraction, 1.0);

  // Three more cycles fill the next three slots, in order, and their pauses add up to what
  // PauseTotalNs grew by.
  for (int i = 0; i < 3; ++i) CollectClean();
  const gofin::MemStats m1 = gofin::ReadMemStats();
  ASSERT_EQ(m1.NumGC, m0.NumGC + 3);
  std::uint64_t sum = 0;
  for (std::uint64_t k = m0.NumGC + 1; k <= m1.NumGC; ++k) {
    const std::size_t slot = (k + 255) % 256;
    EXPECT_GT(m1.PauseNs[slot], 0U) << "cycle " << k;
    EXPECT_GE(m1.PauseEnd[slot], m1.PauseEnd[(k + 254) % 256]) << "cycle " << k;
    sum += m1.PauseNs[slot];
  }
  EXPECT_EQ(m1.PauseTotalNs - m0.PauseTotalNs, sum);
  EXPECT_EQ(m1.PauseEnd[(m1.NumGC + 255) % 256], m1.LastGC);
  EXPECT_EQ(m1.PauseNs[last0], m0.PauseNs[last0]) << "an older slot was rewritten";

  // BySize: Go's 61 classes with their sizes; the 48-byte objects (49 with New's padding
  // byte) land in the smallest class that holds them, and their frees too once collected.
  EXPECT_EQ(m1.BySize[0].Size, 0U);
  for (std::size_t c = 1; c < 61; ++c) {
    EXPECT_GT(m1.BySize[c].Size, m1.BySize[c - 1].Size);
    EXPECT_GE(m1.BySize[c].Mallocs, m1.BySize[c].Frees);
  }
  EXPECT_EQ(m1.BySize[60].Size, 18432U) << "Go reports classes 0..60 only";
  constexpr int kN = 5000;
  InThread([] { Make48(kN); });
  const gofin::MemStats m2 = gofin::ReadMemStats();
  std::size_t grown = 0;
  for (std::size_t c = 1; c < 61; ++c) {
    if (m2.BySize[c].Mallocs - m1.BySize[c].Mallocs == static_cast<std::uint64_t>(kN)) grown = c;
  }
  ASSERT_NE(grown, 0U) << "no class counted the allocations";
  EXPECT_GE(m2.BySize[grown].Size, sizeof(Obj48));
  EXPECT_LT(m2.BySize[grown - 1].Size, sizeof(Obj48) + 1);
  CollectClean();
  const gofin::MemStats m3 = gofin::ReadMemStats();
  EXPECT_GE(m3.BySize[grown].Frees - m2.BySize[grown].Frees, static_cast<std::uint64_t>(kN) - 16);
}

TEST(Collector, MemStatsStayConsistentUnderConcurrentAllocation) {
  Watchdog wd("MemStatsStayConsistentUnderConcurrentAllocation");
  static std::atomic<int> dtors{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&] {
      int i = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        MakeGarbage(&dtors, 500);
        if (++i % 8 == 0) {
          void* big = gofin::Alloc(64 * 1024);
          asm volatile("" : : "r"(big) : "memory");
        }
      }
    });
  }
  gofin::MemStats prev = gofin::ReadMemStats();
  const int reads = kSanitized ? 100 : 400;
  for (int i = 0; i < reads; ++i) {
    if (i % 50 == 25) gofin::GC();
    const gofin::MemStats m = gofin::ReadMemStats();
    ExpectHeapRelations(m, "concurrent");
    EXPECT_GE(m.TotalAlloc, prev.TotalAlloc);
    EXPECT_GE(m.Mallocs, prev.Mallocs);
    EXPECT_GE(m.Frees, prev.Frees);
    EXPECT_GE(m.NumGC, prev.NumGC);
    EXPECT_GE(m.PauseTotalNs, prev.PauseTotalNs);
    EXPECT_GE(m.LastGC, prev.LastGC);
    prev = m;
    if (::testing::Test::HasFailure()) break;
  }
  stop.store(true);
  for (auto& th : threads) th.join();
}

// ---------------------------------------------------------------------------------------------
// gofin's own threads are not roots
// ---------------------------------------------------------------------------------------------

// Once a destructor run by the background sweeper allocates, the sweeper thread is registered
// like a mutator thread. API.md: "gofin's own frames and the dead stack below them are never
// roots", so its idle stack must keep nothing alive. The same sequence as
// DestructorsMayAllocateDuringSweep followed by LargeObjectsAreFreedAndTheirPagesReused:
// every round's 1 MiB objects, made in a thread that exited, must all be freed.
TEST(Collector, SweeperThreadFramesAreNotRootsAfterDestructorsAllocate) {
  Watchdog wd("SweeperThreadFramesAreNotRootsAfterDestructorsAllocate", std::chrono::seconds(300));
  const int n = kSanitized ? 5000 : 20000;
  for (int i = 0; i < 2; ++i) {
    InThread([&] { alloc_in_dtor::MakeGarbage(n); });
    CollectClean();
    CollectClean();
    CollectClean();
  }
  using large::g_dtors;
  g_dtors = 0;
  constexpr int kN = 64;
  int expected = 0;
  for (int round = 0; round < 8; ++round) {
    InThread([] { large::MakeBigGarbage(kN); });
    expected += kN;
    CollectClean();
    EXPECT_EQ(Load(g_dtors), expected)
        << "round " << round << ": " << expected - Load(g_dtors)
        << " unreachable 1 MiB objects survived (a gofin-internal thread's stack keeps them)";
  }
  const gofin::MemStats m = gofin::ReadMemStats();
  ExpectHeapRelations(m, "end");
}

// ---------------------------------------------------------------------------------------------
// gofin's own threads start on a cleared stack
// ---------------------------------------------------------------------------------------------

namespace {
constexpr std::uintptr_t kStale = 0x5a5a5a5a00c0ffeeULL;
constexpr std::size_t kFillWords = 2048;  // 16 KiB

// Copies of kStale right below the caller's frame, as an exited thread's frames leave its
// addresses there.
[[gnu::noinline]] void FillStack() {
  volatile std::uintptr_t words[kFillWords];
  for (auto& w : words) w = kStale;
}

// The words of the 16 KiB below this frame that still hold kStale: the stack a frame called
// from here would be built on. Read past the stack pointer on purpose (no sanitizer).
std::atomic<int> g_stale_words{-1};
std::atomic<std::uintptr_t> g_body_stack{0};
__attribute__((noinline, no_sanitize("address", "thread"))) void CountStaleBelow() {
  volatile char here = 0;
  const auto top = reinterpret_cast<std::uintptr_t>(&here) & ~std::uintptr_t{7};
  int stale = 0;
  for (std::size_t i = 1; i <= kFillWords; ++i) {
    if (*reinterpret_cast<volatile std::uintptr_t*>(top - i * 8) == kStale) ++stale;
  }
  g_body_stack.store(top);
  g_stale_words.store(stale);
}

std::uintptr_t StackTopOfThisThread() {
  pthread_attr_t attr;
  void* lo = nullptr;
  std::size_t size = 0;
  if (pthread_getattr_np(pthread_self(), &attr) != 0) return 0;
  pthread_attr_getstack(&attr, &lo, &size);
  pthread_attr_destroy(&attr);
  return reinterpret_cast<std::uintptr_t>(lo) + size;
}
}  // namespace

// glibc gives a new thread the cached stack of a thread that exited, without zeroing it.
// gofin's own threads (finalizer, cleanup, destructor, sweeper) wait scanned, in frames built
// on that stack: slots those frames leave unwritten must not hold the old thread's pointers,
// or every collection keeps their objects alive. RunGofinThread clears the stack below its
// frame before the thread's body runs.
TEST(GofinThreads, BodyRunsOnAClearedStack) {
  std::uintptr_t old_top = 0;
  std::thread([&old_top] {
    old_top = StackTopOfThisThread();
    FillStack();
  }).join();
  std::uintptr_t new_top = 0;
  std::thread([&new_top] {
    new_top = StackTopOfThisThread();
    gofin::internal::RunGofinThread("gofin-test", &CountStaleBelow);
  }).join();
  if (new_top != old_top) GTEST_SKIP() << "glibc did not reuse the exited thread's stack";
  ASSERT_GE(g_stale_words.load(), 0);
  EXPECT_EQ(g_stale_words.load(), 0)
      << "the body's stack still holds what the exited thread left there";
}
