// Pacing (API.md "Collection"; Go: runtime/debug.SetGCPercent, SetMemoryLimit, MemStats.NextGC):
// the previous values are returned, GOGC off means only GC() collects, GOGC n puts the heap
// goal at live x (1 + n/100) (at least 4 MiB x n/100), and a memory limit makes collections
// happen with GOGC off.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <gofin/gofin.hpp>
#include <limits>
#include <mutex>
#include <thread>

#include "test_support.hpp"

namespace {

using gofin_test::ClobberStack;

constexpr std::uint64_t kMiB = std::uint64_t{1} << 20;
constexpr std::int64_t kNoLimit = std::numeric_limits<std::int64_t>::max();

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

// The values the process started with (GOFIN_GOGC / GOFIN_MEMLIMIT or the defaults), read
// before any test changes them; every test restores them.
int g_initial_percent = 0;
std::int64_t g_initial_limit = 0;

class PacerEnv : public ::testing::Environment {
 public:
  void SetUp() override {
    g_initial_percent = gofin::debug::SetGCPercent(100);
    gofin::debug::SetGCPercent(g_initial_percent);
    g_initial_limit = gofin::debug::SetMemoryLimit(-1);
  }
};
[[maybe_unused]] ::testing::Environment* const g_env =
    ::testing::AddGlobalTestEnvironment(new PacerEnv);

class Pacer : public ::testing::Test {
 protected:
  void TearDown() override {
    gofin::debug::SetGCPercent(g_initial_percent);
    gofin::debug::SetMemoryLimit(g_initial_limit);
    live_.reset();
    CollectClean();
  }

  // A live heap of `mib` 1 MiB noscan blocks hanging off a rooted scan array.
  [[gnu::noinline]] void MakeLive(int mib) {
    live_ = gofin::NewArray<void*>(static_cast<std::size_t>(mib));
    FillLive(live_, mib);
  }
  [[gnu::noinline]] static void FillLive(gofin::Root<void*>& live, int mib) {
    for (int i = 0; i < mib; ++i) live.get()[i] = gofin::AllocNoScan(kMiB - 4096);
  }

  gofin::Root<void*> live_;
};

// Garbage: `mib` MiB in 64 KiB noscan blocks and 1 KiB scan objects, made on a thread that
// exits. Samples HeapInuse every 8 MiB (max into *peak, if given).
[[gnu::noinline]] void MakeGarbage(int mib, std::uint64_t* peak = nullptr) {
  std::thread([mib, peak] {
    for (int m = 0; m < mib; ++m) {
      for (int i = 0; i < 8; ++i) {
        void* p = gofin::AllocNoScan(64 * 1024);
        asm volatile("" : : "r"(p) : "memory");
      }
      for (int i = 0; i < 512; ++i) {
        void* p = gofin::Alloc(1000);
        asm volatile("" : : "r"(p) : "memory");
      }
      if (peak != nullptr && m % 8 == 7) {
        *peak = std::max(*peak, gofin::ReadMemStats().HeapInuse);
      }
    }
  }).join();
}

double Ratio(std::uint64_t a, std::uint64_t b) {
  return static_cast<double>(a) / static_cast<double>(b);
}

}  // namespace

TEST_F(Pacer, SetGCPercentReturnsThePreviousValue) {
  if (std::getenv("GOFIN_GOGC") == nullptr) {
    EXPECT_EQ(g_initial_percent, 100) << "GOGC defaults to 100";
  }
  const int before = gofin::debug::SetGCPercent(50);
  EXPECT_EQ(before, g_initial_percent);
  EXPECT_EQ(gofin::debug::SetGCPercent(75), 50);
  EXPECT_EQ(gofin::debug::SetGCPercent(0), 75);
  EXPECT_EQ(gofin::debug::SetGCPercent(-7), 0);
  EXPECT_EQ(gofin::debug::SetGCPercent(300), -1) << "a negative percent reads back as -1 (Go)";
  EXPECT_EQ(gofin::debug::SetGCPercent(before), 300);
}

TEST_F(Pacer, SetMemoryLimitReturnsThePreviousValueAndNegativeOnlyReads) {
  if (std::getenv("GOFIN_MEMLIMIT") == nullptr) {
    EXPECT_EQ(g_initial_limit, kNoLimit) << "no limit reads as math.MaxInt64 (Go)";
  }
  EXPECT_EQ(gofin::debug::SetMemoryLimit(-1), g_initial_limit);
  EXPECT_EQ(gofin::debug::SetMemoryLimit(std::int64_t{1} << 40), g_initial_limit);
  EXPECT_EQ(gofin::debug::SetMemoryLimit(-1), std::int64_t{1} << 40) << "-1 only reads";
  EXPECT_EQ(gofin::debug::SetMemoryLimit(-12345), std::int64_t{1} << 40) << "< 0 only reads";
  EXPECT_EQ(gofin::debug::SetMemoryLimit(std::int64_t{3} << 30), std::int64_t{1} << 40);
  EXPECT_EQ(gofin::debug::SetMemoryLimit(kNoLimit), std::int64_t{3} << 30);
  EXPECT_EQ(gofin::debug::SetMemoryLimit(-1), kNoLimit);
}

TEST_F(Pacer, GOGCOffWithoutALimitNeverCollectsAutomatically) {
  Watchdog wd("GOGCOffWithoutALimitNeverCollectsAutomatically");
  gofin::debug::SetGCPercent(-1);
  gofin::debug::SetMemoryLimit(kNoLimit);
  CollectClean();
  const gofin::MemStats m0 = gofin::ReadMemStats();
  MakeGarbage(64);
  const gofin::MemStats m1 = gofin::ReadMemStats();
  EXPECT_EQ(m1.NumGC, m0.NumGC) << "an automatic collection ran with GOGC off and no limit";
  EXPECT_GE(m1.HeapAlloc - m0.HeapAlloc, 64 * kMiB) << "the garbage should all still be there";
  CollectClean();
  const gofin::MemStats m2 = gofin::ReadMemStats();
  EXPECT_EQ(m2.NumGC, m1.NumGC + 1) << "GC() still collects";
  EXPECT_LT(m2.HeapAlloc, m1.HeapAlloc - 60 * kMiB);
}

TEST_F(Pacer, GOGC100CollectsAutomaticallyAndSetsTheGoalToTwiceTheLiveHeap) {
  Watchdog wd("GOGC100CollectsAutomaticallyAndSetsTheGoalToTwiceTheLiveHeap");
  gofin::debug::SetMemoryLimit(kNoLimit);
  gofin::debug::SetGCPercent(100);
  MakeLive(16);
  CollectClean();
  const gofin::MemStats m0 = gofin::ReadMemStats();
  ASSERT_GE(m0.HeapAlloc, 16 * kMiB - 64 * 1024);
  EXPECT_GE(Ratio(m0.NextGC, m0.HeapAlloc), 1.9)
      << "NextGC " << m0.NextGC << ", live " << m0.HeapAlloc;
  EXPECT_LE(Ratio(m0.NextGC, m0.HeapAlloc), 2.1)
      << "NextGC " << m0.NextGC << ", live " << m0.HeapAlloc;

  std::uint64_t peak = 0;
  MakeGarbage(256, &peak);
  const gofin::MemStats m1 = gofin::ReadMemStats();
  const std::uint64_t automatic = (m1.NumGC - m0.NumGC) - (m1.NumForcedGC - m0.NumForcedGC);
  EXPECT_GE(automatic, 8U) << "256 MiB of garbage over a 16 MiB live heap at GOGC 100";
  EXPECT_LE(automatic, 24U) << "far more cycles than the goal allows";
  EXPECT_LE(peak, 64 * kMiB) << "the heap grew to twice its 32 MiB goal";
  // After each automatic cycle the goal was recomputed from the same live heap.
  EXPECT_GE(Ratio(m1.NextGC, 16 * kMiB), 1.9);
  EXPECT_LE(Ratio(m1.NextGC, 16 * kMiB), 2.2);

  // Changing GOGC recomputes the goal at once (Go: SetGCPercent).
  CollectClean();
  const std::uint64_t live = gofin::ReadMemStats().HeapAlloc;
  gofin::debug::SetGCPercent(50);
  EXPECT_NEAR(Ratio(gofin::ReadMemStats().NextGC, live), 1.5, 0.1);
  gofin::debug::SetGCPercent(200);
  EXPECT_NEAR(Ratio(gofin::ReadMemStats().NextGC, live), 3.0, 0.15);
}

TEST_F(Pacer, SmallLiveHeapGoalIsAtLeastTheHeapMinimum) {
  gofin::debug::SetMemoryLimit(kNoLimit);
  gofin::debug::SetGCPercent(100);
  CollectClean();
  const gofin::MemStats m = gofin::ReadMemStats();
  ASSERT_LT(m.HeapAlloc, 1 * kMiB) << "expected a nearly empty heap";
  EXPECT_GE(m.NextGC, 4 * kMiB) << "Go's heap minimum is 4 MiB at GOGC 100";
  EXPECT_LE(m.NextGC, 5 * kMiB);
  // The minimum scales with GOGC.
  gofin::debug::SetGCPercent(200);
  EXPECT_GE(gofin::ReadMemStats().NextGC, 8 * kMiB);
}

TEST_F(Pacer, AMemoryLimitCollectsWithGOGCOff) {
  Watchdog wd("AMemoryLimitCollectsWithGOGCOff");
  gofin::debug::SetGCPercent(-1);
  gofin::debug::SetMemoryLimit(std::int64_t{48} << 20);
  CollectClean();
  const gofin::MemStats m0 = gofin::ReadMemStats();
  EXPECT_LE(m0.NextGC, 48 * kMiB) << "the limit caps the goal";
  std::uint64_t peak = 0;
  MakeGarbage(256, &peak);
  const gofin::MemStats m1 = gofin::ReadMemStats();
  const std::uint64_t automatic = (m1.NumGC - m0.NumGC) - (m1.NumForcedGC - m0.NumForcedGC);
  EXPECT_GE(automatic, 3U) << "256 MiB of garbage under a 48 MiB limit with GOGC off";
  EXPECT_LE(peak, 96 * kMiB) << "the heap grew to twice the memory limit";

  // Lifting the limit again: GOGC off, nothing collects.
  gofin::debug::SetMemoryLimit(kNoLimit);
  const gofin::MemStats m2 = gofin::ReadMemStats();
  MakeGarbage(64);
  const gofin::MemStats m3 = gofin::ReadMemStats();
  EXPECT_EQ(m3.NumGC, m2.NumGC);
}
