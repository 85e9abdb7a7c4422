// Finalizers and threads (API.md "Finalizers"):
//   - one dedicated finalizer thread runs queued finalizers one at a time;
//   - every finalizer runs exactly once, never on a freed or reused object, with objects
//     allocated by many threads, with explicit and with automatic collections;
//   - SetFinalizer racing on one object: exactly one wins;
//   - a finalizer may allocate, set finalizers and call GC() (no deadlock), and its own stack
//     keeps what it holds alive;
//   - a finalizer that throws goes to SetFinalizerErrorHandler's handler on the finalizer
//     thread, which goes on; the default handler terminates;
//   - a finalizer that blocks delays the other finalizers but neither the collector nor the
//     allocating threads; ReadFinalizerStats shows the backlog.
// Go's BenchmarkFinalizerRun is ported as a correctness test.
//
// Conservative scanning: objects are allocated and dropped in short-lived threads that exit
// before the collection whose result is asserted (a dead thread's stack is not scanned).
// Waits are bounded (semaphore or condition-variable waits with timeouts,
// BlockUntilEmptyFinalizerQueue) and a watchdog aborts a hung test.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <gofin/gofin.hpp>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "test_support.hpp"
#include "test_wait.hpp"

namespace {

using gofin_test::Watchdog;

using namespace std::chrono_literals;

#if defined(__SANITIZE_THREAD__)
constexpr bool kTsan = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
constexpr bool kTsan = true;
#else
constexpr bool kTsan = false;
#endif
#else
constexpr bool kTsan = false;
#endif

// ThreadSanitizer holds back a signal while the thread is blocked in pthread_mutex_lock, so a
// registered thread blocked on a mutex cannot be stopped for a collection. Threads that may
// meet a collection while they wait therefore wait with gofin_test::Notifier (test_wait.hpp):
// in a semaphore wait, where the stop signal is delivered. The waits are bounded:
// a wait that times out fails the test instead of hanging it.
constexpr auto kWaitLimit = std::chrono::seconds(120);

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

bool Drain(std::chrono::nanoseconds t = 60s) {
  return gofin::testing::BlockUntilEmptyFinalizerQueue(t);
}

[[gnu::noinline]] void GCAndDrain() {
  CollectClean();
  ASSERT_TRUE(Drain()) << "the finalizer queue did not drain within 60 s";
}

template <class F>
void InThread(F&& f) {
  std::thread t(std::forward<F>(f));
  t.join();
}

int Load(const std::atomic<int>& a) { return a.load(); }

class ThreadsEnv : public ::testing::Environment {
 public:
  void SetUp() override { old_ = gofin::debug::SetGCPercent(-1); }
  void TearDown() override { gofin::debug::SetGCPercent(old_); }

 private:
  int old_ = 100;
};
[[maybe_unused]] ::testing::Environment* const g_env =
    ::testing::AddGlobalTestEnvironment(new ThreadsEnv);

class FinThreads : public ::testing::Test {
 protected:
  void SetUp() override {
    for (int i = 0; i < 3; ++i) GCAndDrain();
  }
  void TearDown() override { GCAndDrain(); }
};

// Tests are repeatable (--gtest_repeat): each one zeroes the global counters it uses first.
void Zero(std::initializer_list<std::atomic<int>*> counters) {
  for (std::atomic<int>* c : counters) c->store(0);
}

// Garbage, to make the collector work.
[[gnu::noinline]] void Churn(int n) {
  for (int i = 0; i < n; ++i) {
    void* p = gofin::Alloc(48);
    asm volatile("" : : "r"(p) : "memory");
  }
}

constexpr std::uint64_t kDeadCanary = 0xdeadbeefdeadbeefULL;

}  // namespace

// ---------------------------------------------------------------------------------------------
// The dedicated finalizer thread
// ---------------------------------------------------------------------------------------------

namespace {
std::mutex g_tid_mu;
std::set<std::thread::id>* g_fin_tids = new std::set<std::thread::id>();
std::atomic<int> g_running{0};
std::atomic<int> g_max_running{0};
std::atomic<int> g_one_runs{0};
struct Plain {
  std::uint64_t v = 1;
  void* p = nullptr;
};
void RecordingFin(Plain* /*p*/) {
  const int now = g_running.fetch_add(1) + 1;
  int m = g_max_running.load();
  while (now > m && !g_max_running.compare_exchange_weak(m, now)) {
  }
  {
    std::lock_guard lock(g_tid_mu);
    g_fin_tids->insert(std::this_thread::get_id());
  }
  for (int i = 0; i < 20; ++i) std::this_thread::yield();  // give an overlap a chance
  g_running.fetch_sub(1);
  g_one_runs.fetch_add(1);
}
}  // namespace

TEST_F(FinThreads, OneDedicatedThreadRunsThemOneAtATime) {
  Zero({&g_running, &g_max_running, &g_one_runs});
  {
    std::lock_guard lock(g_tid_mu);
    g_fin_tids->clear();
  }
  Watchdog dog("OneDedicatedThreadRunsThemOneAtATime");
  constexpr int kThreads = 4;
  constexpr int kPer = 200;
  std::set<std::thread::id> allocators;
  std::mutex alloc_mu;
  for (int round = 0; round < 2; ++round) {
    std::vector<std::thread> ts;
    for (int t = 0; t < kThreads; ++t) {
      ts.emplace_back([&] {
        {
          std::lock_guard lock(alloc_mu);
          allocators.insert(std::this_thread::get_id());
        }
        for (int i = 0; i < kPer; ++i) gofin::SetFinalizer(gofin::New<Plain>(), &RecordingFin);
      });
    }
    for (auto& t : ts) t.join();
    // Collections from another thread while the finalizers run.
    InThread([] {
      for (int i = 0; i < 5; ++i) gofin::GC();
    });
    GCAndDrain();
    EXPECT_EQ(Load(g_one_runs), (round + 1) * kThreads * kPer) << "round " << round;
  }
  EXPECT_EQ(Load(g_max_running), 1) << "finalizers ran concurrently";
  std::lock_guard lock(g_tid_mu);
  ASSERT_EQ(g_fin_tids->size(), 1U) << "finalizers ran on more than one thread";
  const std::thread::id fin_tid = *g_fin_tids->begin();
  EXPECT_NE(fin_tid, std::this_thread::get_id()) << "ran on the test thread";
  EXPECT_EQ(allocators.count(fin_tid), 0U) << "ran on an allocating thread";
}

// ---------------------------------------------------------------------------------------------
// Exactly once
// ---------------------------------------------------------------------------------------------

namespace {
constexpr int kGenThreads = 4;
constexpr int kGenPer = 10000;
constexpr int kGenObjects = kGenThreads * kGenPer;

std::uint64_t Mix(std::uint32_t id, std::uint32_t gen) {
  return ((std::uint64_t{gen} << 32 | id) * 0x9E3779B97F4A7C15ULL) ^ 0x5555AAAA5555AAAAULL;
}

// Per-object counters live outside the objects, in malloc'd arrays indexed by id (pointer-free,
// never scanned).
std::atomic<int>* g_gen_counts[4] = {};
std::atomic<int> g_gen_wrong_object{0};  // a finalizer saw another generation's object or garbage
std::atomic<int> g_gen_freed_early{0};   // the destructor ran before the finalizer
std::atomic<int> g_gen_dtors{0};

struct Rec {
  std::uint32_t id = 0;
  std::uint32_t gen = 0;
  std::uint64_t canary = 0;
  void* pad = nullptr;  // a pointer: a scanned object of its own
  ~Rec() {
    if (gen < 4 && id < kGenObjects && g_gen_counts[gen][id].load() != 1) {
      g_gen_freed_early.fetch_add(1);
    }
    canary = kDeadCanary;
    g_gen_dtors.fetch_add(1);
  }
};

void MakeGenObject(std::uint32_t id, std::uint32_t gen) {
  auto* r = gofin::New<Rec>();
  r->id = id;
  r->gen = gen;
  r->canary = Mix(id, gen);
  gofin::SetFinalizer(r, [id, gen](Rec* o) {
    if (o->id != id || o->gen != gen || o->canary != Mix(id, gen)) g_gen_wrong_object.fetch_add(1);
    g_gen_counts[gen][id].fetch_add(1);
  });
}

// With churn, the allocations trigger collections in the allocating threads: no thread exits
// before all are done allocating (so none exits during a collection).
void AllocateGeneration(std::uint32_t gen, bool churn) {
  std::atomic<int> finished{0};
  std::atomic<int> timed_out{0};
  gofin_test::Notifier changed;
  std::vector<std::thread> ts;
  for (int t = 0; t < kGenThreads; ++t) {
    ts.emplace_back([t, gen, churn, &finished, &timed_out, &changed] {
      for (int i = 0; i < kGenPer; ++i) {
        MakeGenObject(static_cast<std::uint32_t>(t * kGenPer + i), gen);
        if (churn && i % 8 == 0) Churn(64);
      }
      finished.fetch_add(1);
      changed.Notify();
      if (!changed.WaitFor(kWaitLimit, [&] { return finished.load() >= kGenThreads; })) {
        timed_out.fetch_add(1);
      }
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(timed_out.load(), 0) << "allocating threads waited in vain for the others to finish";
}

// Number of objects of generation gen whose finalizer ran a number of times other than want.
int CountNot(std::uint32_t gen, int want) {
  int bad = 0;
  for (int i = 0; i < kGenObjects; ++i) bad += g_gen_counts[gen][i].load() != want;
  return bad;
}

// One set of counters for the whole binary (each generation has its own array).
void EnsureGenArrays() {
  static const bool done = [] {
    for (auto& c : g_gen_counts) {
      c = new std::atomic<int>[kGenObjects];
      for (int i = 0; i < kGenObjects; ++i) c[i].store(0);
    }
    return true;
  }();
  (void)done;
}

// Zeroes every generation's counters; the previous run's objects are all freed by then (the
// fixture collects three times before each test).
void ResetGenerations() {
  for (auto* c : g_gen_counts) {
    for (int i = 0; i < kGenObjects; ++i) c[i].store(0);
  }
  g_gen_wrong_object = 0;
  g_gen_freed_early = 0;
}
}  // namespace

TEST_F(FinThreads, ExactlyOnceManyThreadsManyObjects) {
  EnsureGenArrays();
  ResetGenerations();
  Watchdog dog("ExactlyOnceManyThreadsManyObjects", std::chrono::seconds(600));
  const int dtors0 = Load(g_gen_dtors);
  AllocateGeneration(1, false);
  GCAndDrain();
  EXPECT_EQ(CountNot(1, 1), 0) << "objects whose finalizer did not run exactly once";
  EXPECT_EQ(Load(g_gen_dtors) - dtors0, 0) << "freed by the cycle that queued the finalizer";
  for (int i = 0; i < 3; ++i) GCAndDrain();
  EXPECT_EQ(CountNot(1, 1), 0) << "after more collections";
  EXPECT_EQ(Load(g_gen_dtors) - dtors0, kGenObjects);

  // A second generation reuses the first one's memory: no stale finalizer may fire on it.
  AllocateGeneration(2, false);
  GCAndDrain();
  GCAndDrain();
  EXPECT_EQ(CountNot(2, 1), 0);
  EXPECT_EQ(CountNot(1, 1), 0);
  EXPECT_EQ(Load(g_gen_wrong_object), 0) << "a finalizer ran on a reused or damaged object";
  EXPECT_EQ(Load(g_gen_freed_early), 0) << "an object was freed before its finalizer ran";
}

// The same with the pacer on: automatic cycles run while the threads allocate and set
// finalizers.
TEST_F(FinThreads, ExactlyOnceWithAutomaticCollections) {
  EnsureGenArrays();
  ResetGenerations();
  Watchdog dog("ExactlyOnceWithAutomaticCollections", std::chrono::seconds(600));
  const gofin::MemStats m0 = gofin::ReadMemStats();
  const int old = gofin::debug::SetGCPercent(50);
  AllocateGeneration(3, true);
  gofin::debug::SetGCPercent(old);
  const gofin::MemStats m1 = gofin::ReadMemStats();
  EXPECT_GT((m1.NumGC - m0.NumGC) - (m1.NumForcedGC - m0.NumForcedGC), 0U)
      << "no automatic cycle ran: the test did not exercise what it should";
  GCAndDrain();
  EXPECT_EQ(CountNot(3, 1), 0) << "objects whose finalizer did not run exactly once";
  GCAndDrain();
  GCAndDrain();
  EXPECT_EQ(CountNot(3, 1), 0);
  EXPECT_EQ(Load(g_gen_wrong_object), 0);
  EXPECT_EQ(Load(g_gen_freed_early), 0);
}

namespace {
constexpr int kRunThreads = 4;
constexpr int kRunPer = 5000;
std::atomic<int>* g_run_counts = nullptr;
std::atomic<int> g_run_bad{0};
void FinInt(int* v) {
  if (*v < 0 || *v >= kRunThreads * kRunPer) {
    g_run_bad.fetch_add(1);
    return;
  }
  g_run_counts[*v].fetch_add(1);
}
}  // namespace

// Go's BenchmarkFinalizerRun: parallel `v := new(int); SetFinalizer(v, fin)`, here with a
// collector running concurrently and exact accounting (tiny objects, several per block).
TEST_F(FinThreads, BenchmarkFinalizerRunPort) {
  Zero({&g_run_bad});
  Watchdog dog("BenchmarkFinalizerRunPort");
  g_run_counts = new std::atomic<int>[kRunThreads * kRunPer];
  for (int i = 0; i < kRunThreads * kRunPer; ++i) g_run_counts[i].store(0);
  std::atomic<bool> stop{false};
  std::atomic<int> collections{0};
  std::atomic<int> finished{0};
  std::atomic<bool> may_exit{false};
  gofin_test::Notifier changed;  // notified after finished or may_exit change
  std::thread collector([&] {
    do {  // at least one collection, however the threads are scheduled
      gofin::GC();
      collections.fetch_add(1);
      std::this_thread::yield();
    } while (!stop.load());
  });
  std::vector<std::thread> ts;
  for (int t = 0; t < kRunThreads; ++t) {
    ts.emplace_back([t, &finished, &may_exit, &changed] {
      for (int i = 0; i < kRunPer; ++i)
        gofin::SetFinalizer(gofin::New<int>(t * kRunPer + i), &FinInt);
      finished.fetch_add(1);
      changed.Notify();
      // Exit only once the collector has stopped.
      changed.WaitFor(kWaitLimit, [&] { return may_exit.load(); });
    });
  }
  const bool all_finished =
      changed.WaitFor(kWaitLimit, [&] { return finished.load() >= kRunThreads; });
  stop = true;
  collector.join();
  may_exit = true;
  changed.Notify();
  for (auto& t : ts) t.join();
  ASSERT_TRUE(all_finished) << "the SetFinalizer threads did not finish in time";
  EXPECT_GT(collections.load(), 0);
  GCAndDrain();
  int not_once = 0;
  for (int i = 0; i < kRunThreads * kRunPer; ++i) not_once += g_run_counts[i].load() != 1;
  EXPECT_EQ(not_once, 0);
  EXPECT_EQ(Load(g_run_bad), 0);
  GCAndDrain();
  not_once = 0;
  for (int i = 0; i < kRunThreads * kRunPer; ++i) not_once += g_run_counts[i].load() != 1;
  EXPECT_EQ(not_once, 0);
}

namespace {
gofin::Root<Plain> g_race_obj;
std::atomic<int> g_race_fin{0};
}  // namespace

TEST_F(FinThreads, RacingSetFinalizerOnOneObjectExactlyOneWins) {
  Zero({&g_race_fin});
  Watchdog dog("RacingSetFinalizerOnOneObjectExactlyOneWins");
  constexpr int kRounds = 100;
  constexpr int kRacers = 4;
  int bad_rounds = 0;
  for (int round = 0; round < kRounds; ++round) {
    std::atomic<int> wins{0};
    std::atomic<int> already{0};
    std::atomic<int> other{0};
    InThread([&] {  // the owner: the test thread never holds the object
      g_race_obj = gofin::New<Plain>();
      std::atomic<int> ready{0};
      std::vector<std::thread> racers;
      for (int t = 0; t < kRacers; ++t) {
        racers.emplace_back([&] {
          ready.fetch_add(1);
          while (ready.load() < kRacers) {
          }
          try {
            gofin::SetFinalizer(g_race_obj.get(), [](Plain*) { g_race_fin.fetch_add(1); });
            wins.fetch_add(1);
          } catch (const gofin::Error& e) {
            if (std::string(e.what()) == "runtime.SetFinalizer: finalizer already set") {
              already.fetch_add(1);
            } else {
              other.fetch_add(1);
            }
          }
        });
      }
      for (auto& r : racers) r.join();
      g_race_obj.reset();
    });
    if (wins.load() != 1 || already.load() != kRacers - 1 || other.load() != 0) ++bad_rounds;
  }
  EXPECT_EQ(bad_rounds, 0) << "rounds where not exactly one SetFinalizer won";
  GCAndDrain();
  EXPECT_EQ(Load(g_race_fin), kRounds) << "each object's single finalizer runs once";
}

// ---------------------------------------------------------------------------------------------
// What a finalizer may do
// ---------------------------------------------------------------------------------------------

namespace {
std::atomic<int> g_inner_runs{0};
std::atomic<int> g_outer_done{0};
std::atomic<int> g_gc_inside{0};
std::atomic<int> g_keep_bad{0};
std::atomic<int> g_keep_dtors{0};
struct Counted {
  std::uint64_t canary = 0xC0C0C0C0ULL;
  void* p = nullptr;
  ~Counted() {
    canary = kDeadCanary;
    g_keep_dtors.fetch_add(1);
  }
};
void InnerFin(Plain* /*p*/) { g_inner_runs.fetch_add(1); }
[[gnu::noinline]] void MakeInner(int n) {
  for (int i = 0; i < n; ++i) gofin::SetFinalizer(gofin::New<Plain>(), &InnerFin);
}
void OuterFin(Plain* self) {
  MakeInner(100);
  const std::uint64_t n0 = gofin::ReadMemStats().NumGC;
  gofin::GC();  // from the finalizer thread
  if (gofin::ReadMemStats().NumGC > n0) g_gc_inside.fetch_add(1);
  // The finalizer thread's stack is a root: what it holds survives collections.
  auto* keep = gofin::New<Counted>();
  gofin::GC();
  gofin::GC();
  if (keep->canary != 0xC0C0C0C0ULL || g_keep_dtors.load() != 0) g_keep_bad.fetch_add(1);
  gofin::KeepAlive(keep);
  // Its own object is alive and may get a finalizer again (then removed: no rerun).
  gofin::SetFinalizer(self, &InnerFin);
  gofin::SetFinalizer(self, nullptr);
  g_outer_done.fetch_add(1);
}
}  // namespace

TEST_F(FinThreads, FinalizerAllocatesSetsFinalizersAndCollects) {
  Zero({&g_inner_runs, &g_outer_done, &g_gc_inside, &g_keep_bad, &g_keep_dtors});
  Watchdog dog("FinalizerAllocatesSetsFinalizersAndCollects");
  InThread([] { gofin::SetFinalizer(gofin::New<Plain>(), &OuterFin); });
  GCAndDrain();
  ASSERT_EQ(Load(g_outer_done), 1) << "the outer finalizer did not finish";
  EXPECT_EQ(Load(g_gc_inside), 1) << "GC() from inside a finalizer did not collect";
  EXPECT_EQ(Load(g_keep_bad), 0) << "an object held by the running finalizer was freed";
  GCAndDrain();
  EXPECT_EQ(Load(g_inner_runs), 100) << "finalizers set from inside a finalizer";
  GCAndDrain();
  EXPECT_EQ(Load(g_keep_dtors), 1)
      << "what a finished finalizer held is still kept alive by the finalizer thread's stack";
}

// ---------------------------------------------------------------------------------------------
// Throwing finalizers
// ---------------------------------------------------------------------------------------------

namespace {
std::mutex g_h_mu;
std::string* g_h_msg = new std::string();
std::thread::id g_h_tid;
std::thread::id g_normal_tid;
std::atomic<int> g_h_calls{0};
std::atomic<int> g_h_std{0};
std::atomic<int> g_h_int{0};
std::atomic<int> g_normal_runs{0};

void Handler(std::exception_ptr e) {
  {
    std::lock_guard lock(g_h_mu);
    g_h_tid = std::this_thread::get_id();
  }
  try {
    std::rethrow_exception(e);
  } catch (const std::runtime_error& ex) {
    std::lock_guard lock(g_h_mu);
    *g_h_msg = ex.what();
    g_h_std.fetch_add(1);
  } catch (int v) {
    if (v == 42) g_h_int.fetch_add(1);
  } catch (...) {
  }
  g_h_calls.fetch_add(1);
}

void NormalFin(Plain* /*p*/) {
  {
    std::lock_guard lock(g_h_mu);
    g_normal_tid = std::this_thread::get_id();
  }
  g_normal_runs.fetch_add(1);
}

// Restores the previous handler however the test ends.
class HandlerScope {
 public:
  explicit HandlerScope(gofin::FinalizerErrorHandler h)
      : prev_(gofin::SetFinalizerErrorHandler(h)) {}
  ~HandlerScope() {
    if (armed_) gofin::SetFinalizerErrorHandler(prev_);
  }
  gofin::FinalizerErrorHandler Restore() {
    armed_ = false;
    return gofin::SetFinalizerErrorHandler(prev_);
  }
  [[nodiscard]] gofin::FinalizerErrorHandler prev() const { return prev_; }

 private:
  gofin::FinalizerErrorHandler prev_;
  bool armed_ = true;
};
}  // namespace

TEST_F(FinThreads, SetFinalizerErrorHandlerReturnsThePreviousAndNullReinstallsTheDefault) {
  const gofin::FinalizerErrorHandler def = gofin::SetFinalizerErrorHandler(&Handler);
  EXPECT_NE(def, nullptr);
  EXPECT_NE(def, &Handler);
  EXPECT_EQ(gofin::SetFinalizerErrorHandler(nullptr), &Handler);
  EXPECT_EQ(gofin::SetFinalizerErrorHandler(def), def) << "nullptr must reinstall the default";
}

TEST_F(FinThreads, ThrowingFinalizerGoesToTheHandlerAndTheNextOnesRun) {
  Zero({&g_h_calls, &g_h_std, &g_h_int, &g_normal_runs});
  HandlerScope scope(&Handler);
  const gofin::FinalizerStats s0 = gofin::ReadFinalizerStats();
  InThread([] {
    gofin::SetFinalizer(gofin::New<Plain>(),
                        [](Plain*) { throw std::runtime_error("boom from a finalizer"); });
    gofin::SetFinalizer(gofin::New<Plain>(), [](Plain*) { throw 42; });
    for (int i = 0; i < 5; ++i) gofin::SetFinalizer(gofin::New<Plain>(), &NormalFin);
  });
  GCAndDrain();
  EXPECT_EQ(Load(g_h_calls), 2);
  EXPECT_EQ(Load(g_h_std), 1);
  EXPECT_EQ(Load(g_h_int), 1) << "a non-std exception reaches the handler too";
  EXPECT_EQ(Load(g_normal_runs), 5) << "the finalizers after a throwing one must still run";
  {
    std::lock_guard lock(g_h_mu);
    EXPECT_EQ(*g_h_msg, "boom from a finalizer");
    EXPECT_EQ(g_h_tid, g_normal_tid) << "the handler runs on the finalizer thread";
    EXPECT_NE(g_h_tid, std::this_thread::get_id());
  }
  const gofin::FinalizerStats s1 = gofin::ReadFinalizerStats();
  EXPECT_EQ(s1.Queued - s0.Queued, 7U);
  EXPECT_EQ(s1.Executed - s0.Executed, 7U);

  // The finalizer thread survived: a later cycle's finalizers run.
  InThread([] {
    gofin::SetFinalizer(gofin::New<Plain>(), [](Plain*) { throw std::runtime_error("again"); });
    gofin::SetFinalizer(gofin::New<Plain>(), &NormalFin);
  });
  GCAndDrain();
  EXPECT_EQ(Load(g_normal_runs), 6);
  EXPECT_EQ(Load(g_h_calls), 3);
  EXPECT_EQ(scope.Restore(), &Handler) << "restoring returns the handler this test installed";
}

namespace {
void ThrowWithTheDefaultHandler() {
  gofin::debug::SetGCPercent(-1);
  InThread([] {
    gofin::SetFinalizer(gofin::New<Plain>(),
                        [](Plain*) { throw std::runtime_error("unrecovered finalizer panic"); });
  });
  CollectClean();
  (void)Drain(30s);
  std::fprintf(stderr, "the program survived a throwing finalizer\n");
  std::exit(0);
}
}  // namespace

TEST(FinThreadsDeathTest, DefaultHandlerPrintsTheExceptionAndTerminates) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(ThrowWithTheDefaultHandler(), "unrecovered finalizer panic");
}

// ---------------------------------------------------------------------------------------------
// A blocking finalizer
// ---------------------------------------------------------------------------------------------

namespace {
std::mutex g_blk_mu;
std::condition_variable g_blk_cv;
bool g_blk_entered = false;
bool g_blk_release = false;
std::atomic<std::uint64_t> g_blk_done_seq{0};
std::atomic<std::uint64_t> g_seq{0};
std::atomic<int> g_behind_runs{0};
std::atomic<std::uint64_t> g_behind_min_seq{~std::uint64_t{0}};

void BlockingFin(Plain* /*p*/) {
  std::unique_lock lock(g_blk_mu);
  g_blk_entered = true;
  g_blk_cv.notify_all();
  g_blk_cv.wait_for(lock, 120s, [] { return g_blk_release; });
  g_blk_done_seq = ++g_seq;
}
void BehindFin(Plain* /*p*/) {
  const std::uint64_t s = ++g_seq;
  std::uint64_t m = g_behind_min_seq.load();
  while (s < m && !g_behind_min_seq.compare_exchange_weak(m, s)) {
  }
  g_behind_runs.fetch_add(1);
}
void Release() {
  {
    std::lock_guard lock(g_blk_mu);
    g_blk_release = true;
  }
  g_blk_cv.notify_all();
}
struct ReleaseOnExit {
  ~ReleaseOnExit() { Release(); }
};
}  // namespace

TEST_F(FinThreads, BlockingFinalizerDelaysTheOthersButNotTheCollector) {
  Zero({&g_behind_runs});
  {
    std::lock_guard lock(g_blk_mu);
    g_blk_entered = false;
    g_blk_release = false;
  }
  g_blk_done_seq = 0;
  g_behind_min_seq = ~std::uint64_t{0};
  Watchdog dog("BlockingFinalizerDelaysTheOthersButNotTheCollector");
  ReleaseOnExit release_guard;  // never leave the finalizer thread blocked
  InThread([] { gofin::SetFinalizer(gofin::New<Plain>(), &BlockingFin); });
  CollectClean();
  {
    std::unique_lock lock(g_blk_mu);
    ASSERT_TRUE(g_blk_cv.wait_for(lock, 60s, [] { return g_blk_entered; }))
        << "the blocking finalizer never started";
  }
  // More finalizers queue up behind it.
  constexpr int kBehind = 10;
  InThread([] {
    for (int i = 0; i < kBehind; ++i) gofin::SetFinalizer(gofin::New<Plain>(), &BehindFin);
  });
  const gofin::FinalizerStats s0 = gofin::ReadFinalizerStats();
  CollectClean();  // with the finalizer thread blocked
  const gofin::FinalizerStats s1 = gofin::ReadFinalizerStats();
  EXPECT_EQ(s1.Queued - s0.Queued, static_cast<std::uint64_t>(kBehind));
  EXPECT_EQ(s1.Executed, s0.Executed) << "nothing runs while the finalizer thread is blocked";
  EXPECT_GT(s1.Queued, s1.Executed);

  // The test thread, and others, can still allocate, set finalizers and collect.
  for (int i = 0; i < 5; ++i) {
    Churn(5000);
    CollectClean();
  }
  std::atomic<int> set_ok{0};
  InThread([&] {
    Churn(5000);
    auto* p = gofin::New<Plain>();
    gofin::SetFinalizer(p, &BehindFin);
    gofin::SetFinalizer(p, nullptr);
    gofin::GC();
    set_ok = 1;
  });
  EXPECT_EQ(set_ok.load(), 1);
  EXPECT_FALSE(gofin::testing::BlockUntilEmptyFinalizerQueue(200ms))
      << "BlockUntilEmptyFinalizerQueue must not report idle while a finalizer runs";
  EXPECT_EQ(Load(g_behind_runs), 0) << "a finalizer ran while another one was running";
  EXPECT_EQ(g_blk_done_seq.load(), 0U);

  Release();
  ASSERT_TRUE(Drain());
  EXPECT_EQ(Load(g_behind_runs), kBehind);
  EXPECT_NE(g_blk_done_seq.load(), 0U);
  EXPECT_LT(g_blk_done_seq.load(), g_behind_min_seq.load())
      << "a queued finalizer ran before the blocking one returned";
  const gofin::FinalizerStats s2 = gofin::ReadFinalizerStats();
  EXPECT_EQ(s2.Executed - s0.Executed, static_cast<std::uint64_t>(kBehind + 1));
  EXPECT_EQ(s2.Queued, s2.Executed);
}

// ---------------------------------------------------------------------------------------------
// ReadFinalizerStats under load
// ---------------------------------------------------------------------------------------------

namespace {
std::atomic<int> g_stats_runs{0};
}  // namespace

// Every snapshot must be consistent: a finalizer is queued before it is executed, so no reader
// may ever see more executed than queued (Queued - Executed is the backlog).
TEST_F(FinThreads, StatsSnapshotNeverShowsMoreExecutedThanQueued) {
  Zero({&g_stats_runs});
  Watchdog dog("StatsSnapshotNeverShowsMoreExecutedThanQueued");
  constexpr int kRounds = 600;
  constexpr int kPer = 500;
  std::atomic<bool> stop{false};
  std::atomic<long> bad{0};
  std::atomic<long> reads{0};
  std::atomic<std::uint64_t> worst_q{0}, worst_e{0};
  std::thread monitor([&] {
    while (!stop.load(std::memory_order_relaxed)) {
      const gofin::FinalizerStats s = gofin::ReadFinalizerStats();
      if (s.Executed > s.Queued) {
        if (bad.fetch_add(1) == 0) {
          worst_q = s.Queued;
          worst_e = s.Executed;
        }
      }
      reads.fetch_add(1, std::memory_order_relaxed);
    }
  });
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  int rounds = 0;
  for (; rounds < kRounds && std::chrono::steady_clock::now() < deadline; ++rounds) {
    InThread([] {
      for (int i = 0; i < kPer; ++i) {
        gofin::SetFinalizer(gofin::New<Plain>(), [](Plain*) { g_stats_runs.fetch_add(1); });
      }
    });
    CollectClean();
  }
  ASSERT_TRUE(Drain());
  stop = true;
  monitor.join();
  EXPECT_EQ(Load(g_stats_runs), rounds * kPer);
  EXPECT_EQ(bad.load(), 0) << "snapshots with Executed > Queued, e.g. Queued=" << worst_q.load()
                           << " Executed=" << worst_e.load() << " (of " << reads.load()
                           << " reads)";
}

// ---------------------------------------------------------------------------------------------
// Collections from several threads at once, while threads come and go
// ---------------------------------------------------------------------------------------------

namespace {
std::atomic<int> g_churn_runs{0};
}  // namespace

// GC() from several threads at the same time, while short-lived threads allocate objects with
// finalizers and exit. Nothing deadlocks and every finalizer runs exactly once.
//
// Under ThreadSanitizer this deadlocks in gofin (reproduced with gdb): a thread calling GC()
// while another collects blocks in pthread_mutex_lock on GcLock() (src/gc/collector.cpp,
// FullCollection), and a thread exiting during a collection blocks in pthread_mutex_lock on
// RegistryLock() (src/gc/thread_registry.cpp, UnregisterThread; StopTheWorld holds that lock
// for the whole pause). TSan defers asynchronous signals while a thread is inside
// pthread_mutex_lock, so the stop signal is never handled, the thread never parks, and
// StopTheWorld (src/gc/stop_the_world.cpp) waits for its acknowledgement forever while holding
// the very lock the thread waits for. Fixed: those locks are PreemptibleMutex
// (src/gc/preemptible_mutex.hpp), which waits in nanosleep, where signals are delivered.
TEST_F(FinThreads, CollectionsFromSeveralThreadsWhileThreadsComeAndGo) {
  Watchdog dog("CollectionsFromSeveralThreadsWhileThreadsComeAndGo");
  constexpr int kCollectors = 3;
  constexpr int kShortLived = 60;
  constexpr int kPer = 100;
  Zero({&g_churn_runs});
  std::vector<std::thread> collectors;
  for (int t = 0; t < kCollectors; ++t) {
    collectors.emplace_back([] {
      for (int i = 0; i < 30; ++i) gofin::GC();
    });
  }
  std::thread spawner([] {
    for (int i = 0; i < kShortLived; ++i) {
      std::thread t([] {
        for (int j = 0; j < kPer; ++j) {
          gofin::SetFinalizer(gofin::New<Plain>(), [](Plain*) { g_churn_runs.fetch_add(1); });
        }
      });
      t.join();
    }
  });
  for (auto& t : collectors) t.join();
  spawner.join();
  GCAndDrain();
  EXPECT_EQ(Load(g_churn_runs), kShortLived * kPer);
  GCAndDrain();
  EXPECT_EQ(Load(g_churn_runs), kShortLived * kPer);
}
