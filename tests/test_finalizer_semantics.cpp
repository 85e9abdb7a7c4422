// End-to-end finalizer semantics (API.md "Finalizers", Go's runtime.SetFinalizer docs):
//   - a finalizer runs once, after a collection finds its object unreachable, never while it is
//     reachable (from a Root, a global, another object, a thread's stack: Go's TestDeferKeepAlive);
//   - the object and everything it references stay intact until the finalizer ran, and the
//     object is freed (its destructor runs) only by a later cycle;
//   - resurrection, and SetFinalizer again from inside the finalizer;
//   - chains are finalized one link per cycle, cycles containing a finalized object never;
//     a finalizer that captures its own object never runs;
//   - the finalizers of several objects of one tiny block run in the same cycle;
//   - a one-past-the-end pointer of an array does not keep the next object alive (Go's
//     TestEmptySlice and TestEmptyString);
//   - ReadFinalizerStats.
//
// Conservative scanning: objects that must become unreachable are allocated and dropped in
// short-lived std::threads (a dead thread's stack is not scanned), so every assertion is exact.
// The test thread never holds them: addresses are XOR-encoded wherever they are kept, checks
// that need the object run inside a thread or inside the finalizer.
#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <gofin/gofin.hpp>
#include <initializer_list>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "heap/malloc.hpp"
#include "heap/span.hpp"
#include "test_support.hpp"

namespace {

using gofin_test::Watchdog;

using namespace std::chrono_literals;

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

bool Drain() { return gofin::testing::BlockUntilEmptyFinalizerQueue(30s); }

[[gnu::noinline]] void GCAndDrain() {
  CollectClean();
  ASSERT_TRUE(Drain()) << "the finalizer queue did not drain within 30 s";
}

template <class F>
void InThread(F&& f) {
  std::thread t(std::forward<F>(f));
  t.join();
}

volatile std::uintptr_t g_mask = 0x5a5a000000000000ULL;
std::uintptr_t Encode(const volatile void* p) {
  return reinterpret_cast<std::uintptr_t>(p) ^ g_mask;
}

int Load(const std::atomic<int>& a) { return a.load(); }

std::uintptr_t BaseOf(const void* p) { return gofin::internal::FindObject(p).base; }
std::size_t ElemSizeOf(const void* p) {
  const gofin::internal::ObjectRef r = gofin::internal::FindObject(p);
  return r.span == nullptr ? 0 : r.span->elemsize;
}

class SemanticsEnv : public ::testing::Environment {
 public:
  void SetUp() override { old_ = gofin::debug::SetGCPercent(-1); }
  void TearDown() override { gofin::debug::SetGCPercent(old_); }

 private:
  int old_ = 100;
};
[[maybe_unused]] ::testing::Environment* const g_env =
    ::testing::AddGlobalTestEnvironment(new SemanticsEnv);

constexpr std::uint64_t kCanary = 0x9e3779b97f4a7c15ULL;
constexpr std::uint64_t kDead = 0xdeadbeefdeadbeefULL;

// A scanned object with a destructor that counts (into a global counter) and poisons it.
struct Obj {
  Obj(std::atomic<int>* d, std::uint64_t v) : dtors(d), canary(kCanary ^ v), value(v) {}
  ~Obj() {
    dtors->fetch_add(1);
    canary = kDead;
  }
  Obj(const Obj&) = delete;
  Obj& operator=(const Obj&) = delete;
  [[nodiscard]] bool Ok() const { return canary == (kCanary ^ value); }

  std::atomic<int>* dtors;
  std::uint64_t canary;
  std::uint64_t value;
  Obj* next = nullptr;
  std::uint64_t seq = 0;  // when the finalizer ran
};

// Every test starts from a quiet heap: earlier tests' garbage is collected and finalized now.
class Fin : public ::testing::Test {
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

std::atomic<std::uint64_t> g_seq{0};

}  // namespace

// ---------------------------------------------------------------------------------------------
// Basic lifetime
// ---------------------------------------------------------------------------------------------

namespace {
std::atomic<int> g_basic_dtors{0};
std::atomic<int> g_basic_runs{0};
std::atomic<int> g_basic_bad{0};
std::atomic<int> g_basic_dtors_seen{-1};
std::atomic<std::uintptr_t> g_basic_expect{0};
}  // namespace

TEST_F(Fin, RunsOnceAfterUnreachableObjectIntactThenFreedByALaterCycle) {
  Zero({&g_basic_dtors, &g_basic_runs, &g_basic_bad});
  g_basic_dtors_seen = -1;
  InThread([] {
    auto* o = gofin::New<Obj>(&g_basic_dtors, 1);
    g_basic_expect = Encode(o);
    gofin::SetFinalizer(o, [](Obj* p) {
      if (Encode(p) != g_basic_expect.load()) g_basic_bad.fetch_add(1);
      if (!p->Ok()) g_basic_bad.fetch_add(1);
      g_basic_dtors_seen = Load(g_basic_dtors);
      g_basic_runs.fetch_add(1);
    });
  });
  EXPECT_EQ(Load(g_basic_runs), 0) << "ran before any collection";
  CollectClean();
  ASSERT_TRUE(Drain());
  EXPECT_EQ(Load(g_basic_runs), 1);
  EXPECT_EQ(Load(g_basic_bad), 0) << "wrong pointer or a damaged object";
  EXPECT_EQ(g_basic_dtors_seen.load(), 0) << "the destructor ran before the finalizer";
  EXPECT_EQ(Load(g_basic_dtors), 0) << "freed in the cycle that queued its finalizer";
  GCAndDrain();
  EXPECT_EQ(Load(g_basic_dtors), 1) << "not freed by the cycle after its finalizer ran";
  GCAndDrain();
  EXPECT_EQ(Load(g_basic_runs), 1) << "ran twice";
  EXPECT_EQ(Load(g_basic_dtors), 1);
}

namespace {
std::atomic<int> g_reach_dtors{0};
std::atomic<int> g_reach_runs{0};
gofin::Root<Obj> g_reach_root;
Obj* volatile g_reach_global = nullptr;  // bss: a root
char* volatile g_reach_inner = nullptr;  // an interior pointer in a global
struct Holder {
  void* pad = nullptr;
  Obj* inner = nullptr;
};
gofin::Root<Holder> g_reach_holder;
}  // namespace

TEST_F(Fin, NeverRunsWhileReachable) {
  Zero({&g_reach_dtors, &g_reach_runs});
  InThread([] {
    auto fin = [](Obj*) { g_reach_runs.fetch_add(1); };
    auto* a = gofin::New<Obj>(&g_reach_dtors, 1);
    auto* b = gofin::New<Obj>(&g_reach_dtors, 2);
    auto* c = gofin::New<Obj>(&g_reach_dtors, 3);
    auto* d = gofin::New<Obj>(&g_reach_dtors, 4);
    for (Obj* o : {a, b, c, d}) gofin::SetFinalizer(o, fin);
    g_reach_root = a;                       // a Root
    g_reach_global = b;                     // a global
    g_reach_holder = gofin::New<Holder>();  // another object, itself in a Root
    g_reach_holder->inner = c;
    g_reach_inner = reinterpret_cast<char*>(d) + 20;  // inside d
  });
  for (int i = 0; i < 3; ++i) GCAndDrain();
  EXPECT_EQ(Load(g_reach_runs), 0);
  EXPECT_EQ(Load(g_reach_dtors), 0);
  // Control: once the references are gone, all four are finalized by one cycle.
  g_reach_root.reset();
  g_reach_global = nullptr;
  g_reach_holder.reset();
  g_reach_inner = nullptr;
  GCAndDrain();
  EXPECT_EQ(Load(g_reach_runs), 4);
  EXPECT_EQ(Load(g_reach_dtors), 0);
  GCAndDrain();
  EXPECT_EQ(Load(g_reach_dtors), 4);
}

namespace {
std::atomic<int> g_ka_runs{0};
using IntPtr = int*;  // Go: `type T *int`: a pointer base type avoids the tiny allocator
}  // namespace

// TestDeferKeepAlive: the finalizer must not run while KeepAlive at the end of the scope still
// has to see the object, even though the scope runs GC() before it.
TEST_F(Fin, DeferKeepAlive) {
  const int r0 = Load(g_ka_runs);
  {
    IntPtr* x = gofin::New<IntPtr>();
    gofin::SetFinalizer(x, [](IntPtr*) { g_ka_runs.fetch_add(1); });
    struct Defer {
      IntPtr* x;
      ~Defer() { gofin::KeepAlive(x); }
    } defer{x};
    x = nullptr;
    gofin::GC();
    ASSERT_TRUE(Drain());
    EXPECT_EQ(Load(g_ka_runs) - r0, 0) << "finalizer ran prematurely";
  }
}

// The same from a thread that is blocked (inside the C++ runtime, not in gofin) when the
// collection runs: its stack and saved registers keep the object alive until KeepAlive. Then,
// once it has exited, the very same object is finalized: the control that shows the first
// assertion could fail.
TEST_F(Fin, KeepAliveInABlockedThread) {
  const int r0 = Load(g_ka_runs);
  std::mutex mu;
  std::condition_variable cv;
  bool ready = false, go = false;
  std::thread t([&] {
    IntPtr* x = gofin::New<IntPtr>();
    gofin::SetFinalizer(x, [](IntPtr*) { g_ka_runs.fetch_add(1); });
    {
      std::unique_lock lock(mu);
      ready = true;
      cv.notify_all();
      cv.wait_for(lock, 60s, [&] { return go; });
    }
    gofin::KeepAlive(x);
  });
  {
    std::unique_lock lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, 60s, [&] { return ready; }));
  }
  GCAndDrain();
  GCAndDrain();
  EXPECT_EQ(Load(g_ka_runs) - r0, 0) << "finalizer ran while a blocked thread still used x";
  {
    std::lock_guard lock(mu);
    go = true;
  }
  cv.notify_all();
  t.join();
  GCAndDrain();
  EXPECT_EQ(Load(g_ka_runs) - r0, 1) << "control: once the thread is gone it must run";
}

// ---------------------------------------------------------------------------------------------
// Resurrection
// ---------------------------------------------------------------------------------------------

namespace {
std::atomic<int> g_res_dtors{0};
std::atomic<int> g_res_runs{0};
gofin::Root<Obj> g_resurrected;
}  // namespace

TEST_F(Fin, ResurrectionKeepsTheObjectIntactUntilDroppedAgain) {
  Zero({&g_res_dtors, &g_res_runs});
  InThread([] {
    auto* o = gofin::New<Obj>(&g_res_dtors, 77);
    gofin::SetFinalizer(o, [](Obj* p) {
      g_resurrected = p;  // resurrect
      g_res_runs.fetch_add(1);
    });
  });
  GCAndDrain();
  ASSERT_EQ(Load(g_res_runs), 1);
  for (int i = 0; i < 3; ++i) GCAndDrain();
  EXPECT_EQ(Load(g_res_dtors), 0) << "a resurrected object was freed";
  std::atomic<bool> ok{false};
  InThread([&] { ok = g_resurrected && g_resurrected->Ok() && g_resurrected->value == 77; });
  EXPECT_TRUE(ok.load()) << "the resurrected object is damaged";
  EXPECT_EQ(Load(g_res_runs), 1) << "its finalizer ran again without being set again";

  g_resurrected.reset();  // unreachable again: no finalizer any more, so freed by one cycle
  GCAndDrain();
  EXPECT_EQ(Load(g_res_dtors), 1);
  EXPECT_EQ(Load(g_res_runs), 1);
}

namespace {
std::atomic<int> g_again_dtors{0};
std::atomic<int> g_again_runs{0};
std::atomic<int> g_again_bad{0};
void FinAgain(Obj* p) {
  const int n = g_again_runs.fetch_add(1) + 1;
  if (!p->Ok()) g_again_bad.fetch_add(1);
  if (n < 3) {
    try {
      gofin::SetFinalizer(p, &FinAgain);  // Go: SetFinalizer again from inside the finalizer
    } catch (...) {
      g_again_bad.fetch_add(100);
    }
  }
}
}  // namespace

TEST_F(Fin, SetFinalizerAgainInsideTheFinalizer) {
  Zero({&g_again_dtors, &g_again_runs, &g_again_bad});
  InThread([] { gofin::SetFinalizer(gofin::New<Obj>(&g_again_dtors, 5), &FinAgain); });
  for (int cycle = 1; cycle <= 3; ++cycle) {
    GCAndDrain();
    EXPECT_EQ(Load(g_again_runs), cycle) << "cycle " << cycle;
    EXPECT_EQ(Load(g_again_dtors), 0) << "cycle " << cycle;
  }
  GCAndDrain();  // the third run did not set it again: freed now
  EXPECT_EQ(Load(g_again_runs), 3);
  EXPECT_EQ(Load(g_again_dtors), 1);
  EXPECT_EQ(Load(g_again_bad), 0);
}

namespace {
std::atomic<int> g_second_runs{0};
}  // namespace

TEST_F(Fin, SetFinalizerAgainAfterItRanOnAResurrectedObject) {
  Zero({&g_second_runs});
  const int d0 = Load(g_res_dtors);
  const int r0 = Load(g_res_runs);
  InThread([] {
    gofin::SetFinalizer(gofin::New<Obj>(&g_res_dtors, 8), [](Obj* p) {
      g_resurrected = p;
      g_res_runs.fetch_add(1);
    });
  });
  GCAndDrain();
  ASSERT_EQ(Load(g_res_runs) - r0, 1);
  std::string err = "<no exception>";
  InThread([&] {
    try {
      gofin::SetFinalizer(g_resurrected.get(), [](Obj* p) {
        if (p->Ok()) g_second_runs.fetch_add(1);
      });
    } catch (const gofin::Error& e) {
      err = e.what();
    }
  });
  EXPECT_EQ(err, "<no exception>") << "the association was cleared when the finalizer was queued";
  g_resurrected.reset();
  GCAndDrain();
  EXPECT_EQ(Load(g_second_runs), 1);
  EXPECT_EQ(Load(g_res_dtors) - d0, 0);
  GCAndDrain();
  EXPECT_EQ(Load(g_res_dtors) - d0, 1);
}

// ---------------------------------------------------------------------------------------------
// Reachability through finalized objects: chains, cycles, captures
// ---------------------------------------------------------------------------------------------

namespace {
std::atomic<int> g_chain_dtors{0};
std::atomic<int> g_chain_bad{0};
std::atomic<std::uint64_t> g_chain_seq[4];
std::atomic<int> g_chain_runs[4];
template <int I>
void ChainFin(Obj* p) {
  g_chain_seq[I] = ++g_seq;
  g_chain_runs[I].fetch_add(1);
  if (!p->Ok() || p->value != I) g_chain_bad.fetch_add(1);
  // What it references is alive and intact.
  if (p->next != nullptr && !p->next->Ok()) g_chain_bad.fetch_add(1);
}
}  // namespace

// A -> B, both finalized: A's finalizer runs in the first cycle, B's not until a later one.
TEST_F(Fin, ChainIsFinalizedOneLinkPerCycle) {
  Zero({&g_chain_dtors, &g_chain_bad, &g_chain_runs[0], &g_chain_runs[1]});
  InThread([] {
    auto* a = gofin::New<Obj>(&g_chain_dtors, 0);
    auto* b = gofin::New<Obj>(&g_chain_dtors, 1);
    a->next = b;
    gofin::SetFinalizer(a, &ChainFin<0>);
    gofin::SetFinalizer(b, &ChainFin<1>);
  });
  GCAndDrain();
  EXPECT_EQ(Load(g_chain_runs[0]), 1) << "A's finalizer didn't run in the first cycle";
  EXPECT_EQ(Load(g_chain_runs[1]), 0) << "B was finalized while A still referenced it";
  EXPECT_EQ(Load(g_chain_dtors), 0);
  GCAndDrain();
  EXPECT_EQ(Load(g_chain_runs[1]), 1) << "B's finalizer didn't run in the second cycle";
  EXPECT_EQ(Load(g_chain_dtors), 1) << "A is freed by the second cycle";
  EXPECT_LT(g_chain_seq[0].load(), g_chain_seq[1].load());
  GCAndDrain();
  EXPECT_EQ(Load(g_chain_dtors), 2);
  EXPECT_EQ(Load(g_chain_runs[0]), 1);
  EXPECT_EQ(Load(g_chain_runs[1]), 1);
  EXPECT_EQ(Load(g_chain_bad), 0);
}

namespace {
std::atomic<int> g_long_dtors{0};
std::atomic<int> g_long_runs[4];
std::atomic<int> g_long_bad{0};
template <int I>
void LongFin(Obj* p) {
  g_long_runs[I].fetch_add(1);
  if (!p->Ok()) g_long_bad.fetch_add(1);
}
}  // namespace

TEST_F(Fin, LongChainOneLinkPerCycle) {
  Zero({&g_long_dtors, &g_long_bad, &g_long_runs[0], &g_long_runs[1], &g_long_runs[2],
        &g_long_runs[3]});
  InThread([] {
    Obj* o[4];
    for (int i = 0; i < 4; ++i) o[i] = gofin::New<Obj>(&g_long_dtors, i);
    for (int i = 0; i < 3; ++i) o[i]->next = o[i + 1];
    gofin::SetFinalizer(o[0], &LongFin<0>);
    gofin::SetFinalizer(o[1], &LongFin<1>);
    gofin::SetFinalizer(o[2], &LongFin<2>);
    gofin::SetFinalizer(o[3], &LongFin<3>);
  });
  for (int cycle = 0; cycle < 4; ++cycle) {
    GCAndDrain();
    for (int i = 0; i < 4; ++i) {
      EXPECT_EQ(Load(g_long_runs[i]), i <= cycle ? 1 : 0) << "cycle " << cycle << " link " << i;
    }
    EXPECT_EQ(Load(g_long_dtors), cycle) << "cycle " << cycle;
  }
  GCAndDrain();
  EXPECT_EQ(Load(g_long_dtors), 4);
  EXPECT_EQ(Load(g_long_bad), 0);
}

namespace {
std::atomic<int> g_cycle_dtors{0};
std::atomic<int> g_cycle_runs{0};
}  // namespace

// Go: "If a cyclic structure includes a block with a finalizer, that cycle is not guaranteed
// to be garbage collected"; API.md: never collected.
TEST_F(Fin, CycleContainingAFinalizedObjectIsNeverCollected) {
  Zero({&g_cycle_dtors, &g_cycle_runs});
  InThread([] {
    auto fin = [](Obj*) { g_cycle_runs.fetch_add(1); };
    // A <-> B, finalizer on A.
    auto* a = gofin::New<Obj>(&g_cycle_dtors, 1);
    auto* b = gofin::New<Obj>(&g_cycle_dtors, 2);
    a->next = b;
    b->next = a;
    gofin::SetFinalizer(a, fin);
    // (C -> C is no such cycle: a pointer into the object itself does not keep it alive; see
    // SelfPointingFinalizedObjectIsFinalized.)
    // D <-> E, both finalized.
    auto* d = gofin::New<Obj>(&g_cycle_dtors, 4);
    auto* e = gofin::New<Obj>(&g_cycle_dtors, 5);
    d->next = e;
    e->next = d;
    gofin::SetFinalizer(d, fin);
    gofin::SetFinalizer(e, fin);
  });
  for (int i = 0; i < 5; ++i) GCAndDrain();
  EXPECT_EQ(Load(g_cycle_runs), 0);
  EXPECT_EQ(Load(g_cycle_dtors), 0);
}

namespace {
std::atomic<int> g_selfptr_dtors{0};
std::atomic<int> g_selfptr_runs{0};
}  // namespace

// API.md: a pointer from an object into itself is not a cycle (C++ objects point into themselves
// all the time: a short std::string, an empty std::list); bdwgc's C++ finalizers ignore them too.
TEST_F(Fin, SelfPointingFinalizedObjectIsFinalized) {
  Zero({&g_selfptr_dtors, &g_selfptr_runs});
  InThread([] {
    auto* c = gofin::New<Obj>(&g_selfptr_dtors, 3);
    c->next = c;
    gofin::SetFinalizer(c, [](Obj*) { g_selfptr_runs.fetch_add(1); });
  });
  for (int i = 0; i < 5 && Load(g_selfptr_dtors) == 0; ++i) GCAndDrain();
  EXPECT_EQ(Load(g_selfptr_runs), 1);
  EXPECT_EQ(Load(g_selfptr_dtors), 1);
}

namespace {
std::atomic<int> g_cycle_ctl_dtors{0};
std::atomic<int> g_cycle_ctl_runs{0};
}  // namespace

// Control for the above: the same cycle without a finalizer is collected, and a finalized object
// that merely points into a cycle is finalized.
TEST_F(Fin, CycleWithoutFinalizerIsCollected) {
  Zero({&g_cycle_ctl_dtors, &g_cycle_ctl_runs});
  InThread([] {
    auto* a = gofin::New<Obj>(&g_cycle_ctl_dtors, 1);
    auto* b = gofin::New<Obj>(&g_cycle_ctl_dtors, 2);
    a->next = b;
    b->next = a;
    auto* f = gofin::New<Obj>(&g_cycle_ctl_dtors, 3);
    f->next = a;
    gofin::SetFinalizer(f, [](Obj*) { g_cycle_ctl_runs.fetch_add(1); });
  });
  GCAndDrain();
  EXPECT_EQ(Load(g_cycle_ctl_runs), 1);
  EXPECT_EQ(Load(g_cycle_ctl_dtors), 0);
  GCAndDrain();
  EXPECT_EQ(Load(g_cycle_ctl_dtors), 3);
}

namespace {
std::atomic<int> g_self_runs{0};
std::atomic<int> g_self_dtors{0};
std::atomic<int> g_capt_dtors{0};
std::atomic<int> g_capt_runs{0};
std::atomic<int> g_capt_bad{0};
gofin::Root<Obj> g_capt_owner;
}  // namespace

TEST_F(Fin, FinalizerCapturingItsOwnObjectNeverRuns) {
  Zero({&g_self_runs, &g_self_dtors});
  InThread([] {
    auto* o = gofin::New<Obj>(&g_self_dtors, 1);
    gofin::SetFinalizer(o, [o](Obj*) {
      g_self_runs.fetch_add(1);
      gofin::KeepAlive(o);
    });
  });
  for (int i = 0; i < 5; ++i) GCAndDrain();
  EXPECT_EQ(Load(g_self_runs), 0);
  EXPECT_EQ(Load(g_self_dtors), 0);
}

// What the callable captures stays alive while the finalizer is set (its storage is scanned).
TEST_F(Fin, CapturedObjectsStayAliveWhileTheFinalizerIsSet) {
  Zero({&g_capt_dtors, &g_capt_runs, &g_capt_bad});
  InThread([] {
    auto* owner = gofin::New<Obj>(&g_capt_dtors, 1);
    auto* captured = gofin::New<Obj>(&g_capt_dtors, 2);  // referenced only by the capture
    gofin::SetFinalizer(owner, [captured](Obj* p) {
      if (!captured->Ok() || captured->value != 2 || !p->Ok()) g_capt_bad.fetch_add(1);
      g_capt_runs.fetch_add(1);
    });
    g_capt_owner = owner;
  });
  for (int i = 0; i < 3; ++i) GCAndDrain();
  EXPECT_EQ(Load(g_capt_dtors), 0) << "a captured object was freed while the finalizer was set";
  g_capt_owner.reset();
  GCAndDrain();
  EXPECT_EQ(Load(g_capt_runs), 1);
  EXPECT_EQ(Load(g_capt_bad), 0) << "the finalizer saw a freed capture";
  GCAndDrain();
  GCAndDrain();
  EXPECT_EQ(Load(g_capt_dtors), 2) << "both freed once the finalizer ran";
}

namespace {
std::atomic<int> g_ref_dtors{0};
std::atomic<int> g_ref_runs{0};
std::atomic<int> g_ref_bad{0};
struct Wide {
  std::uint64_t canary = kCanary;
  Obj* refs[6] = {};
};
}  // namespace

// Objects referenced from a finalized object (and no finalizer of their own) survive until its
// finalizer ran, intact, and are freed together with it afterwards.
TEST_F(Fin, ReferencedObjectsSurviveUntilTheFinalizerRan) {
  Zero({&g_ref_dtors, &g_ref_runs, &g_ref_bad});
  InThread([] {
    auto* w = gofin::New<Wide>();
    for (int i = 0; i < 6; ++i) w->refs[i] = gofin::New<Obj>(&g_ref_dtors, 100 + i);
    w->refs[5]->next = gofin::New<Obj>(&g_ref_dtors, 200);  // two levels down
    gofin::SetFinalizer(w, [](Wide* p) {
      if (p->canary != kCanary) g_ref_bad.fetch_add(1);
      for (int i = 0; i < 6; ++i) {
        if (!p->refs[i]->Ok() || p->refs[i]->value != std::uint64_t(100 + i))
          g_ref_bad.fetch_add(1);
      }
      if (!p->refs[5]->next->Ok()) g_ref_bad.fetch_add(1);
      if (Load(g_ref_dtors) != 0) g_ref_bad.fetch_add(1000);
      g_ref_runs.fetch_add(1);
    });
  });
  GCAndDrain();
  EXPECT_EQ(Load(g_ref_runs), 1);
  EXPECT_EQ(Load(g_ref_bad), 0);
  EXPECT_EQ(Load(g_ref_dtors), 0);
  GCAndDrain();
  EXPECT_EQ(Load(g_ref_dtors), 7);
}

// ---------------------------------------------------------------------------------------------
// Tiny blocks
// ---------------------------------------------------------------------------------------------

namespace {
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
std::atomic<int> g_tiny_runs[3];
std::atomic<int> g_tiny_bad{0};
std::atomic<std::uintptr_t> g_tiny_expect[3];
gofin::Root<std::uint32_t> g_tiny_keep;
constexpr std::uint32_t kTinyValues[3] = {0xA1A1A1A1U, 0xB2B2B2B2U, 0xC3C3C3C3U};

template <int I>
void TinyFin(std::uint32_t* p) {
  if (Encode(p) != g_tiny_expect[I].load() || *p != kTinyValues[I]) g_tiny_bad.fetch_add(1);
  g_tiny_runs[I].fetch_add(1);
}

// Allocates three tiny objects in one block with finalizers; keeps object `keep` (or none:
// -1) in g_tiny_keep. False if they could not be put in one block.
bool SetUpTinyBlock(int keep) {
  std::atomic<bool> ok{false};
  InThread([&] {
    std::uint32_t* t[3] = {};
    if (!ThreeInOneTinyBlock(t)) return;
    for (int i = 0; i < 3; ++i) g_tiny_expect[i] = Encode(t[i]);
    gofin::SetFinalizer(t[0], &TinyFin<0>);
    gofin::SetFinalizer(t[1], &TinyFin<1>);
    gofin::SetFinalizer(t[2], &TinyFin<2>);
    if (keep >= 0) g_tiny_keep = t[keep];
    ok = true;
  });
  return ok.load();
}
}  // namespace

TEST_F(Fin, TinyBlockFinalizersRunInTheSameCycle) {
  Zero({&g_tiny_bad});
  int r0[3];
  for (int i = 0; i < 3; ++i) r0[i] = Load(g_tiny_runs[i]);
  if (!SetUpTinyBlock(-1)) GTEST_SKIP() << "could not get three objects in one tiny block";
  GCAndDrain();
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(Load(g_tiny_runs[i]) - r0[i], 1) << "tiny object " << i << " not in the same cycle";
  }
  EXPECT_EQ(Load(g_tiny_bad), 0);
  GCAndDrain();
  for (int i = 0; i < 3; ++i) EXPECT_EQ(Load(g_tiny_runs[i]) - r0[i], 1);
}

// The block is one object to the collector: while any of its objects is reachable, none of
// its finalizers runs.
TEST_F(Fin, TinyBlockLivesWhileOneOfItsObjectsIsReachable) {
  Zero({&g_tiny_bad});
  int r0[3];
  for (int i = 0; i < 3; ++i) r0[i] = Load(g_tiny_runs[i]);
  if (!SetUpTinyBlock(1)) GTEST_SKIP() << "could not get three objects in one tiny block";
  GCAndDrain();
  GCAndDrain();
  for (int i = 0; i < 3; ++i) EXPECT_EQ(Load(g_tiny_runs[i]) - r0[i], 0) << "tiny object " << i;
  g_tiny_keep.reset();
  // Conservative scanning may keep the block a cycle longer (a stale word, e.g. in a
  // sanitizer's bookkeeping); it must go within a few cycles, and all three together.
  for (int cycle = 0; cycle < 4 && Load(g_tiny_runs[0]) == r0[0]; ++cycle) GCAndDrain();
  for (int i = 0; i < 3; ++i) EXPECT_EQ(Load(g_tiny_runs[i]) - r0[i], 1) << "tiny object " << i;
  EXPECT_EQ(Load(g_tiny_bad), 0);
}

// ---------------------------------------------------------------------------------------------
// Big and odd objects
// ---------------------------------------------------------------------------------------------

namespace {
std::atomic<int> g_large_dtors{0};
std::atomic<int> g_large_runs{0};
std::atomic<int> g_large_bad{0};
struct Large {
  std::uint64_t canary = kCanary;
  std::array<std::uint64_t, 16 * 1024> data{};  // 128 KiB: a large object
  ~Large() { g_large_dtors.fetch_add(1); }
};
std::atomic<int> g_raw_runs{0};
}  // namespace

TEST_F(Fin, LargeObject) {
  Zero({&g_large_dtors, &g_large_runs, &g_large_bad});
  InThread([] {
    auto* l = gofin::New<Large>();
    for (std::size_t i = 0; i < l->data.size(); ++i) l->data[i] = i;
    gofin::SetFinalizer(l, [](Large* p) {
      if (p->canary != kCanary) g_large_bad.fetch_add(1);
      for (std::size_t i = 0; i < p->data.size(); i += 997) {
        if (p->data[i] != i) g_large_bad.fetch_add(1);
      }
      g_large_runs.fetch_add(1);
    });
  });
  GCAndDrain();
  EXPECT_EQ(Load(g_large_runs), 1);
  EXPECT_EQ(Load(g_large_bad), 0);
  EXPECT_EQ(Load(g_large_dtors), 0);
  GCAndDrain();
  EXPECT_EQ(Load(g_large_dtors), 1);
}

TEST_F(Fin, RawAllocations) {
  Zero({&g_raw_runs});
  InThread([] {
    gofin::SetFinalizer(static_cast<char*>(gofin::Alloc(100)), [](char*) { g_raw_runs++; });
    gofin::SetFinalizer(static_cast<char*>(gofin::AllocNoScan(100)), [](char*) { g_raw_runs++; });
    gofin::SetFinalizer(gofin::NewArray<long>(1000), [](long*) { g_raw_runs++; });
    gofin::SetFinalizer(gofin::NewArray<Obj*>(3), [](Obj**) { g_raw_runs++; });
    gofin::SetFinalizer(gofin::Alloc(24), [](void*) { g_raw_runs++; });  // T = void
    gofin::SetFinalizer(gofin::Allocator<double>().allocate(7), [](double*) { g_raw_runs++; });
  });
  GCAndDrain();
  EXPECT_EQ(Load(g_raw_runs), 6);
}

namespace {
std::atomic<int> g_aligned_runs{0};
std::atomic<int> g_aligned_bad{0};
struct alignas(64) Aligned64 {
  std::uint64_t v = 64;
  void* p = nullptr;
};
struct alignas(4096) Aligned4096 {
  std::uint64_t v = 4096;
  void* p = nullptr;
};
}  // namespace

TEST_F(Fin, OverAlignedObjects) {
  Zero({&g_aligned_runs, &g_aligned_bad});
  InThread([] {
    gofin::SetFinalizer(gofin::New<Aligned64>(), [](Aligned64* a) {
      if (reinterpret_cast<std::uintptr_t>(a) % 64 != 0 || a->v != 64) g_aligned_bad.fetch_add(1);
      g_aligned_runs.fetch_add(1);
    });
    gofin::SetFinalizer(gofin::New<Aligned4096>(), [](Aligned4096* a) {
      if (reinterpret_cast<std::uintptr_t>(a) % 4096 != 0 || a->v != 4096) {
        g_aligned_bad.fetch_add(1);
      }
      g_aligned_runs.fetch_add(1);
    });
  });
  GCAndDrain();
  EXPECT_EQ(Load(g_aligned_runs), 2);
  EXPECT_EQ(Load(g_aligned_bad), 0);
}

namespace {
std::atomic<int> g_many_runs{0};
std::atomic<int> g_many_bad{0};
std::atomic<int> g_many_dtors{0};
}  // namespace

TEST_F(Fin, ManyObjectsAllFinalizedInOneCycle) {
  Zero({&g_many_runs, &g_many_bad, &g_many_dtors});
  constexpr int kN = 5000;
  InThread([] {
    for (int i = 0; i < kN; ++i) {
      gofin::SetFinalizer(gofin::New<Obj>(&g_many_dtors, i), [i](Obj* p) {
        if (!p->Ok() || p->value != static_cast<std::uint64_t>(i)) g_many_bad.fetch_add(1);
        g_many_runs.fetch_add(1);
      });
    }
  });
  GCAndDrain();
  EXPECT_EQ(Load(g_many_runs), kN);
  EXPECT_EQ(Load(g_many_bad), 0);
  EXPECT_EQ(Load(g_many_dtors), 0);
  GCAndDrain();
  EXPECT_EQ(Load(g_many_dtors), kN);
  EXPECT_EQ(Load(g_many_runs), kN);
}

// ---------------------------------------------------------------------------------------------
// TestEmptySlice / TestEmptyString: a one-past-the-end pointer does not pin the next object
// ---------------------------------------------------------------------------------------------

namespace {
char* volatile g_end_keep = nullptr;  // a global: a root, like Go's xsglobal
std::atomic<int> g_next_runs{0};
std::atomic<int> g_self_end_runs{0};

// Finds two adjacent objects x, y (y right after x) made by `alloc`, keeps x's end pointer
// (x + bytes) in a global, sets finalizers on both, and drops everything else. All in a thread
// that exits. Returns false if no adjacent pair turned up.
template <class T, class AllocFn>
bool AdjacentPairWithEndPointer(AllocFn alloc, std::size_t n, std::string* why) {
  std::atomic<bool> found{false};
  std::string msg;
  InThread([&] {
    std::vector<T*> seen;  // malloc'd: not a root; no collection runs during the search
    T* x = nullptr;
    T* y = nullptr;
    std::size_t elem = 0;
    for (int i = 0; i < 4096 && x == nullptr; ++i) {
      T* c = alloc(n);
      elem = ElemSizeOf(c);
      const auto ca = reinterpret_cast<std::uintptr_t>(c);
      for (T* d : seen) {
        const auto da = reinterpret_cast<std::uintptr_t>(d);
        if (ca + elem == da) {
          x = c;
          y = d;
          break;
        }
        if (da + elem == ca) {
          x = d;
          y = c;
          break;
        }
      }
      seen.push_back(c);
    }
    if (x == nullptr) {
      msg = "no adjacent pair";
      return;
    }
    gofin::SetFinalizer(x, [](T*) { g_self_end_runs.fetch_add(1); });
    gofin::SetFinalizer(y, [](T*) { g_next_runs.fetch_add(1); });
    g_end_keep = reinterpret_cast<char*>(x + n);  // Go: xs := x[objsize:]
    found = true;
  });
  *why = msg;
  return found.load();
}

template <class T, class AllocFn>
void CheckEndPointer(const char* what, AllocFn alloc, std::size_t n) {
  const int next0 = Load(g_next_runs);
  const int self0 = Load(g_self_end_runs);
  std::string why;
  ASSERT_TRUE(AdjacentPairWithEndPointer<T>(alloc, n, &why)) << what << ": " << why;
  GCAndDrain();
  EXPECT_EQ(Load(g_next_runs) - next0, 1)
      << what << ": finalizer of next object in memory didn't run";
  EXPECT_EQ(Load(g_self_end_runs) - self0, 0)
      << what << ": the end pointer must keep its own array";
  g_end_keep = nullptr;
  GCAndDrain();
  EXPECT_EQ(Load(g_self_end_runs) - self0, 1) << what << ": control";
}
}  // namespace

// n * sizeof(T) is exactly a size class (320 bytes): without the padding byte, x + n would be
// the first byte of the next object of that class.
TEST_F(Fin, EmptySliceNewArray) {
  CheckEndPointer<long>(
      "NewArray<long>(40)", [](std::size_t n) { return gofin::NewArray<long>(n); }, 40);
  CheckEndPointer<char>(
      "NewArray<char>(320)", [](std::size_t n) { return gofin::NewArray<char>(n); }, 320);
  CheckEndPointer<Obj*>(
      "NewArray<Obj*>(40) (scanned)", [](std::size_t n) { return gofin::NewArray<Obj*>(n); }, 40);
}

TEST_F(Fin, EmptyStringAlloc) {
  CheckEndPointer<char>(
      "AllocNoScan(320)", [](std::size_t n) { return static_cast<char*>(gofin::AllocNoScan(n)); },
      320);
  CheckEndPointer<char>(
      "Alloc(320)", [](std::size_t n) { return static_cast<char*>(gofin::Alloc(n)); }, 320);
}

TEST_F(Fin, EmptySliceAllocator) {
  CheckEndPointer<long>(
      "Allocator<long>(40)", [](std::size_t n) { return gofin::Allocator<long>().allocate(n); },
      40);
}

// Go's literal empty slice: NewArray<T>(0) is a valid object of its own, and its begin == end
// pointer keeps only it.
TEST_F(Fin, EmptySliceZeroLength) {
  CheckEndPointer<long>(
      "NewArray<long>(0)", [](std::size_t n) { return gofin::NewArray<long>(n); }, 0);
  CheckEndPointer<Obj*>(
      "NewArray<Obj*>(0)", [](std::size_t n) { return gofin::NewArray<Obj*>(n); }, 0);
}

// ---------------------------------------------------------------------------------------------
// ReadFinalizerStats
// ---------------------------------------------------------------------------------------------

namespace {
std::atomic<int> g_stats_runs{0};
}  // namespace

TEST_F(Fin, StatsCountQueuedAndExecuted) {
  Zero({&g_stats_runs});
  constexpr int kN = 50;
  const gofin::FinalizerStats s0 = gofin::ReadFinalizerStats();
  EXPECT_EQ(s0.Queued, s0.Executed) << "the heap is quiet: nothing queued but not run";
  InThread([] {
    for (int i = 0; i < kN; ++i) {
      gofin::SetFinalizer(gofin::New<Obj>(&g_many_dtors, i), [](Obj*) { g_stats_runs++; });
    }
  });
  const gofin::FinalizerStats s1 = gofin::ReadFinalizerStats();
  EXPECT_EQ(s1.Queued, s0.Queued) << "queued before any collection";
  CollectClean();
  const gofin::FinalizerStats s2 = gofin::ReadFinalizerStats();
  EXPECT_EQ(s2.Queued - s0.Queued, static_cast<std::uint64_t>(kN))
      << "GC() returns once every finalizer is queued";
  EXPECT_LE(s2.Executed, s2.Queued);
  ASSERT_TRUE(Drain());
  const gofin::FinalizerStats s3 = gofin::ReadFinalizerStats();
  EXPECT_EQ(s3.Executed - s0.Executed, static_cast<std::uint64_t>(kN));
  EXPECT_EQ(s3.Queued, s2.Queued);
  EXPECT_EQ(Load(g_stats_runs), kN);
  GCAndDrain();
  const gofin::FinalizerStats s4 = gofin::ReadFinalizerStats();
  EXPECT_EQ(s4.Queued, s3.Queued) << "finalized objects have no finalizer any more";
  EXPECT_EQ(s4.Executed, s3.Executed);
}
