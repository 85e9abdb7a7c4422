// The heap profile end to end (Go: runtime/mprof.go, runtime.MemProfile, pprof heap
// profiles): sampling at rate 1 counts every allocation (every tiny block) of the function
// that made it, exactly; frees are counted by the sweep that frees, and an object kept for its
// finalizer stays in use until the cycle that frees it; the profile is as of the most recent
// collection; at the default rate the unsampled totals are unbiased; go tool pprof reads what
// WriteHeapProfile writes.
//
// Allocations are made on short-lived threads and collections do not scan the test's stack
// (ExactGC), so that conservative scanning keeps no garbage alive and the counts are exact.
#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>

#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <gofin/gofin.hpp>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "profile/mem_profile.hpp"
#include "profile/symbolizer.hpp"
#include "test_support.hpp"

namespace {

using gofin::internal::profile::MemRecord;
using gofin::internal::profile::ReadMemProfile;
using gofin_test::ExactGC;

// The sums of the records whose stack passes through a function with `name` in its name.
struct Counts {
  std::int64_t alloc_objects = 0, alloc_bytes = 0, free_objects = 0, free_bytes = 0;
  int records = 0;
  [[nodiscard]] std::int64_t InuseObjects() const { return alloc_objects - free_objects; }
};

Counts CountsFor(const char* name) {
  gofin::internal::profile::Symbolizer sym;
  Counts c;
  for (const MemRecord& r : ReadMemProfile()) {
    bool match = false;
    for (std::uintptr_t pc : r.stack) {
      const auto* f = sym.Lookup(pc - 1);
      if (f != nullptr && f->name.find(name) != std::string::npos) {
        match = true;
        break;
      }
    }
    if (!match) continue;
    ++c.records;
    c.alloc_objects += r.alloc_objects;
    c.alloc_bytes += r.alloc_bytes;
    c.free_objects += r.free_objects;
    c.free_bytes += r.free_bytes;
  }
  return c;
}

template <class F>
void OnThread(F&& f) {
  std::thread(std::forward<F>(f)).join();
}

struct Obj64 {
  std::uint64_t w[7];  // 56 bytes, 57 with New's padding byte: the 64-byte class
};

gofin::Root<Obj64>* g_live = nullptr;  // malloc'd roots: each keeps one object

// Each allocating function has a body of its own (a distinct tag in the objects): gcc's
// identical code folding would otherwise merge them, and their frames would share one name.
[[gnu::noinline]] void ProfAllocLive(int n) {
  for (int i = 0; i < n; ++i) g_live[i] = gofin::New<Obj64>();
}
[[gnu::noinline]] void ProfAllocGarbage(int n) {
  for (int i = 0; i < n; ++i) gofin::KeepAlive(gofin::New<Obj64>()->w[0] = 0x6a7b);
}
[[gnu::noinline]] void ProfAllocLater(int n) {
  for (int i = 0; i < n; ++i) gofin::KeepAlive(gofin::New<Obj64>()->w[0] = 0x1a7e);
}

class HeapProfile : public ::testing::Test {
 protected:
  void SetUp() override {
    old_rate_ = gofin::SetMemProfileRate(1);
    ExactGC();
  }
  void TearDown() override { gofin::SetMemProfileRate(old_rate_); }
  int old_rate_ = 0;
};

TEST_F(HeapProfile, RateOneCountsLiveAndGarbageExactly) {
  constexpr int kLive = 100;
  constexpr int kGarbage = 300;
  auto roots = std::make_unique<gofin::Root<Obj64>[]>(kLive);
  g_live = roots.get();
  OnThread([] {
    ProfAllocLive(kLive);
    ProfAllocGarbage(kGarbage);
  });
  ExactGC();
  const Counts live = CountsFor("ProfAllocLive");
  const Counts garbage = CountsFor("ProfAllocGarbage");
  EXPECT_EQ(live.alloc_objects, kLive);
  EXPECT_EQ(live.free_objects, 0);
  EXPECT_EQ(live.alloc_bytes, kLive * 64);
  EXPECT_EQ(garbage.alloc_objects, kGarbage);
  EXPECT_EQ(garbage.free_objects, kGarbage);
  EXPECT_EQ(garbage.free_bytes, kGarbage * 64);

  // As of the most recent collection: what is allocated after it shows after the next one.
  OnThread([] { ProfAllocLater(50); });
  EXPECT_EQ(CountsFor("ProfAllocLater").alloc_objects, 0);
  ExactGC();
  const Counts later = CountsFor("ProfAllocLater");
  EXPECT_EQ(later.alloc_objects, 50);
  EXPECT_EQ(later.free_objects, 50);

  // The live ones die when dropped.
  roots.reset();
  g_live = nullptr;
  ExactGC();
  EXPECT_EQ(CountsFor("ProfAllocLive").free_objects, kLive);
}

std::atomic<int> g_finalized{0};

[[gnu::noinline]] void ProfAllocFinalized(int n) {
  for (int i = 0; i < n; ++i) {
    gofin::SetFinalizer(gofin::New<Obj64>(), [](Obj64*) { g_finalized.fetch_add(1); });
  }
}

// The seed's rule: an object with a finalizer and a profile record keeps the record while it
// is kept for its finalizer; the cycle that frees it counts the free.
TEST_F(HeapProfile, FinalizerKeepsTheRecordUntilTheObjectIsFreed) {
  g_finalized = 0;
  OnThread([] { ProfAllocFinalized(20); });
  gofin_test::CycleAndDrain();
  ASSERT_EQ(g_finalized.load(), 20);
  Counts c = CountsFor("ProfAllocFinalized");
  EXPECT_EQ(c.alloc_objects, 20);
  EXPECT_EQ(c.free_objects, 0) << "resurrected for their finalizers: still in use";
  gofin_test::CycleAndDrain();
  c = CountsFor("ProfAllocFinalized");
  EXPECT_EQ(c.free_objects, 20);
}

[[gnu::noinline]] void ProfAllocLarge(int n) {
  for (int i = 0; i < n; ++i) gofin::KeepAlive(gofin::NewArray<char>(100 * 1024));
}

TEST_F(HeapProfile, LargeObjects) {
  OnThread([] { ProfAllocLarge(5); });
  ExactGC();
  const Counts c = CountsFor("ProfAllocLarge");
  EXPECT_EQ(c.alloc_objects, 5);
  EXPECT_EQ(c.free_objects, 5);
  // A large object's slot is its pages.
  EXPECT_EQ(c.alloc_bytes % 5, 0);
  EXPECT_GE(c.alloc_bytes / 5, 100 * 1024);
  EXPECT_EQ(c.alloc_bytes % 8192, 0);
}

[[gnu::noinline]] void ProfAllocTiny(int n) {
  for (int i = 0; i < n; ++i) gofin::KeepAlive(gofin::AllocNoScan(7));  // 8 with the pad byte
}

// Go samples tiny allocations per 16-byte block (the allocation that starts one), as the
// sweep frees them.
TEST_F(HeapProfile, TinyAllocationsCountPerBlock) {
  OnThread([] { ProfAllocTiny(64); });
  ExactGC();
  const Counts c = CountsFor("ProfAllocTiny");
  EXPECT_EQ(c.alloc_objects, 32);
  EXPECT_EQ(c.alloc_bytes, 32 * 16);
  EXPECT_EQ(c.free_objects, 32);
}

[[gnu::noinline]] void ProfAllocOnManyThreads(int n) {
  for (int i = 0; i < n; ++i) gofin::KeepAlive(gofin::New<Obj64>()->w[1] = 0x7ead);
}

TEST_F(HeapProfile, ManyThreads) {
  constexpr int kThreads = 6;
  constexpr int kEach = 1000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) threads.emplace_back([] { ProfAllocOnManyThreads(kEach); });
  for (auto& t : threads) t.join();
  ExactGC();
  const Counts c = CountsFor("ProfAllocOnManyThreads");
  EXPECT_EQ(c.alloc_objects, kThreads * kEach);
  EXPECT_EQ(c.free_objects, kThreads * kEach);
}

[[gnu::noinline]] void ProfAllocWithRateZero(int n) {
  for (int i = 0; i < n; ++i) gofin::KeepAlive(gofin::New<Obj64>()->w[2] = 0x2e60);
}

TEST_F(HeapProfile, RateZeroSamplesNothing) {
  EXPECT_EQ(gofin::SetMemProfileRate(0), 1);
  OnThread([] { ProfAllocWithRateZero(10000); });
  ExactGC();
  EXPECT_EQ(CountsFor("ProfAllocWithRateZero").alloc_objects, 0);
  EXPECT_EQ(gofin::SetMemProfileRate(-1), 0) << "a negative rate only reads it";
}

// Go: scaleHeapSample.
std::pair<double, double> Unsample(std::int64_t count, std::int64_t size, int rate) {
  if (count == 0 || size == 0) return {0, 0};
  if (rate <= 1) return {static_cast<double>(count), static_cast<double>(size)};
  const double avg = static_cast<double>(size) / static_cast<double>(count);
  const double scale = 1 / (1 - std::exp(-avg / rate));
  return {static_cast<double>(count) * scale, static_cast<double>(size) * scale};
}

[[gnu::noinline]] void ProfAllocMixed(std::int64_t total) {
  std::uint64_t x = 88172645463325252ULL;
  std::int64_t bytes = 0;  // requested
  while (bytes < total) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    const std::size_t n = x % 7 == 0 ? 40000 + x % 60000 : 16 + x % 2000;
    gofin::KeepAlive(gofin::AllocNoScan(n));
    bytes += static_cast<std::int64_t>(n);
  }
}

// At the default rate (512 KiB), the unsampled totals of a 100 MiB workload of mixed sizes are
// unbiased. One workload's estimate has a standard deviation of about 7% here (some 200
// samples, most bytes in objects of 40-100 KB), so ten are measured: their mean is within 10%
// of what was allocated by a wide margin (4.5 standard deviations), and so is each one of them
// within 35%.
TEST(HeapProfileDefaultRate, UnsampledTotalsAreUnbiased) {
  constexpr int kRate = 512 * 1024;
  constexpr int kRounds = 10;
  gofin::SetMemProfileRate(kRate);
  double estimated = 0;
  double allocated = 0;
  double previous = 0;
  for (int round = 0; round < kRounds; ++round) {
    ExactGC();
    const std::uint64_t before = gofin::ReadMemStats().TotalAlloc;
    OnThread([] { ProfAllocMixed(std::int64_t{100} << 20); });
    // What the profile counts: the slots (size classes, pages), as TotalAlloc does.
    const auto slots = static_cast<double>(gofin::ReadMemStats().TotalAlloc - before);
    ExactGC();
    gofin::internal::profile::Symbolizer sym;
    double total = 0;  // every round so far: the records are cumulative
    for (const MemRecord& r : ReadMemProfile()) {
      bool match = false;
      for (std::uintptr_t pc : r.stack) {
        const auto* f = sym.Lookup(pc - 1);
        if (f != nullptr && f->name.find("ProfAllocMixed") != std::string::npos) match = true;
      }
      if (match) total += Unsample(r.alloc_objects, r.alloc_bytes, kRate).second;
    }
    const double bytes = total - previous;
    previous = total;
    EXPECT_GT(bytes, slots * 0.65) << "round " << round;
    EXPECT_LT(bytes, slots * 1.35) << "round " << round;
    estimated += bytes;
    allocated += slots;
  }
  EXPECT_GT(estimated, allocated * 0.9);
  EXPECT_LT(estimated, allocated * 1.1);
  std::printf("%d rounds: %.1f MiB allocated (slots), the profile says %.1f MiB (%+.1f%%)\n",
              kRounds, allocated / (1 << 20), estimated / (1 << 20),
              100 * (estimated / allocated - 1));
}

}  // namespace

namespace {

// The output of a command, and whether it exited with status 0.
std::pair<std::string, bool> RunCommand(const std::string& cmd) {
  std::string out;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (p == nullptr) return {"popen failed", false};
  std::array<char, 4096> buf{};
  while (std::fgets(buf.data(), buf.size(), p) != nullptr) out += buf.data();
  return {out, pclose(p) == 0};
}

bool HaveGo() { return RunCommand("go version").second; }

// The flat value of the first line of `go tool pprof -top` output that names fn.
long long FlatOf(const std::string& top, const char* fn) {
  std::istringstream in(top);
  std::string line;
  while (std::getline(in, line)) {
    if (line.find(fn) == std::string::npos) continue;
    return std::atoll(line.c_str() + line.find_first_not_of(' '));
  }
  return -1;
}

gofin::Root<Obj64>* g_top_live = nullptr;

[[gnu::noinline]] void TopAllocLive(int n) {
  for (int i = 0; i < n; ++i) g_top_live[i] = gofin::New<Obj64>();
}
[[gnu::noinline]] void TopAllocGarbage(int n) {
  for (int i = 0; i < n; ++i) gofin::KeepAlive(gofin::New<Obj64>()->w[3] = 0x6a4b);
}
[[gnu::noinline]] void TopAllocLarge(int n) {
  for (int i = 0; i < n; ++i) gofin::KeepAlive(gofin::NewArray<char>(200 * 1024)[1] = 'x');
}
[[gnu::noinline]] void TopAllocTiny(int n) {
  for (int i = 0; i < n; ++i) gofin::KeepAlive(gofin::AllocNoScan(3));  // 4 with the pad byte
}
std::atomic<int> g_top_finalized{0};
[[gnu::noinline]] void TopAllocFinalized(int n) {
  for (int i = 0; i < n; ++i) {
    gofin::SetFinalizer(gofin::New<Obj64>(), [](Obj64*) { g_top_finalized.fetch_add(1); });
  }
}

}  // namespace

// The real client: go tool pprof reads the profile and names the allocating functions with
// exact counts at rate 1.
TEST_F(HeapProfile, GoToolPprofReadsIt) {
  if (!HaveGo()) GTEST_SKIP() << "go is not on the PATH: go tool pprof cannot be run";
  constexpr int kLive = 70;
  auto roots = std::make_unique<gofin::Root<Obj64>[]>(kLive);
  g_top_live = roots.get();
  g_top_finalized = 0;
  std::vector<std::thread> threads;
  threads.emplace_back([] { TopAllocLive(kLive); });
  threads.emplace_back([] { TopAllocGarbage(110); });
  threads.emplace_back([] { TopAllocLarge(3); });
  threads.emplace_back([] { TopAllocTiny(64); });  // 4 per 16-byte block: 16 blocks
  threads.emplace_back([] { TopAllocFinalized(9); });
  for (auto& t : threads) t.join();
  gofin_test::CycleAndDrain();  // the finalizers ran; their objects are kept until the next
  ASSERT_EQ(g_top_finalized.load(), 9);

  const std::string path = ::testing::TempDir() + "gofin_heap_profile.pb.gz";
  {
    std::ofstream out(path, std::ios::binary);
    gofin::pprof::WriteHeapProfile(out);
  }
  const auto [inuse, ok1] =
      RunCommand("go tool pprof -top -nodefraction=0 -sample_index=inuse_objects " + path);
  ASSERT_TRUE(ok1) << inuse;
  const auto [alloc, ok2] =
      RunCommand("go tool pprof -top -nodefraction=0 -sample_index=alloc_objects " + path);
  ASSERT_TRUE(ok2) << alloc;
  SCOPED_TRACE("inuse_objects:\n" + inuse + "\nalloc_objects:\n" + alloc);
  EXPECT_EQ(FlatOf(inuse, "TopAllocLive"), kLive);
  EXPECT_EQ(FlatOf(alloc, "TopAllocLive"), kLive);
  EXPECT_EQ(FlatOf(inuse, "TopAllocGarbage"), -1) << "garbage is not in use";
  EXPECT_EQ(FlatOf(alloc, "TopAllocGarbage"), 110);
  EXPECT_EQ(FlatOf(alloc, "TopAllocLarge"), 3);
  EXPECT_EQ(FlatOf(alloc, "TopAllocTiny"), 16);
  EXPECT_EQ(FlatOf(inuse, "TopAllocFinalized"), 9) << "kept for their finalizers: in use";
  EXPECT_EQ(inuse.find("gofin::internal"), std::string::npos) << "gofin's frames are left out";
  EXPECT_EQ(inuse.find("gofin::New"), std::string::npos);
  roots.reset();
  g_top_live = nullptr;
}

namespace {

// What real programs allocate: objects with destructors (a std::string, a std::map, a
// pointer to themselves), which the allocator serves one object at a time and charges one at
// a time, unlike the runs of plain objects.
struct Record {
  std::string name = std::string(40, 'r');
  std::map<int, std::string> fields{{1, "one"}, {2, "two"}};
  Record* self = this;
};

gofin::Root<Record>* g_records = nullptr;

[[gnu::noinline]] void ProfAllocRecordsLive(int n) {
  for (int i = 0; i < n; ++i) g_records[i] = gofin::New<Record>();
}
[[gnu::noinline]] void ProfAllocRecordsGarbage(int n) {
  for (int i = 0; i < n; ++i) gofin::KeepAlive(gofin::New<Record>()->self);
}

}  // namespace

// Objects with destructors, on a thread that blocks every signal (gofin's stop signal is
// unblocked for it): exact counts at rate 1, and the garbage counted freed by the cycle that
// found it dead, while its destructors run on the destructor thread.
TEST_F(HeapProfile, ObjectsWithDestructorsOnASignalBlockingThread) {
  constexpr int kLive = 40;
  constexpr int kGarbage = 120;
  auto roots = std::make_unique<gofin::Root<Record>[]>(kLive);
  g_records = roots.get();
  OnThread([] {
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, nullptr);
    ProfAllocRecordsLive(kLive);
    ProfAllocRecordsGarbage(kGarbage);
  });
  gofin_test::CycleAndDrain();
  const Counts live = CountsFor("ProfAllocRecordsLive");
  const Counts garbage = CountsFor("ProfAllocRecordsGarbage");
  EXPECT_EQ(live.alloc_objects, kLive);
  EXPECT_EQ(live.free_objects, 0);
  EXPECT_EQ(garbage.alloc_objects, kGarbage);
  EXPECT_EQ(garbage.free_objects, kGarbage);
  for (int i = 0; i < kLive; ++i) {
    ASSERT_EQ(g_records[i]->self, g_records[i].get());
    ASSERT_EQ(g_records[i]->fields.at(2), "two");
  }
  roots.reset();
  g_records = nullptr;
  gofin_test::CycleAndDrain();
  EXPECT_EQ(CountsFor("ProfAllocRecordsLive").free_objects, kLive);
}
