// Faults from the environment: the OS refusing memory (RLIMIT_AS, down to no address space at
// all), a memory limit that cannot be met, a finalizer that blocks for a long time, threads
// that exit while others hold what they allocated, 10,000 threads created and destroyed, and
// fork() in a program that uses gofin.
//
// Tests that change process-wide state (rlimits, fork) run in a death-test child (re-executed,
// so gofin starts fresh there) and report the failing step through the exit code and stderr.
// Exactness as in test_misuse.cpp: objects whose fate is checked come from short-lived threads,
// addresses are XOR-hidden, and collections use testing::GC(kNoHeapPointers).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <gofin/gofin.hpp>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "gc/thread_registry.hpp"
#include "test_wait.hpp"

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

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
// ThreadSanitizer cannot run under an address-space limit (its own allocator's mmaps fail) nor
// start threads in a child forked from a multi-threaded process (die_after_fork).
#define SKIP_UNDER_TSAN(why)                                         \
  do {                                                               \
    if (kTsan) GTEST_SKIP() << "not under ThreadSanitizer: " << why; \
  } while (0)

constexpr std::uintptr_t kMask = 0xA5A5A5A5A5A5A5A5ULL;
constexpr std::uint64_t kCanary = 0x0DDBA11CAFEBABE5ULL;
constexpr std::uint64_t kMiB = 1 << 20;

void ExactGC() { gofin::testing::GC(gofin::testing::StackState::kNoHeapPointers); }
bool Drain(std::chrono::seconds s = 60s) {
  return gofin::testing::BlockUntilEmptyFinalizerQueue(s);
}

template <class F>
void InThread(F&& fn) {
  std::thread(std::forward<F>(fn)).join();
}

struct Counted {
  explicit Counted(std::atomic<int>* d) : dtors(d) {}
  ~Counted() { dtors->fetch_add(1); }
  std::atomic<int>* dtors;
  std::uint64_t canary = kCanary;
  std::uint64_t pad = 0;
};

struct Link {  // a chain element; 64 bytes
  Link* prev = nullptr;
  std::uint64_t canary = kCanary;
  std::uint64_t index = 0;
  std::uint64_t pad[5] = {};
};

class FaultsEnv : public ::testing::Environment {
 public:
  void SetUp() override {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    gofin::debug::SetGCPercent(-1);
  }
};
[[maybe_unused]] ::testing::Environment* const g_env =
    ::testing::AddGlobalTestEnvironment(new FaultsEnv);

// FAULTS_TRACE=<file>: children append their progress there (death tests swallow stderr).
void Trace(const char* what) {
  static const char* path = std::getenv("FAULTS_TRACE");
  if (path == nullptr) return;
  static const auto t0 = Clock::now();
  if (std::FILE* f = std::fopen(path, "a")) {
    std::fprintf(f, "[%d %.3fs] %s\n", static_cast<int>(getpid()),
                 std::chrono::duration<double>(Clock::now() - t0).count(), what);
    std::fclose(f);
  }
}

// Async-signal-safe failure report for children (malloc may be out of memory).
[[noreturn]] void ChildFail(int code, const char* what) {
  const char prefix[] = "child failed: ";
  (void)!write(2, prefix, sizeof prefix - 1);
  (void)!write(2, what, std::strlen(what));
  (void)!write(2, "\n", 1);
  _exit(code);
}

bool HeapRelationsHold(const gofin::MemStats& m) {
  return m.HeapInuse <= m.HeapSys && m.HeapIdle == m.HeapSys - m.HeapInuse &&
         m.HeapReleased <= m.HeapIdle && m.Mallocs >= m.Frees &&
         m.Mallocs - m.Frees == m.HeapObjects && m.Alloc == m.HeapAlloc &&
         m.HeapAlloc <= m.HeapInuse && m.HeapAlloc <= m.TotalAlloc && m.Sys >= m.HeapSys;
}

std::uint64_t VmBytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  unsigned long long pages = 0;
  if (f != nullptr) {
    if (std::fscanf(f, "%llu", &pages) != 1) pages = 0;
    std::fclose(f);
  }
  return pages * static_cast<std::uint64_t>(sysconf(_SC_PAGESIZE));
}

// Starts every helper thread gofin has (mark workers, sweeper, finalizer thread) and runs one
// finalizer, so that nothing needs a new thread (a stack: address space) later.
void WarmUp() {
  static std::atomic<int> ran{0};
  InThread([] {
    for (int i = 0; i < 1000; ++i) gofin::New<Link>();
    gofin::SetFinalizer(gofin::New<Link>(), [](Link*) { ran.fetch_add(1); });
  });
  ExactGC();
  Drain();
  ExactGC();
  if (ran.load() != 1) ChildFail(90, "warm-up finalizer did not run");
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The OS refuses memory
// ---------------------------------------------------------------------------------------------

namespace {

enum class OomKind { kLarge, kSmall, kSmallWithFinalizers };

// Child body: allocate (keeping everything) until std::bad_alloc, then take the last of the
// address space away too, check that gofin keeps failing cleanly, give it back, and check the
// heap is consistent and usable again. Every refused allocation costs a full collection (the
// out-of-memory path collects once before giving up), so the live heap is kept cheap to mark:
// large payloads are noscan blocks hung off small scanned links.
[[noreturn]] void OomChild(OomKind kind) {
  alarm(240);
  gofin::debug::SetGCPercent(100);  // automatic cycles happen on the way to the wall
  WarmUp();
  struct Payload {
    Link link;
    unsigned char* bytes;  // 1 MiB noscan, or null
  };
  // Bookkeeping first: there is no memory for it later.
  auto* holes = new std::vector<std::pair<void*, std::size_t>>();
  holes->reserve(4096);
  struct rlimit rl {};
  const std::uint64_t headroom = (kind == OomKind::kLarge ? 512 : 64) * kMiB;
  Trace("limit set");
  rl.rlim_cur = rl.rlim_max = VmBytes() + headroom;
  if (setrlimit(RLIMIT_AS, &rl) != 0) ChildFail(2, "setrlimit");

  static std::atomic<int> fins{0};
  gofin::Root<Payload> head;
  std::uint64_t n = 0;
  bool oom = false;
  const auto t0 = Clock::now();
  try {
    for (;;) {
      auto* p = gofin::New<Payload>();
      p->link.prev = reinterpret_cast<Link*>(head.get());
      p->link.canary = kCanary;
      p->link.index = n;
      if (kind == OomKind::kLarge) {
        p->bytes = static_cast<unsigned char*>(gofin::AllocNoScan(kMiB));
        p->bytes[kMiB - 1] = static_cast<unsigned char>(n);
      }
      if (kind == OomKind::kSmallWithFinalizers) {
        // Small noscan payloads keep the chain short (each refused allocation marks it).
        p->bytes = static_cast<unsigned char*>(gofin::AllocNoScan(4000));
        p->bytes[3999] = static_cast<unsigned char>(n);
      }
      if (kind == OomKind::kSmallWithFinalizers && n % 8 == 0) {
        // Finalizable garbage next to the live chain: sweeps queue finalizers near the wall.
        gofin::SetFinalizer(gofin::New<Link>(), [](Link*) { fins.fetch_add(1); });
      }
      head = p;
      ++n;
    }
  } catch (const std::bad_alloc&) {
    oom = true;
  }
  if (!oom || n == 0) ChildFail(3, "no bad_alloc");
  Trace("wall reached");
  const std::uint64_t heap_at_wall = gofin::ReadMemStats().HeapSys;
  const double to_wall = std::chrono::duration<double>(Clock::now() - t0).count();

  // No address space left at all: map it away in shrinking pieces.
  for (std::size_t sz = 256 * kMiB; sz >= 4096; sz /= 2) {
    for (;;) {
      if (holes->size() == holes->capacity()) break;
      void* p = mmap(nullptr, sz, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (p == MAP_FAILED) break;
      holes->emplace_back(p, sz);
    }
  }
  // Every kind of allocation must now fail with bad_alloc (or succeed from free slots), never
  // crash; SetFinalizer and a collection must not crash either.
  int failures = 0;
  Trace("address space gone");
  for (int i = 0; i < 12; ++i) {
    try {
      switch (i % 4) {
        case 0:
          gofin::Alloc(kMiB);
          break;
        case 1:
          for (int k = 0; k < 100000; ++k) gofin::New<Link>();
          break;
        case 2:
          gofin::NewArray<std::uint64_t>(5000);
          break;
        default:
          gofin::AllocNoScan(100000);
          break;
      }
    } catch (const std::bad_alloc&) {
      ++failures;
    }
  }
  if (failures == 0) ChildFail(5, "nothing failed with no address space left");
  for (int i = 0; i < 4; ++i) {  // each refused allocation costs a collection
    try {
      gofin::SetFinalizer(gofin::New<Link>(), [](Link*) { fins.fetch_add(1); });
    } catch (const std::bad_alloc&) {
    }
  }
  gofin::GC();
  gofin::GC();
  for (auto& [p, sz] : *holes) munmap(p, sz);
  Trace("attempts done");
  const std::size_t nholes = holes->size();
  delete holes;
  if (!Drain(60s)) ChildFail(9, "finalizer queue did not drain after OOM");

  Trace("drained");
  // The heap is consistent and everything kept is intact.
  if (!HeapRelationsHold(gofin::ReadMemStats()))
    ChildFail(6, "MemStats relations broken after OOM");
  std::uint64_t count = 0;
  for (auto* p = head.get(); p != nullptr; p = reinterpret_cast<Payload*>(p->link.prev)) {
    if (p->link.canary != kCanary || p->link.index != n - 1 - count)
      ChildFail(7, "kept chain corrupted after OOM");
    if (kind == OomKind::kSmallWithFinalizers &&
        (p->bytes == nullptr || p->bytes[3999] != static_cast<unsigned char>(p->link.index)))
      ChildFail(7, "kept payload corrupted after OOM");
    if (kind == OomKind::kLarge &&
        (p->bytes == nullptr || p->bytes[kMiB - 1] != static_cast<unsigned char>(p->link.index)))
      ChildFail(7, "kept payload corrupted after OOM");
    ++count;
  }
  if (count != n) ChildFail(8, "kept chain has the wrong length");

  // Drop everything: it is collected, and the memory is reused (still under the limit: the
  // heap cannot grow, so freed small spans must coalesce into 1 MiB runs).
  head.reset();
  ExactGC();
  if (!Drain()) ChildFail(9, "finalizer queue did not drain after the drop");
  ExactGC();
  const gofin::MemStats after = gofin::ReadMemStats();
  if (!HeapRelationsHold(after)) ChildFail(10, "MemStats relations broken after the drop");
  if (after.HeapAlloc > 32 * kMiB) ChildFail(11, "dropped heap not freed");
  try {
    gofin::Root<Link> again;
    const std::uint64_t blocks = heap_at_wall * 3 / 4 / (kMiB + 8192);
    for (std::uint64_t i = 0; i < blocks; ++i) {
      auto* l = static_cast<Link*>(gofin::Alloc(kMiB));
      l->prev = again.get();
      again = l;
    }
    for (int i = 0; i < 100000; ++i) gofin::New<Link>();
  } catch (const std::bad_alloc&) {
    const gofin::MemStats m = gofin::ReadMemStats();
    char msg[256];
    std::snprintf(
        msg, sizeof msg,
        "allocation fails after the heap was freed (HeapSys %llu MiB, HeapInuse %llu MiB, "
        "HeapAlloc %llu MiB, HeapReleased %llu MiB, HeapObjects %llu)",
        static_cast<unsigned long long>(m.HeapSys >> 20),
        static_cast<unsigned long long>(m.HeapInuse >> 20),
        static_cast<unsigned long long>(m.HeapAlloc >> 20),
        static_cast<unsigned long long>(m.HeapReleased >> 20),
        static_cast<unsigned long long>(m.HeapObjects));
    ChildFail(12, msg);
  }
  static std::atomic<int> late{0};
  Trace("reallocated");
  InThread([] { gofin::SetFinalizer(gofin::New<Link>(), [](Link*) { late.fetch_add(1); }); });
  ExactGC();
  if (!Drain() || late.load() != 1) ChildFail(13, "finalizers stopped working after OOM");
  std::fprintf(
      stderr,
      "OOM after %llu objects in %.1f s; %zu holes; %d of 12 refused with no address space\n",
      static_cast<unsigned long long>(n), to_wall, nholes, failures);
  _exit(0);
}

}  // namespace

TEST(FaultsDeathTest, OutOfAddressSpaceWithLargeObjects) {
  SKIP_UNDER_TSAN("RLIMIT_AS");
  EXPECT_EXIT(OomChild(OomKind::kLarge), ::testing::ExitedWithCode(0), "");
}
TEST(FaultsDeathTest, OutOfAddressSpaceWithSmallObjects) {
  SKIP_UNDER_TSAN("RLIMIT_AS");
  EXPECT_EXIT(OomChild(OomKind::kSmall), ::testing::ExitedWithCode(0), "");
}
TEST(FaultsDeathTest, OutOfAddressSpaceWhileFinalizersAreQueued) {
  SKIP_UNDER_TSAN("RLIMIT_AS");
  EXPECT_EXIT(OomChild(OomKind::kSmallWithFinalizers), ::testing::ExitedWithCode(0), "");
}

// ---------------------------------------------------------------------------------------------
// A memory limit that cannot be met
// ---------------------------------------------------------------------------------------------

TEST(Faults, MemoryLimitBelowTheLiveHeapStillCompletes) {
  gofin::Root<Link> live;
  InThread([&] {  // 32 MiB live
    for (int i = 0; i < 32; ++i) {
      auto* l = static_cast<Link*>(gofin::Alloc(kMiB));
      l->prev = live.get();
      l->canary = kCanary;
      live = l;
    }
  });
  ExactGC();
  const std::int64_t old_limit = gofin::debug::SetMemoryLimit(1 * static_cast<std::int64_t>(kMiB));
  const gofin::MemStats before = gofin::ReadMemStats();
  const auto t0 = Clock::now();
  std::uint64_t peak_inuse = 0;
  InThread([&] {
    for (int round = 0; round < 64; ++round) {
      for (int i = 0; i < 1024; ++i) gofin::Alloc(4096);  // 4 MiB of garbage per round
      peak_inuse = std::max(peak_inuse, gofin::ReadMemStats().HeapInuse);
    }
  });
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  const gofin::MemStats after = gofin::ReadMemStats();
  gofin::debug::SetMemoryLimit(old_limit);
  const std::uint64_t cycles = after.NumGC - before.NumGC;
  EXPECT_GE(cycles, 8U)
      << "the limit must make collections happen (256 MiB of garbage, 1 MiB limit)";
  EXPECT_LE(cycles, 2000U) << "but not one per allocation";
  EXPECT_LT(secs, 60.0);
  EXPECT_LT(peak_inuse, 200 * kMiB) << "the heap did not stay near the live size";
  int n = 0;
  for (Link* l = live.get(); l != nullptr; l = l->prev, ++n) ASSERT_EQ(l->canary, kCanary);
  EXPECT_EQ(n, 32);
  EXPECT_TRUE(HeapRelationsHold(after));
}

TEST(Faults, MemoryLimitOfZeroStillCompletes) {
  const std::int64_t old_limit = gofin::debug::SetMemoryLimit(0);
  const std::uint64_t before = gofin::ReadMemStats().NumGC;
  InThread([] {
    for (int i = 0; i < 20000; ++i) gofin::Alloc(1024);
  });
  const std::uint64_t cycles = gofin::ReadMemStats().NumGC - before;
  gofin::debug::SetMemoryLimit(old_limit);
  EXPECT_GE(cycles, 2U);
  EXPECT_LE(cycles, 2000U);
}

// ---------------------------------------------------------------------------------------------
// A finalizer that blocks for a long time
// ---------------------------------------------------------------------------------------------

namespace {
gofin_test::Event g_latch;            // opened by the test: the blocking finalizer returns
gofin_test::Event g_blocker_started;  // set by the blocking finalizer
std::atomic<int> g_after_blocker{0};

// Opens the latch however the test ends: the finalizer thread is never left blocked.
struct OpenLatchOnExit {
  OpenLatchOnExit() = default;
  OpenLatchOnExit(const OpenLatchOnExit&) = delete;
  OpenLatchOnExit& operator=(const OpenLatchOnExit&) = delete;
  ~OpenLatchOnExit() { g_latch.Set(); }
};
}  // namespace

TEST(Faults, BlockingFinalizerDelaysOnlyTheOtherFinalizers) {
  static std::atomic<int> dtors{0};
  dtors = 0;
  g_after_blocker = 0;
  g_latch.Reset();
  g_blocker_started.Reset();
  const OpenLatchOnExit open_latch;
  InThread([] {
    gofin::SetFinalizer(gofin::New<Link>(), [](Link*) {
      g_blocker_started.Set();
      g_latch.WaitFor(120s);
    });
  });
  ExactGC();
  ASSERT_TRUE(g_blocker_started.WaitFor(60s)) << "the blocking finalizer never started";

  // Finalizers queued behind it wait; collections, allocation and frees go on.
  const gofin::MemStats base = gofin::ReadMemStats();
  std::uint64_t worst = 0;
  for (int round = 0; round < 30; ++round) {
    InThread([] {
      for (int i = 0; i < 10; ++i) {
        auto* c = gofin::New<Counted>(&dtors);
        gofin::SetFinalizer(c, [](Counted*) { g_after_blocker.fetch_add(1); });
      }
      for (int i = 0; i < 8192; ++i) gofin::Alloc(1024);  // 8 MiB of plain garbage
    });
    ExactGC();
    worst = std::max(worst, gofin::ReadMemStats().HeapAlloc);
  }
  EXPECT_EQ(g_after_blocker.load(), 0) << "one finalizer thread: nothing runs while one blocks";
  EXPECT_EQ(dtors.load(), 0) << "queued objects are kept";
  EXPECT_GE(gofin::ReadMemStats().NumGC, base.NumGC + 30);
  // The queue holds 300 small objects; 240 MiB of garbage went by.
  EXPECT_LE(worst, base.HeapAlloc + 4 * kMiB)
      << "the heap grew with the garbage while a finalizer blocked";
  EXPECT_FALSE(gofin::testing::BlockUntilEmptyFinalizerQueue(50ms));

  g_latch.Set();
  ASSERT_TRUE(Drain());
  EXPECT_EQ(g_after_blocker.load(), 300);
  ExactGC();
  EXPECT_EQ(dtors.load(), 300);
}

// ---------------------------------------------------------------------------------------------
// Threads that exit while others hold what they allocated
// ---------------------------------------------------------------------------------------------

TEST(Faults, ObjectsOfAnExitedThreadSurviveWhileAnotherThreadHoldsThem) {
  constexpr int kChains = 32, kLen = 200;
  static std::atomic<int> dtors{0}, fins{0};
  dtors = fins = 0;
  struct Node : Counted {
    using Counted::Counted;
    Node* next = nullptr;
    int index = 0;
  };
  std::atomic<std::uintptr_t> heads[kChains] = {};
  std::atomic<int> round{0}, verified{-1}, bad{0};
  std::atomic<bool> drop{false}, dropped{false}, taken{false};
  gofin_test::Notifier changed;  // notified after every change of the atomics above

  // The holder: registered, keeps the chains only on its own stack. It waits in a semaphore
  // wait (test_wait.hpp), where a collection can stop it and scan its stack.
  std::thread holder([&] {
    gofin::ThreadScope scope;
    Node* volatile held[kChains];
    for (int c = 0; c < kChains; ++c) {
      if (!changed.WaitFor(120s, [&] { return heads[c].load() != 0; })) bad.fetch_add(1000);
      held[c] = reinterpret_cast<Node*>(heads[c].exchange(0) ^ kMask);
    }
    taken = true;
    changed.Notify();
    for (;;) {
      changed.WaitFor(120s, [&] { return drop.load() || round.load() != verified.load(); });
      const int r = round.load();
      if (drop.load()) break;
      if (r == verified.load()) continue;
      for (int c = 0; c < kChains; ++c) {
        int i = 0;
        for (Node* n = held[c]; n != nullptr; n = n->next, ++i) {
          if (n->canary != kCanary || n->index != i) bad.fetch_add(1);
        }
        if (i != kLen) bad.fetch_add(1);
      }
      verified = r;
      changed.Notify();
    }
    for (auto& h : held) h = nullptr;
    dropped = true;
    changed.Notify();
    // Stays registered, holding nothing, until told to exit.
    changed.WaitFor(120s, [&] { return !drop.load(); });
  });
  // However the test ends (an ASSERT returns early), the holder is released and joined.
  auto release_holder = [&] {
    if (!holder.joinable()) return;
    drop = true;
    changed.Notify();
    changed.WaitFor(120s, [&] { return dropped.load(); });
    drop = false;
    changed.Notify();
    holder.join();
  };
  struct Finally {
    decltype(release_holder)& fn;
    ~Finally() { fn(); }
  } finally{release_holder};

  // The allocating thread hands the chains over and exits: its cache goes back to the heap.
  InThread([&] {
    for (int c = 0; c < kChains; ++c) {
      Node* head = nullptr;
      for (int i = kLen - 1; i >= 0; --i) {
        auto* n = gofin::New<Node>(&dtors);
        n->next = head;
        n->index = i;
        if (i % 50 == 0) gofin::SetFinalizer(n, [](Node*) { fins.fetch_add(1); });
        head = n;
      }
      heads[c] = reinterpret_cast<std::uintptr_t>(head) ^ kMask;
      changed.Notify();
    }
  });
  // Until the holder has them the chains are only XOR-hidden: no collection before that.
  ASSERT_TRUE(changed.WaitFor(120s, [&] { return taken.load(); }))
      << "the holder never took the chains";
  for (int r = 1; r <= 10; ++r) {
    // Other threads reuse the exited thread's spans; collections come from here.
    std::vector<std::thread> churn;
    for (int t = 0; t < 2; ++t) {
      churn.emplace_back([] {
        for (int i = 0; i < 20000; ++i) gofin::New<Link>()->index = static_cast<std::uint64_t>(i);
      });
    }
    for (auto& t : churn) t.join();
    if (r % 2 == 0) {
      gofin::GC();
    } else {
      ExactGC();
    }
    round = r;
    changed.Notify();
    ASSERT_TRUE(changed.WaitFor(120s, [&] { return verified.load() == r; }))
        << "round " << r << " never verified";
  }
  EXPECT_EQ(bad.load(), 0) << "objects of an exited thread were freed or overwritten while held";
  EXPECT_EQ(dtors.load(), 0);
  EXPECT_EQ(fins.load(), 0);

  drop = true;
  changed.Notify();
  ASSERT_TRUE(changed.WaitFor(120s, [&] { return dropped.load(); }));
  for (int i = 0; i < 4; ++i) {
    ExactGC();
    ASSERT_TRUE(Drain());
  }
  // The holder is still registered (waiting on the semaphore): its stack is scanned
  // conservatively, so a stale word may keep a few nodes; after it exits everything must go.
  release_holder();
  for (int i = 0; i < 8; ++i) {
    ExactGC();
    ASSERT_TRUE(Drain());
  }
  EXPECT_EQ(fins.load(), kChains * kLen / 50);
  EXPECT_EQ(dtors.load(), kChains * kLen);
}

// ---------------------------------------------------------------------------------------------
// 10,000 threads
// ---------------------------------------------------------------------------------------------

TEST(Faults, TenThousandThreadsCreatedAndDestroyed) {
  constexpr int kThreads = 10000;
  static std::atomic<int> dtors{0}, fins{0};
  dtors = fins = 0;
  // This thread and gofin's finalizer thread register once, on first use: count from there.
  InThread([] { gofin::SetFinalizer(gofin::New<Link>(), [](Link*) {}); });
  ExactGC();
  ASSERT_TRUE(Drain());
  const std::size_t registered_before = gofin::internal::RegisteredThreadCount();
  std::vector<gofin::Root<Counted>>* keep = new std::vector<gofin::Root<Counted>>(64);
  std::uint64_t sys_at_1000 = 0;
  gofin::debug::SetGCPercent(50);  // automatic cycles interleave with thread exits
  for (int i = 0; i < kThreads; i += 2) {
    auto body = [&keep, i](int j) {
      for (int k = 0; k < 8; ++k) gofin::New<Counted>(&dtors);
      auto* f = gofin::New<Counted>(&dtors);
      gofin::SetFinalizer(f, [](Counted*) { fins.fetch_add(1); });
      if ((i + j) % 97 == 0)
        (*keep)[static_cast<std::size_t>((i + j) / 97 % 64)] = gofin::New<Counted>(&dtors);
      if ((i + j) % 1000 == 1) gofin::GC();
    };
    std::thread a(body, 0), b(body, 1);
    a.join();
    b.join();
    if (i == 1000) {
      ExactGC();
      Drain();
      sys_at_1000 = gofin::ReadMemStats().Sys;
    }
  }
  gofin::debug::SetGCPercent(-1);
  EXPECT_EQ(gofin::internal::RegisteredThreadCount(), registered_before)
      << "exited threads stay registered";
  delete keep;
  for (int i = 0; i < 3; ++i) {
    ExactGC();
    ASSERT_TRUE(Drain());
  }
  EXPECT_EQ(fins.load(), kThreads);
  const int allocated = kThreads * 9 + (kThreads + 96) / 97;
  EXPECT_EQ(dtors.load(), allocated);
  const gofin::MemStats m = gofin::ReadMemStats();
  EXPECT_TRUE(HeapRelationsHold(m));
  EXPECT_LT(m.Sys, sys_at_1000 + 64 * kMiB) << "per-thread memory is not reused";
}

// ---------------------------------------------------------------------------------------------
// fork()
// ---------------------------------------------------------------------------------------------

namespace {

// The forked child's checks; each step writes its number to `fd` first, so that a parent that
// has to kill a hung child knows where it hung.
[[noreturn]] void ForkedChild(int fd, std::uintptr_t hidden_chain, int chain_len) {
  alarm(60);
  auto step = [fd](char s) { (void)!write(fd, &s, 1); };
  step(1);  // the parent's objects are there and intact
  int n = 0;
  for (Link* l = reinterpret_cast<Link*>(hidden_chain ^ kMask); l != nullptr; l = l->prev, ++n) {
    if (l->canary != kCanary) ChildFail(11, "parent's chain corrupt in the child");
  }
  if (n != chain_len) ChildFail(12, "parent's chain has the wrong length in the child");
  step(2);  // allocation, small and large
  for (int i = 0; i < 20000; ++i) gofin::New<Link>();
  for (int i = 0; i < 16; ++i) gofin::Alloc(4 * kMiB);
  step(3);  // a collection
  const std::uint64_t gc0 = gofin::ReadMemStats().NumGC;
  gofin::GC();
  if (gofin::ReadMemStats().NumGC != gc0 + 1) ChildFail(13, "GC() did not collect in the child");
  step(4);  // garbage from a thread is freed
  static std::atomic<int> dtors{0}, fins{0};
  InThread([] {
    for (int i = 0; i < 100; ++i) gofin::New<Counted>(&dtors);
  });
  ExactGC();
  if (dtors.load() != 100) ChildFail(14, "garbage not freed in the child");
  step(5);  // finalizers run (a new finalizer thread)
  InThread([] {
    for (int i = 0; i < 10; ++i)
      gofin::SetFinalizer(gofin::New<Link>(), [](Link*) { fins.fetch_add(1); });
  });
  // A stale word (seen in unoptimised builds) may keep one of them a cycle longer; it must
  // not survive clean cycles.
  for (int i = 0; i < 3 && fins.load() != 10; ++i) {
    ExactGC();
    if (!Drain(20s)) ChildFail(15, "the finalizer queue does not drain in the child");
  }
  if (fins.load() != 10) ChildFail(15, "finalizers do not run in the child");
  step(6);  // several threads allocating and collecting at once
  std::vector<std::thread> ts;
  gofin::debug::SetGCPercent(10);
  for (int t = 0; t < 3; ++t) {
    ts.emplace_back([] {
      for (int i = 0; i < 20000; ++i) gofin::New<Link>();
      gofin::GC();
    });
  }
  for (auto& t : ts) t.join();
  step(7);
  if (!HeapRelationsHold(gofin::ReadMemStats()))
    ChildFail(16, "MemStats relations broken in the child");
  step(8);
  _exit(0);
}

struct ForkResult {
  int status = 0;
  bool hung = false;
  int last_step = 0;
};

ForkResult ForkAndWait(std::uintptr_t hidden_chain, int chain_len) {
  int fds[2];
  if (pipe(fds) != 0) ChildFail(30, "pipe");
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    ForkedChild(fds[1], hidden_chain, chain_len);
  }
  close(fds[1]);
  ForkResult r;
  // The child holds the pipe's only write end: end of file is its exit (or its crash). poll()
  // wakes at each step it reports and at its end; past the deadline it is killed.
  const auto deadline = Clock::now() + 90s;
  for (;;) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      r.hung = true;
      kill(pid, SIGKILL);
      break;
    }
    pollfd pfd{fds[0], POLLIN, 0};
    const int ready = poll(&pfd, 1, static_cast<int>(left.count()));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) continue;  // timed out: the deadline check kills the child
    char buf[16];
    const ssize_t got = read(fds[0], buf, sizeof buf);
    if (got > 0) {
      r.last_step = buf[got - 1];
    } else if (got == 0 || errno != EINTR) {
      break;  // end of file: the child is gone
    }
  }
  waitpid(pid, &r.status, 0);
  close(fds[0]);
  return r;
}

std::string Describe(const ForkResult& r) {
  char msg[160];
  if (r.hung) {
    std::snprintf(msg, sizeof msg, "hung (killed after 90 s) in step %d", r.last_step);
  } else if (WIFSIGNALED(r.status)) {
    std::snprintf(msg, sizeof msg, "killed by signal %d in step %d", WTERMSIG(r.status),
                  r.last_step);
  } else {
    std::snprintf(msg, sizeof msg, "exit code %d after step %d", WEXITSTATUS(r.status),
                  r.last_step);
  }
  return msg;
}

// busy: another thread allocates and collects in a loop while the process forks (API.md:
// "the child gets a usable heap when the other threads were not inside gofin at the fork";
// this variant shows what happens when they are).
[[noreturn]] void ForkScenario(bool busy, int forks) {
  alarm(600);
  gofin::debug::SetGCPercent(100);
  WarmUp();
  // A chain the child must find intact; an idle registered thread holding an object.
  gofin::Root<Link> chain;
  constexpr int kLen = 1000;
  InThread([&] {
    for (int i = 0; i < kLen; ++i) {
      auto* l = gofin::New<Link>();
      l->prev = chain.get();
      chain = l;
    }
  });
  std::atomic<bool> stop{false};
  gofin_test::Event stop_idle;
  std::thread idle([&] {
    gofin::ThreadScope scope;
    Link* volatile mine = gofin::New<Link>();
    stop_idle.WaitFor(600s);
    (void)mine;
  });
  std::thread churn;
  std::atomic<long> churn_rounds{0};
  gofin_test::Notifier churned;
  if (busy) {
    churn = std::thread([&] {
      while (!stop.load()) {
        for (int i = 0; i < 1000; ++i) gofin::New<Link>();
        gofin::SetFinalizer(gofin::New<Link>(), [](Link*) {});
        if (std::rand() % 8 == 0) gofin::GC();
        churn_rounds.fetch_add(1);
        churned.Notify();
      }
    });
  }
  int failed = 0;
  for (int k = 0; k < forks; ++k) {
    const ForkResult r = ForkAndWait(reinterpret_cast<std::uintptr_t>(chain.get()) ^ kMask, kLen);
    if (r.hung || !WIFEXITED(r.status) || WEXITSTATUS(r.status) != 0) {
      std::fprintf(stderr, "fork %d: child %s\n", k, Describe(r).c_str());
      ++failed;
    }
    if (busy) {
      // The next fork after a random amount of the other thread's work (0 to 7 rounds), so
      // that forks land at varied points of its allocation, finalizers and collections.
      const long target = churn_rounds.load() + std::rand() % 8;
      churned.WaitFor(10s, [&] { return churn_rounds.load() >= target; });
    }
  }
  stop = true;
  stop_idle.Set();
  idle.join();
  if (churn.joinable()) churn.join();
  // The parent is unaffected.
  static std::atomic<int> fins{0};
  InThread([] { gofin::SetFinalizer(gofin::New<Link>(), [](Link*) { fins.fetch_add(1); }); });
  ExactGC();
  if (!Drain() || fins.load() != 1) ChildFail(40, "the parent's finalizers stopped after fork");
  if (failed != 0) {
    std::fprintf(stderr, "%d of %d forked children failed\n", failed, forks);
    _exit(1);
  }
  _exit(0);
}

}  // namespace

TEST(FaultsDeathTest, ForkedChildCanAllocateCollectAndFinalize) {
  SKIP_UNDER_TSAN("fork() of a multi-threaded process");
  EXPECT_EXIT(ForkScenario(false, 3), ::testing::ExitedWithCode(0), "");
}

// Outside what gofin supports (README, "Misuse"): a fork while another thread is inside gofin
// can leave the child with a half-updated structure or a lock it can never take; a fork
// handler that stopped the world first would deadlock glibc's own malloc fork handling. It
// passes most runs and hangs some, so it is not part of the suite; run it by hand with
// --gtest_also_run_disabled_tests.
TEST(FaultsDeathTest, DISABLED_ForkWhileAnotherThreadAllocatesAndCollects) {
  SKIP_UNDER_TSAN("fork() of a multi-threaded process");
  EXPECT_EXIT(ForkScenario(true, 50), ::testing::ExitedWithCode(0), "");
}
