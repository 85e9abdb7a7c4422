// Stopping the world (API.md "What is a root", "Collection"): GC() stops every registered
// thread wherever it is — blocked in a system call, waiting on a condition variable, spinning,
// allocating — scans it, and lets it go on; threads come and go; gofin::ThreadScope.
//
// Objects that must be proven unreachable are created and dropped in threads that exit before
// the collection or in [[gnu::noinline]] helpers followed by a stack clobber; survival and
// death are read from destructor counters.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <gofin/gofin.hpp>
#include <mutex>
#include <optional>
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

// ThreadSanitizer delivers an asynchronous signal only when the thread next enters one of the
// interceptors it treats as blocking, or an atomic operation. GCC 12's libtsan does not treat
// read() as blocking, so a thread blocked in read() never runs gofin's stop handler and a
// collection would wait for it forever: a limit of the tool, not of gofin. That one thread is
// left out under TSan.
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
  Tracked* next = nullptr;
};

int Load(const std::atomic<int>& a) { return a.load(std::memory_order_relaxed); }

// Pointers handed between threads without being roots travel XOR this mask (a non-canonical
// address, never inside the heap).
volatile std::uintptr_t g_mask = 0x5a5a000000000000ULL;
[[gnu::noinline]] std::uintptr_t NewEncoded(std::atomic<int>* counter, std::uint64_t v) {
  return reinterpret_cast<std::uintptr_t>(gofin::New<Tracked>(counter, v)) ^ g_mask;
}
[[gnu::noinline]] Tracked* Decode(std::uintptr_t enc) {
  return reinterpret_cast<Tracked*>(enc ^ g_mask);
}

[[gnu::noinline]] void MakeGarbage(std::atomic<int>* counter, int n) {
  for (int i = 0; i < n; ++i) {
    auto* t = gofin::New<Tracked>(counter, static_cast<std::uint64_t>(i));
    asm volatile("" : : "r"(t) : "memory");
  }
}

// Pacing off: every collection is an explicit GC().
class StwEnv : public ::testing::Environment {
 public:
  void SetUp() override { old_ = gofin::debug::SetGCPercent(-1); }
  void TearDown() override { gofin::debug::SetGCPercent(old_); }

 private:
  int old_ = 100;
};
[[maybe_unused]] ::testing::Environment* const g_env =
    ::testing::AddGlobalTestEnvironment(new StwEnv);

// Waits until `count` reaches `n` (threads announce themselves), with a bound.
bool WaitFor(const std::atomic<int>& count, int n, std::chrono::seconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (count.load() < n) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// GC() stops threads in every state
// ---------------------------------------------------------------------------------------------

namespace states {
std::atomic<int> g_held{0};     // objects each thread holds on its stack
std::atomic<int> g_garbage{0};  // what the allocating thread drops
}  // namespace states

TEST(StopTheWorld, GCStopsBlockedWaitingSpinningAndAllocatingThreads) {
  Watchdog wd("GCStopsBlockedWaitingSpinningAndAllocatingThreads");
  using namespace states;  // NOLINT
  g_held = 0;
  g_garbage = 0;
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  std::atomic<int> ready{0};
  std::atomic<bool> stop{false};
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  std::atomic<int> intact{0};
  std::atomic<long> allocated_while_gc{0};

  // Under TSan the read() thread is left out (see kTsan).
  const int nthreads = kTsan ? 3 : 4;
  std::vector<std::thread> threads;
  // Blocked in read() on a pipe.
  if (!kTsan)
    threads.emplace_back([&] {
      Tracked* volatile p = Decode(NewEncoded(&g_held, 1));
      ClobberStack();
      ready.fetch_add(1);
      char c = 0;
      ssize_t r = 0;
      do {
        r = read(fds[0], &c, 1);
      } while (r < 0 && errno == EINTR);
      if (r == 1 && p->Ok(1)) intact.fetch_add(1);
    });
  // Waiting on a condition variable.
  threads.emplace_back([&] {
    Tracked* volatile p = Decode(NewEncoded(&g_held, 2));
    ClobberStack();
    ready.fetch_add(1);
    {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return release; });
    }
    if (p->Ok(2)) intact.fetch_add(1);
  });
  // Spinning in a tight loop that makes no call.
  threads.emplace_back([&] {
    Tracked* volatile p = Decode(NewEncoded(&g_held, 3));
    ClobberStack();
    ready.fetch_add(1);
    std::uint64_t spins = 0;
    while (!stop.load(std::memory_order_relaxed)) ++spins;
    asm volatile("" : : "r"(spins));
    if (p->Ok(3)) intact.fetch_add(1);
  });
  // Allocating in a tight loop.
  threads.emplace_back([&] {
    Tracked* volatile p = Decode(NewEncoded(&g_held, 4));
    ClobberStack();
    ready.fetch_add(1);
    long n = 0;
    while (!stop.load(std::memory_order_relaxed)) {
      auto* t = gofin::New<Tracked>(&g_garbage, static_cast<std::uint64_t>(n));
      if (!t->Ok(static_cast<std::uint64_t>(n))) break;  // fresh objects are intact
      ++n;
    }
    allocated_while_gc.store(n);
    if (p->Ok(4)) intact.fetch_add(1);
  });

  ASSERT_TRUE(WaitFor(ready, nthreads, std::chrono::seconds(60)));
  const std::uint64_t gcs_before = gofin::ReadMemStats().NumGC;
  for (int i = 0; i < 10; ++i) CollectClean();
  const std::uint64_t gcs_after = gofin::ReadMemStats().NumGC;
  EXPECT_EQ(gcs_after - gcs_before, 10U);
  EXPECT_EQ(Load(g_held), 0) << "an object held on a stopped thread's stack was freed";

  // Let them all go on.
  ASSERT_EQ(write(fds[1], "x", 1), 1);
  {
    std::lock_guard lock(mu);
    release = true;
  }
  cv.notify_all();
  stop.store(true);
  for (auto& t : threads) t.join();
  close(fds[0]);
  close(fds[1]);
  EXPECT_EQ(intact.load(), nthreads) << "a thread found its object changed after the collections";
  EXPECT_GT(allocated_while_gc.load(), 0);

  CollectClean();
  EXPECT_EQ(Load(g_held), nthreads) << "the threads are gone: their objects are garbage";
  EXPECT_EQ(static_cast<long>(Load(g_garbage)), allocated_while_gc.load());
}

// ---------------------------------------------------------------------------------------------
// Threads exit while others hold what they allocated
// ---------------------------------------------------------------------------------------------

namespace exiting {
std::atomic<int> g_dtors{0};
constexpr int kN = 1000;
// Builds a list of kN objects; the head travels encoded.
[[gnu::noinline]] std::uintptr_t BuildList() {
  Tracked* head = nullptr;
  for (int i = 0; i < kN; ++i) {
    Tracked* t = gofin::New<Tracked>(&g_dtors, static_cast<std::uint64_t>(i));
    t->next = head;
    head = t;
  }
  return reinterpret_cast<std::uintptr_t>(head) ^ g_mask;
}
[[gnu::noinline]] bool ListOk(const Tracked* head) {
  int i = kN;
  for (const Tracked* t = head; t != nullptr; t = t->next) {
    if (!t->Ok(static_cast<std::uint64_t>(--i))) return false;
  }
  return i == 0;
}
}  // namespace exiting

TEST(StopTheWorld, ObjectsOfAnExitedThreadSurviveWhileReferenced) {
  Watchdog wd("ObjectsOfAnExitedThreadSurviveWhileReferenced");
  using namespace exiting;  // NOLINT
  g_dtors = 0;
  std::mutex mu;
  std::condition_variable cv;
  std::uintptr_t handoff = 0;  // encoded: not a root while in transit
  bool holding = false;
  bool release = false;
  bool ok = false;
  // The holder waits for the list, keeps its head on its stack, and waits again.
  std::thread holder([&] {
    gofin::ThreadScope scope;  // registered before it holds a GC pointer
    std::uintptr_t enc = 0;
    {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return handoff != 0; });
      enc = handoff;
    }
    Tracked* volatile head = Decode(enc);
    {
      std::lock_guard lock(mu);
      holding = true;
    }
    cv.notify_all();
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return release; });
    ok = ListOk(head);
  });
  // The producer allocates the list, hands it over and exits at once.
  std::thread producer([&] {
    const std::uintptr_t enc = BuildList();
    {
      std::lock_guard lock(mu);
      handoff = enc;
    }
    cv.notify_all();
  });
  producer.join();
  {
    std::unique_lock lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(60), [&] { return holding; }));
  }
  static std::atomic<int> churn{0};
  for (int i = 0; i < 5; ++i) {
    std::thread([] { MakeGarbage(&churn, 20000); }).join();
    CollectClean();
  }
  EXPECT_EQ(Load(g_dtors), 0) << "objects allocated by an exited thread were freed while held";
  {
    std::lock_guard lock(mu);
    release = true;
  }
  cv.notify_all();
  holder.join();
  EXPECT_TRUE(ok) << "the list allocated by an exited thread was corrupted";
  CollectClean();
  EXPECT_EQ(Load(g_dtors), kN);
}

// ---------------------------------------------------------------------------------------------
// Many short-lived threads
// ---------------------------------------------------------------------------------------------

namespace churn {
std::atomic<int> g_dtors{0};
constexpr int kKeep = 64;
[[gnu::noinline]] void AllocateALittle(gofin::Root<Tracked*>& keep, int i) {
  // A few objects of different kinds; one of them replaces a kept slot.
  auto* t = gofin::New<Tracked>(&g_dtors, static_cast<std::uint64_t>(i));
  auto* g = gofin::New<Tracked>(&g_dtors, static_cast<std::uint64_t>(i) + 1000000);
  auto* tiny = static_cast<char*>(gofin::AllocNoScan(5));
  auto* arr = gofin::NewArray<int>(100);
  asm volatile("" : : "r"(g), "r"(tiny), "r"(arr) : "memory");
  keep.get()[i % kKeep] = t;
}
[[gnu::noinline]] void MakeKeep(gofin::Root<Tracked*>& keep) {
  keep = gofin::NewArray<Tracked*>(kKeep);
}
[[gnu::noinline]] int CheckKeep(const gofin::Root<Tracked*>& keep, int last) {
  int bad = 0;
  for (int slot = 0; slot < kKeep; ++slot) {
    // The last write to `slot` was by thread i = the largest i <= last with i % kKeep == slot.
    const int i = last - ((last - slot) % kKeep + kKeep) % kKeep;
    if (i < 0) continue;
    const Tracked* t = keep.get()[slot];
    if (t == nullptr || !t->Ok(static_cast<std::uint64_t>(i))) ++bad;
  }
  return bad;
}
}  // namespace churn

TEST(StopTheWorld, TenThousandShortLivedThreadsWithInterleavedCollections) {
  Watchdog wd("TenThousandShortLivedThreadsWithInterleavedCollections", std::chrono::seconds(300));
  using namespace churn;  // NOLINT
  g_dtors = 0;
  const int kThreads = kSanitized ? 2000 : 10000;
  gofin::Root<Tracked*> keep;
  MakeKeep(keep);
  // A second thread collects while threads are created and exit: once every 37 threads it
  // is woken and runs a GC() that races the next threads' start, allocation and exit.
  std::mutex mu;
  std::condition_variable cv;
  int requested = 0;
  bool stop = false;
  std::atomic<int> concurrent_gcs{0};
  std::thread collector([&] {
    int done = 0;
    for (;;) {
      {
        std::unique_lock lock(mu);
        cv.wait(lock, [&] { return stop || requested != done; });
        if (stop) return;
        done = requested;
      }
      gofin::GC();
      concurrent_gcs.fetch_add(1);
    }
  });
  for (int i = 0; i < kThreads; ++i) {
    if (i % 37 == 0) {
      {
        std::lock_guard lock(mu);
        ++requested;
      }
      cv.notify_one();
    }
    std::thread([&keep, i] { AllocateALittle(keep, i); }).join();
    if (i % 100 == 99) CollectClean();
    if (i % 1000 == 999) {
      EXPECT_EQ(CheckKeep(keep, i), 0) << "after " << i + 1 << " threads";
    }
  }
  {
    std::lock_guard lock(mu);
    stop = true;
  }
  cv.notify_one();
  collector.join();
  EXPECT_GT(concurrent_gcs.load(), 0);
  CollectClean();
  EXPECT_EQ(CheckKeep(keep, kThreads - 1), 0) << "a kept object was freed or corrupted";
  // Everything but the kKeep kept objects is garbage.
  EXPECT_EQ(Load(g_dtors), 2 * kThreads - kKeep);
  keep.reset();
  CollectClean();
  EXPECT_EQ(Load(g_dtors), 2 * kThreads);
  EXPECT_LE(gofin::internal::RegisteredThreadCount(), 4U) << "exited threads stay registered";
}

// ---------------------------------------------------------------------------------------------
// Concurrent GC() calls
// ---------------------------------------------------------------------------------------------

TEST(StopTheWorld, ConcurrentGCCallsFromManyThreads) {
  Watchdog wd("ConcurrentGCCallsFromManyThreads");
  constexpr int kCallers = 4;
  const int calls = kSanitized ? 10 : 40;
  static std::atomic<int> dtors{0};
  std::atomic<bool> stop{false};
  std::thread allocator([&] {
    while (!stop.load(std::memory_order_relaxed)) MakeGarbage(&dtors, 1000);
  });
  const gofin::MemStats before = gofin::ReadMemStats();
  std::vector<std::thread> callers;
  for (int t = 0; t < kCallers; ++t) {
    callers.emplace_back([&] {
      for (int i = 0; i < calls; ++i) gofin::GC();
    });
  }
  for (auto& t : callers) t.join();
  const gofin::MemStats after = gofin::ReadMemStats();
  stop.store(true);
  allocator.join();
  EXPECT_EQ(after.NumForcedGC - before.NumForcedGC, static_cast<std::uint64_t>(kCallers * calls))
      << "every GC() is one forced cycle";
  EXPECT_EQ(after.NumGC - before.NumGC, static_cast<std::uint64_t>(kCallers * calls))
      << "pacing is off: no other cycle";
}

// ---------------------------------------------------------------------------------------------
// gofin::ThreadScope
// ---------------------------------------------------------------------------------------------

namespace scope {
std::atomic<int> g_dtors{0};
std::atomic<std::uintptr_t> g_handoff{0};
[[gnu::noinline]] void Publish(std::uint64_t v) { g_handoff.store(NewEncoded(&g_dtors, v)); }

// A thread that never calls into gofin, except for the optional ThreadScope, holding the only
// pointer to an object on its stack while the main thread collects.
struct Holder {
  std::mutex mu;
  std::condition_variable cv;
  bool holding = false;
  bool release = false;
  bool ok = false;
  std::thread thread;

  void Start(bool with_scope, std::uint64_t v) {
    thread = std::thread([this, with_scope, v] {
      std::optional<gofin::ThreadScope> scope;
      if (with_scope) scope.emplace();
      Tracked* volatile p = reinterpret_cast<Tracked*>(g_handoff.exchange(0) ^ g_mask);
      {
        std::lock_guard lock(mu);
        holding = true;
      }
      cv.notify_all();
      std::unique_lock lock(mu);
      cv.wait(lock, [this] { return release; });
      // Only a scoped thread may look: without the scope the object may be gone.
      if (with_scope) ok = p->Ok(v);
    });
  }
  bool WaitHolding() {
    std::unique_lock lock(mu);
    return cv.wait_for(lock, std::chrono::seconds(60), [this] { return holding; });
  }
  void Finish() {
    {
      std::lock_guard lock(mu);
      release = true;
    }
    cv.notify_all();
    thread.join();
  }
};
}  // namespace scope

TEST(StopTheWorld, ThreadScopeMakesAnUnregisteredThreadsStackARoot) {
  Watchdog wd("ThreadScopeMakesAnUnregisteredThreadsStackARoot");
  using namespace scope;  // NOLINT
  g_dtors = 0;
  Publish(71);
  Holder h;
  h.Start(/*with_scope=*/true, 71);
  ASSERT_TRUE(h.WaitHolding());
  static std::atomic<int> churn{0};
  for (int i = 0; i < 3; ++i) {
    MakeGarbage(&churn, 20000);
    CollectClean();
  }
  EXPECT_EQ(Load(g_dtors), 0) << "an object on a ThreadScope thread's stack was freed";
  h.Finish();
  EXPECT_TRUE(h.ok);
  CollectClean();
  EXPECT_EQ(Load(g_dtors), 1);
}

// The control for the test above (API.md: a thread is registered the first time it calls a
// gofin function; ThreadScope is for threads that hold GC pointers before that): the same
// thread without the scope is not scanned, so the object it holds is collected.
TEST(StopTheWorld, UnregisteredThreadsStackIsNotARoot) {
  Watchdog wd("UnregisteredThreadsStackIsNotARoot");
  using namespace scope;  // NOLINT
  g_dtors = 0;
  Publish(72);
  Holder h;
  h.Start(/*with_scope=*/false, 72);
  ASSERT_TRUE(h.WaitHolding());
  CollectClean();
  EXPECT_EQ(Load(g_dtors), 1) << "an unregistered thread's stack was scanned";
  h.Finish();
}

TEST(StopTheWorld, ThreadScopeRegistersAndUnregisters) {
  using gofin::internal::CurrentThreadRecord;
  bool fresh_registered_inside = false;
  bool fresh_registered_after = true;
  bool nested_still_registered = false;
  bool reregistered = false;
  std::size_t count_inside = 0;
  gofin::ThreadScope main_thread;  // so that the count below includes this thread
  std::thread([&] {
    {
      gofin::ThreadScope s;
      fresh_registered_inside = CurrentThreadRecord() != nullptr;
      count_inside = gofin::internal::RegisteredThreadCount();
      {
        gofin::ThreadScope nested;  // already registered: does not unregister
      }
      nested_still_registered = CurrentThreadRecord() != nullptr;
    }
    fresh_registered_after = CurrentThreadRecord() != nullptr;
    // A later gofin call registers the thread again.
    void* p = gofin::Alloc(16);
    asm volatile("" : : "r"(p) : "memory");
    reregistered = CurrentThreadRecord() != nullptr;
  }).join();
  EXPECT_TRUE(fresh_registered_inside);
  EXPECT_TRUE(nested_still_registered) << "a nested ThreadScope unregistered the thread";
  EXPECT_FALSE(fresh_registered_after) << "ThreadScope did not unregister the thread";
  EXPECT_TRUE(reregistered);
  EXPECT_GE(count_inside, 2U);

  // In an already registered thread (this one), a ThreadScope leaves the registration alone.
  gofin::GC();
  ASSERT_NE(CurrentThreadRecord(), nullptr);
  { gofin::ThreadScope s; }
  EXPECT_NE(CurrentThreadRecord(), nullptr);
}
