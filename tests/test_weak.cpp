// Weak pointers (API.md "Weak pointers"; Go 1.24+: package weak):
//   - Go's weak/pointer_test.go, ported: TestPointer, TestPointerEquality,
//     TestPointerFinalizer (nil in the finalizer, from the cycle that queues it, and still nil
//     after the finalizer resurrected the object), TestPointerCleanup, TestPointerSize,
//     TestIssue69210 (a bounded stress of Value() against collections on another thread: what
//     it returns is intact), TestIssue70739 (Make deep inside a large object, twice, compares
//     equal), TestImmortalPointer, TestPointerTiny;
//   - an object kept alive only because an unreachable finalizer-bearing object references it
//     keeps a non-nil weak pointer until it really dies;
//   - Make(nullptr) and a default Pointer are nil; weak pointers never keep their objects alive
//     (not from globals, not from scanned GC memory, not from the objects themselves);
//   - Make on a freed object throws Go's error.
//
// Conservative scanning: objects that must become unreachable are allocated and dropped in
// short-lived threads, and the test thread collects with testing::GC(kNoHeapPointers), which
// does not scan its own stack. Weak pointers the test keeps across a collection live in
// globals (roots): a weak pointer held only in the test thread's unscanned frame could lose
// its handle. Pointers are compared as XOR-encoded integers.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <gofin/gofin.hpp>
#include <initializer_list>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "heap/heap.hpp"
#include "heap/malloc.hpp"
#include "heap/span.hpp"
#include "test_support.hpp"

namespace {

using gofin_test::InThread;
using gofin_test::Watchdog;

using namespace std::chrono_literals;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

[[maybe_unused]] ::testing::Environment* const g_env =
    ::testing::AddGlobalTestEnvironment(new gofin_test::NoPacingEnvironment);

using gofin_test::CycleAndDrain;
using gofin_test::CycleUntil;
using gofin_test::Encode;
using gofin_test::ExactGC;
using gofin_test::g_mask;
using gofin_test::Load;
using gofin_test::Zero;
bool DrainFinalizers() { return gofin::testing::BlockUntilEmptyFinalizerQueue(30s); }
bool DrainCleanups() { return gofin::testing::BlockUntilEmptyCleanupQueue(30s); }
bool DrainDestructors() { return gofin::testing::BlockUntilEmptyDestructorQueue(30s); }

template <class T>
[[gnu::noinline]] bool IsNil(const gofin::weak::Pointer<T>& w) {
  return w.Value() == nullptr;
}
template <class T>
[[gnu::noinline]] std::uintptr_t ValueOf(const gofin::weak::Pointer<T>& w) {
  return Encode(w.Value());
}

constexpr std::uint64_t kCanary = 0x9e3779b97f4a7c15ULL;
constexpr std::uint64_t kDead = 0xdeadbeefdeadbeefULL;

// Go's test type: the pointer keeps it out of the tiny allocator.
struct T {
  T* t = nullptr;
  long a = 0;
  long b = 0;
};

// A scanned object whose destructor counts and poisons it.
struct Obj {
  explicit Obj(std::atomic<int>* d = nullptr, std::uint64_t v = 0)
      : dtors(d), canary(kCanary ^ v), value(v) {}
  ~Obj() {
    if (dtors != nullptr) dtors->fetch_add(1);
    canary = kDead;
  }
  Obj(const Obj&) = delete;
  Obj& operator=(const Obj&) = delete;
  [[nodiscard]] bool Ok() const { return canary == (kCanary ^ value); }

  std::atomic<int>* dtors;
  std::uint64_t canary;
  std::uint64_t value;
  Obj* next = nullptr;
  gofin::weak::Pointer<Obj> self;
  gofin::weak::Pointer<Obj> weak_next;
};

class Weak : public ::testing::Test {
 protected:
  void SetUp() override {
    for (int i = 0; i < 2; ++i) CycleAndDrain();
  }
  void TearDown() override { CycleAndDrain(); }
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// TestPointer, TestPointerEquality
// ---------------------------------------------------------------------------------------------

namespace {
gofin::Root<T> g_ptr_root;
gofin::weak::Pointer<T> g_ptr_wt;
}  // namespace

// TestPointer: nil for the zero value and for Make(nullptr); the object while it is
// reachable, also after a collection; nil once a collection found it unreachable.
TEST_F(Weak, Pointer) {
  const gofin::weak::Pointer<T> zero;
  EXPECT_TRUE(IsNil(zero)) << "Value of the zero weak::Pointer is not nil";
  const gofin::weak::Pointer<T> zero_nil = gofin::weak::Make(static_cast<T*>(nullptr));
  EXPECT_TRUE(IsNil(zero_nil)) << "Value of weak::Make(nullptr) is not nil";

  InThread([] {
    T* bt = gofin::New<T>();
    g_ptr_root = bt;
    g_ptr_wt = gofin::weak::Make(bt);
  });
  EXPECT_EQ(ValueOf(g_ptr_wt), Encode(g_ptr_root.get()))
      << "weak pointer is not the same as the strong pointer";
  ExactGC();  // bt is still referenced
  EXPECT_EQ(ValueOf(g_ptr_wt), Encode(g_ptr_root.get()))
      << "weak pointer is not the same as the strong pointer after GC";
  g_ptr_root.reset();
  ExactGC();  // bt is no longer referenced
  EXPECT_TRUE(IsNil(g_ptr_wt)) << "expected the weak pointer to be nil";
}

namespace {
constexpr int kEqN = 10;
gofin::Root<T> g_eq_bt[kEqN];
gofin::weak::Pointer<T> g_eq_wt[kEqN];
gofin::weak::Pointer<long> g_eq_wo[kEqN];

// The checks of TestPointerEquality's two loops over live objects, run in a thread; returns
// the number of failures.
int CheckEqualityWhileAlive() {
  std::atomic<int> failures{0};
  InThread([&] {
    for (int i = 0; i < kEqN; ++i) {
      T* st = g_eq_wt[i].Value();
      if (st != g_eq_bt[i].get()) {
        ADD_FAILURE() << i << ": weak pointer is not the same as the strong pointer";
        ++failures;
        continue;
      }
      if (!(gofin::weak::Make(st) == g_eq_wt[i])) {
        ADD_FAILURE() << i << ": a new weak pointer is not equal to the existing one";
        ++failures;
      }
      if (!(gofin::weak::Make(&st->a) == g_eq_wo[i])) {
        ADD_FAILURE() << i << ": a new inner weak pointer is not equal to the existing one";
        ++failures;
      }
      if (g_eq_wo[i].Value() != &st->a) {
        ADD_FAILURE() << i << ": the inner weak pointer's Value is not the inner address";
        ++failures;
      }
      if (gofin::weak::Make(&st->b) == g_eq_wo[i]) {
        ADD_FAILURE() << i << ": weak pointers to different offsets compare equal";
        ++failures;
      }
      if (i > 0 && g_eq_wt[i] == g_eq_wt[i - 1]) {
        ADD_FAILURE() << i << ": weak pointers to different objects compare equal";
        ++failures;
      }
    }
  });
  return failures.load();
}
}  // namespace

// TestPointerEquality.
TEST_F(Weak, PointerEquality) {
  const gofin::weak::Pointer<T> zero;
  EXPECT_TRUE(zero == gofin::weak::Make(static_cast<T*>(nullptr)))
      << "weak::Make(nullptr) != the zero weak::Pointer";

  InThread([] {
    for (int i = 0; i < kEqN; ++i) {
      T* bt = gofin::New<T>();
      g_eq_bt[i] = bt;
      g_eq_wt[i] = gofin::weak::Make(bt);
      g_eq_wo[i] = gofin::weak::Make(&bt->a);
    }
  });
  EXPECT_EQ(CheckEqualityWhileAlive(), 0);
  ExactGC();  // bt is still referenced
  EXPECT_EQ(CheckEqualityWhileAlive(), 0) << "after GC";
  for (auto& r : g_eq_bt) r.reset();
  ExactGC();  // bt is no longer referenced
  for (int i = 0; i < kEqN; ++i) {
    EXPECT_TRUE(IsNil(g_eq_wt[i])) << i << ": expected the weak pointer to be nil";
    EXPECT_TRUE(IsNil(g_eq_wo[i])) << i << ": expected the inner weak pointer to be nil";
    if (i > 0) {
      EXPECT_FALSE(g_eq_wt[i] == g_eq_wt[i - 1])
          << i << ": nil weak pointers to different objects compare equal";
    }
  }
}

// ---------------------------------------------------------------------------------------------
// TestPointerFinalizer, TestPointerCleanup
// ---------------------------------------------------------------------------------------------

namespace {
gofin::Root<T> g_fin_root;
gofin::Root<T> g_fin_resurrected;
gofin::weak::Pointer<T> g_fin_wt;
std::atomic<int> g_fin_runs{0};
std::atomic<int> g_fin_saw_value{0};
}  // namespace

// TestPointerFinalizer: the weak pointer goes nil in the cycle that queues the finalizer, the
// finalizer sees it nil, and it stays nil after the finalizer resurrected the object.
TEST_F(Weak, PointerFinalizer) {
  Zero({&g_fin_runs, &g_fin_saw_value});
  InThread([] {
    T* bt = gofin::New<T>();
    bt->a = 42;
    g_fin_wt = gofin::weak::Make(bt);
    gofin::SetFinalizer(bt, [](T* p) {
      if (g_fin_wt.Value() != nullptr) g_fin_saw_value.fetch_add(1);
      g_fin_resurrected = p;  // resurrect
      g_fin_runs.fetch_add(1);
    });
    g_fin_root = bt;
  });
  // Make sure the weak pointer stays around while bt is live.
  ExactGC();
  EXPECT_FALSE(IsNil(g_fin_wt)) << "the weak pointer went nil too soon";
  EXPECT_EQ(Load(g_fin_runs), 0);

  g_fin_root.reset();  // bt is no longer referenced: one cycle queues the finalizer
  ExactGC();
  EXPECT_TRUE(IsNil(g_fin_wt)) << "the weak pointer did not go nil when the finalizer was queued";
  ASSERT_TRUE(DrainFinalizers());
  ASSERT_EQ(Load(g_fin_runs), 1);
  EXPECT_EQ(Load(g_fin_saw_value), 0) << "the finalizer saw a non-nil weak pointer";

  // The weak pointer stays nil after the finalizer ran, though the object lives on.
  CycleAndDrain();
  CycleAndDrain();
  EXPECT_TRUE(IsNil(g_fin_wt)) << "the weak pointer is non-nil after resurrection";
  std::atomic<int> fresh{0};  // 1: a new weak pointer to the resurrected object works
  InThread([&] {
    T* p = g_fin_resurrected.get();
    if (p == nullptr || p->a != 42) return;
    const gofin::weak::Pointer<T> w = gofin::weak::Make(p);
    fresh = (w.Value() == p && g_fin_wt.Value() == nullptr) ? 1 : 2;
  });
  EXPECT_EQ(fresh.load(), 1) << "the resurrected object is damaged, or a new weak pointer to it "
                                "is nil, or making one revived the old one";
  g_fin_resurrected.reset();
  CycleAndDrain();
  EXPECT_EQ(Load(g_fin_runs), 1);
  EXPECT_TRUE(IsNil(g_fin_wt));
}

namespace {
gofin::Root<T> g_cl_root;
gofin::weak::Pointer<T> g_cl_wt;
std::atomic<int> g_cl_runs{0};
std::atomic<int> g_cl_saw_value{0};
}  // namespace

// TestPointerCleanup: the weak pointer goes nil in the cycle that queues the cleanup (before it
// runs) and stays nil.
TEST_F(Weak, PointerCleanup) {
  Zero({&g_cl_runs, &g_cl_saw_value});
  InThread([] {
    T* bt = gofin::New<T>();
    g_cl_wt = gofin::weak::Make(bt);
    gofin::AddCleanup(
        bt,
        [](bool) {
          if (g_cl_wt.Value() != nullptr) g_cl_saw_value.fetch_add(1);
          g_cl_runs.fetch_add(1);
        },
        true);
    g_cl_root = bt;
  });
  ExactGC();
  EXPECT_FALSE(IsNil(g_cl_wt)) << "the weak pointer went nil too soon";
  EXPECT_EQ(Load(g_cl_runs), 0);

  g_cl_root.reset();
  ExactGC();
  EXPECT_TRUE(IsNil(g_cl_wt)) << "the weak pointer did not go nil when the cleanup was queued";
  ASSERT_TRUE(DrainCleanups());
  EXPECT_EQ(Load(g_cl_runs), 1);
  EXPECT_EQ(Load(g_cl_saw_value), 0) << "the cleanup saw a non-nil weak pointer";
  ExactGC();
  EXPECT_TRUE(IsNil(g_cl_wt)) << "the weak pointer is non-nil after the cleanup";
}

// TestPointerSize.
TEST(WeakStatic, PointerSize) {
  static_assert(sizeof(gofin::weak::Pointer<T>) == sizeof(void*));
  EXPECT_EQ(sizeof(gofin::weak::Pointer<T>), sizeof(void*));
  EXPECT_EQ(sizeof(gofin::weak::Pointer<char>), sizeof(void*));
}

// ---------------------------------------------------------------------------------------------
// TestIssue69210: Value() against collections on another thread
// ---------------------------------------------------------------------------------------------

namespace {
struct StressT {
  StressT* t = nullptr;
  long a = 7;
  long b = 0;
  std::uint64_t canary = kCanary;
  ~StressT() {
    canary = kDead;
    a = -1;
  }
};

std::atomic<bool> g_stress_stop{false};
std::atomic<long> g_stress_bad{0};
std::atomic<long> g_stress_nil{0};
std::atomic<long> g_stress_live{0};
std::atomic<long> g_stress_iterations{0};

// The only strong pointer is dropped when this returns.
[[gnu::noinline]] gofin::weak::Pointer<StressT> MakeDropped() {
  return gofin::weak::Make(gofin::New<StressT>());
}

// Garbage of the same size class, scribbled over: were the object Value() returned freed by
// mistake, these would likely take its slot and overwrite it. Go sleeps here instead.
[[gnu::noinline]] void Churn() {
  for (int i = 0; i < 16; ++i) {
    auto* g = gofin::New<StressT>();
    g->canary = 0;
    g->a = -2;
    gofin::KeepAlive(g);
  }
  std::this_thread::yield();
}

[[gnu::noinline]] bool Intact(const StressT* p, long a) {
  return p->canary == kCanary && p->a == a;
}

void StressWorker() {
  while (!g_stress_stop.load()) {
    for (int k = 0; k < 5; ++k) {
      const gofin::weak::Pointer<StressT> wt = MakeDropped();  // in this (scanned) frame
      Churn();
      StressT* bt = wt.Value();
      if (bt != nullptr) {
        g_stress_live.fetch_add(1);
        if (!Intact(bt, 7)) g_stress_bad.fetch_add(1);
        Churn();
        bt->t = bt;
        bt->a = 12;
        Churn();
        if (!Intact(bt, 12) || bt->t != bt) g_stress_bad.fetch_add(1);
      } else {
        g_stress_nil.fetch_add(1);
      }
      gofin::KeepAlive(bt);
      g_stress_iterations.fetch_add(1);
    }
  }
}
}  // namespace

// TestIssue69210: several threads turn weak pointers to objects nobody else references into
// strong ones while another thread collects all the time. A strong pointer Value() hands out
// must keep its object alive and intact (the conversion must not race with the mark, nor with
// the sweep that frees the object and clears the handle).
TEST_F(Weak, Issue69210ValueAgainstConcurrentCollections) {
  Watchdog dog("Weak.Issue69210ValueAgainstConcurrentCollections");
  g_stress_stop = false;
  g_stress_bad = 0;
  g_stress_nil = 0;
  g_stress_live = 0;
  g_stress_iterations = 0;
  const unsigned hw = std::thread::hardware_concurrency();
  const unsigned workers = std::max(2U, hw > 1 ? hw - 1 : 1U);
  std::vector<std::thread> threads;
  threads.reserve(workers);
  for (unsigned i = 0; i < workers; ++i) threads.emplace_back(StressWorker);
  long cycles = 0;
  std::thread collector([&cycles] {
    const auto start = std::chrono::steady_clock::now();
    // 2 s with enough iterations to matter, and never more than 60 s.
    for (;;) {
      gofin::GC();
      ++cycles;
      const auto elapsed = std::chrono::steady_clock::now() - start;
      if (elapsed >= 60s) break;
      if (elapsed >= 2s && g_stress_iterations.load() >= 500 && g_stress_nil.load() > 0) break;
    }
    g_stress_stop = true;
  });
  collector.join();
  for (auto& t : threads) t.join();
  std::fprintf(stderr, "collections=%ld iterations=%ld live=%ld nil=%ld\n", cycles,
               g_stress_iterations.load(), g_stress_live.load(), g_stress_nil.load());
  EXPECT_EQ(g_stress_bad.load(), 0) << "Value() returned an object that was freed or damaged";
  EXPECT_GT(g_stress_nil.load(), 0) << "no weak pointer ever went nil under the collections";
}

// ---------------------------------------------------------------------------------------------
// TestIssue70739, TestImmortalPointer, TestPointerTiny
// ---------------------------------------------------------------------------------------------

// TestIssue70739: Make at an offset deep inside a large object finds the existing handle.
TEST_F(Weak, Issue70739MakeDeepInsideALargeObject) {
  std::atomic<int> failures{0};
  InThread([&] {
    constexpr std::size_t kN = 4 << 16;  // 2 MiB of pointers: a large scanned object
    constexpr std::size_t kAt = 1 << 16;
    int** x = gofin::NewArray<int*>(kN);
    const gofin::weak::Pointer<int*> wx1 = gofin::weak::Make(&x[kAt]);
    const gofin::weak::Pointer<int*> wx2 = gofin::weak::Make(&x[kAt]);
    if (!(wx1 == wx2)) {
      ADD_FAILURE() << "made a duplicate weak handle; see go.dev/issue/70739";
      ++failures;
    }
    if (wx1.Value() != &x[kAt]) {
      ADD_FAILURE() << "Value() is not the inner address";
      ++failures;
    }
    if (gofin::weak::Make(&x[kAt + 1]) == wx1) {
      ADD_FAILURE() << "weak pointers to neighbouring offsets compare equal";
      ++failures;
    }
    gofin::GC();  // x is on this thread's (scanned) stack
    if (!(gofin::weak::Make(&x[kAt]) == wx1) || wx1.Value() != &x[kAt]) {
      ADD_FAILURE() << "after a collection, Make found no handle or Value() changed";
      ++failures;
    }
    gofin::KeepAlive(x);
  });
  EXPECT_EQ(failures.load(), 0);
}

namespace {
T g_immortal;                      // .bss
T g_immortal_data{nullptr, 1, 2};  // .data
gofin::weak::Pointer<T> g_imm_w0;
gofin::weak::Pointer<long> g_imm_w0a;
gofin::weak::Pointer<long> g_imm_w0b;
gofin::weak::Pointer<T> g_imm_data;
}  // namespace

// TestImmortalPointer: weak pointers to globals are never cleared, and compare equal by
// address like any other.
TEST_F(Weak, ImmortalPointer) {
  g_imm_w0 = gofin::weak::Make(&g_immortal);
  EXPECT_TRUE(gofin::weak::Make(&g_immortal) == g_imm_w0)
      << "immortal weak pointers to the same pointer not equal";
  g_imm_w0a = gofin::weak::Make(&g_immortal.a);
  g_imm_w0b = gofin::weak::Make(&g_immortal.b);
  EXPECT_FALSE(g_imm_w0a == g_imm_w0b)
      << "separate immortal pointers (same object) have the same pointer";
  g_imm_data = gofin::weak::Make(&g_immortal_data);
  EXPECT_FALSE(g_imm_data == g_imm_w0);
  auto check = [](const char* when) {
    EXPECT_EQ(ValueOf(g_imm_w0), Encode(&g_immortal)) << when;
    EXPECT_EQ(ValueOf(g_imm_w0a), Encode(&g_immortal.a)) << when;
    EXPECT_EQ(ValueOf(g_imm_w0b), Encode(&g_immortal.b)) << when;
    EXPECT_EQ(ValueOf(g_imm_data), Encode(&g_immortal_data)) << when;
  };
  check("before any collection");
  CycleAndDrain();
  CycleAndDrain();
  check("after two collections");
  EXPECT_TRUE(gofin::weak::Make(&g_immortal) == g_imm_w0) << "after two collections";
}

namespace {
constexpr int kTinyN = 1000;
gofin::weak::Pointer<int> g_tiny_wps[kTinyN];
gofin::weak::Pointer<int> g_tiny_kept_wps[kTinyN];
gofin::Root<int> g_tiny_kept[kTinyN / 10];

// Checks, in the creating thread, that the weak pointers behave: Value() is the object, a
// second Make is equal, and neighbours in one tiny block have distinct weak pointers.
int CheckFreshTiny(const gofin::weak::Pointer<int>* wps, int* const* xs) {
  int failures = 0;
  for (int i = 0; i < kTinyN; ++i) {
    if (wps[i].Value() != xs[i] || *wps[i].Value() != i) ++failures;
    if (!(gofin::weak::Make(xs[i]) == wps[i])) ++failures;
    if (i > 0 && wps[i] == wps[i - 1]) ++failures;
  }
  return failures;
}
}  // namespace

// TestPointerTiny: weak pointers to small pointer-free objects (tiny-allocated, several to a
// block) behave, and most of them go nil once the objects are dropped (a tiny block lives
// while any of its objects does, hence Go's 3/4).
TEST_F(Weak, PointerTiny) {
  std::atomic<int> fresh_failures{0};
  InThread([&] {
    std::vector<int*> xs(kTinyN);  // malloc'd: not a root; no collection runs meanwhile
    for (int i = 0; i < kTinyN; ++i) {
      xs[i] = gofin::New<int>(i);
      g_tiny_wps[i] = gofin::weak::Make(xs[i]);
    }
    fresh_failures = CheckFreshTiny(g_tiny_wps, xs.data());
  });
  EXPECT_EQ(fresh_failures.load(), 0);
  ExactGC();
  int nil = 0;
  int damaged = 0;
  for (int i = 0; i < kTinyN; ++i) {
    const int* p = g_tiny_wps[i].Value();
    if (p == nullptr) {
      ++nil;
    } else if (*p != i) {
      ++damaged;
    }
  }
  EXPECT_GE(nil, 3 * kTinyN / 4) << "not enough weak pointers are nil";
  EXPECT_EQ(damaged, 0) << "a live tiny object's weak pointer shows the wrong value";
}

// Weak pointers to tiny objects that stay reachable stay non-nil and right.
TEST_F(Weak, PointerTinyKeptAlive) {
  std::atomic<int> fresh_failures{0};
  InThread([&] {
    std::vector<int*> xs(kTinyN);
    for (int i = 0; i < kTinyN; ++i) {
      xs[i] = gofin::New<int>(i);
      g_tiny_kept_wps[i] = gofin::weak::Make(xs[i]);
      if (i % 10 == 0) g_tiny_kept[i / 10] = xs[i];
    }
    fresh_failures = CheckFreshTiny(g_tiny_kept_wps, xs.data());
  });
  EXPECT_EQ(fresh_failures.load(), 0);
  CycleAndDrain();
  CycleAndDrain();
  int wrong = 0;
  for (int i = 0; i < kTinyN; i += 10) {
    if (ValueOf(g_tiny_kept_wps[i]) != Encode(g_tiny_kept[i / 10].get()) ||
        *g_tiny_kept[i / 10] != i) {
      ++wrong;
    }
  }
  EXPECT_EQ(wrong, 0) << "weak pointers to reachable tiny objects went nil or changed";
  for (auto& r : g_tiny_kept) r.reset();
  CycleAndDrain();
  int nil = 0;
  for (const auto& w : g_tiny_kept_wps) nil += IsNil(w) ? 1 : 0;
  EXPECT_GE(nil, 3 * kTinyN / 4) << "control: once dropped, most go nil";
}

// ---------------------------------------------------------------------------------------------
// Reachability
// ---------------------------------------------------------------------------------------------

namespace {
std::atomic<int> g_kf_dtors{0};
std::atomic<int> g_kf_fin_runs{0};
std::atomic<int> g_kf_fin_saw_b{0};
std::atomic<int> g_kf_fin_bad{0};
gofin::weak::Pointer<Obj> g_kf_wa;
gofin::weak::Pointer<Obj> g_kf_wb;
}  // namespace

// A (finalizer) -> B (none), both unreachable: the cycle that queues A's finalizer clears A's
// weak pointer but not B's (B is reachable from an object with a finalizer, as in Go); A's
// finalizer can still get B from its weak pointer; once A is gone, B really dies and its weak
// pointer goes nil.
TEST_F(Weak, ObjectKeptAliveByAFinalizedObjectKeepsItsWeakPointer) {
  Zero({&g_kf_dtors, &g_kf_fin_runs, &g_kf_fin_saw_b, &g_kf_fin_bad});
  InThread([] {
    auto* a = gofin::New<Obj>(&g_kf_dtors, 1);
    auto* b = gofin::New<Obj>(&g_kf_dtors, 2);
    a->next = b;
    g_kf_wa = gofin::weak::Make(a);
    g_kf_wb = gofin::weak::Make(b);
    gofin::SetFinalizer(a, [](Obj* p) {
      Obj* wb = g_kf_wb.Value();
      if (wb != nullptr) {
        g_kf_fin_saw_b.fetch_add(1);
        if (wb != p->next || !wb->Ok() || wb->value != 2) g_kf_fin_bad.fetch_add(1);
      }
      if (g_kf_wa.Value() != nullptr) g_kf_fin_bad.fetch_add(10);
      g_kf_fin_runs.fetch_add(1);
    });
  });
  ExactGC();
  EXPECT_TRUE(IsNil(g_kf_wa)) << "A's weak pointer did not go nil when its finalizer was queued";
  EXPECT_FALSE(IsNil(g_kf_wb)) << "B's weak pointer went nil while A's finalizer keeps B alive";
  ASSERT_TRUE(DrainFinalizers());
  ASSERT_TRUE(DrainDestructors());
  EXPECT_EQ(Load(g_kf_fin_runs), 1);
  EXPECT_EQ(Load(g_kf_fin_saw_b), 1) << "A's finalizer could not get B from its weak pointer";
  EXPECT_EQ(Load(g_kf_fin_bad), 0);
  EXPECT_EQ(Load(g_kf_dtors), 0);
  EXPECT_FALSE(IsNil(g_kf_wb)) << "B's weak pointer went nil before B died";
  ExactGC();  // A, without its finalizer now, and B are both unreachable
  EXPECT_TRUE(IsNil(g_kf_wb)) << "B's weak pointer stayed non-nil after B died";
  ASSERT_TRUE(DrainDestructors());
  EXPECT_EQ(Load(g_kf_dtors), 2);
  EXPECT_EQ(Load(g_kf_fin_runs), 1);
}

namespace {
constexpr int kListN = 100;
std::atomic<int> g_list_dtors{0};
gofin::weak::Pointer<Obj> g_list_wps[kListN];          // in a global
gofin::Root<gofin::weak::Pointer<Obj>> g_list_gc_wps;  // in a scanned GC array
gofin::Root<Obj*> g_list_strong;                       // the objects, until dropped

int CountNil() {
  int nil = 0;
  for (int i = 0; i < kListN; ++i) {
    const bool a = IsNil(g_list_wps[i]);
    const bool b = IsNil(g_list_gc_wps.get()[i]);
    if (a != b) ADD_FAILURE() << i << ": two weak pointers to one object disagree";
    nil += a ? 1 : 0;
  }
  return nil;
}
}  // namespace

// Weak pointers never keep their objects alive: not from a global, not from a scanned GC
// object, not from the objects themselves (each holds one to itself and one to the next in a
// ring). While a strong reference exists they all stay non-nil; after it is dropped they all go
// nil and the objects are freed.
TEST_F(Weak, WeakPointersDoNotKeepObjectsAlive) {
  Zero({&g_list_dtors});
  InThread([] {
    g_list_gc_wps = gofin::NewArray<gofin::weak::Pointer<Obj>>(kListN);
    g_list_strong = gofin::NewArray<Obj*>(kListN);
    for (int i = 0; i < kListN; ++i) {
      Obj* o = gofin::New<Obj>(&g_list_dtors, i);
      g_list_strong.get()[i] = o;
      o->self = gofin::weak::Make(o);
      g_list_wps[i] = o->self;
      g_list_gc_wps.get()[i] = gofin::weak::Make(o);
    }
    for (int i = 0; i < kListN; ++i) {
      g_list_strong.get()[i]->weak_next = gofin::weak::Make(g_list_strong.get()[(i + 1) % kListN]);
    }
  });
  CycleAndDrain();
  EXPECT_EQ(CountNil(), 0) << "weak pointers went nil while the objects were reachable";
  int wrong = 0;
  for (int i = 0; i < kListN; ++i) {
    if (ValueOf(g_list_wps[i]) != Encode(g_list_strong.get()[i])) ++wrong;
  }
  EXPECT_EQ(wrong, 0);
  EXPECT_EQ(Load(g_list_dtors), 0);

  g_list_strong.reset();
  EXPECT_TRUE(CycleUntil(3, [] { return CountNil() == kListN; }))
      << "weak pointers kept objects alive: " << kListN - CountNil() << " still non-nil";
  EXPECT_EQ(Load(g_list_dtors), kListN) << "the objects were not freed";
  g_list_gc_wps.reset();
}

// Make(nullptr) is nil and equals a default Pointer; Value() of a default Pointer is nullptr.
TEST(WeakStatic, NilPointers) {
  const gofin::weak::Pointer<Obj> def;
  EXPECT_TRUE(def.Value() == nullptr);
  const gofin::weak::Pointer<Obj> made = gofin::weak::Make(static_cast<Obj*>(nullptr));
  EXPECT_TRUE(made.Value() == nullptr);
  EXPECT_TRUE(made == def);
  const gofin::weak::Pointer<const int> cdef;
  EXPECT_TRUE(cdef.Value() == nullptr);
  const gofin::weak::Pointer<Obj> copy = def;
  EXPECT_TRUE(copy == def);
}

namespace {
gofin::weak::Pointer<T> g_freed_w[2];
std::atomic<std::uintptr_t> g_freed_addr[2];
gofin::Root<T> g_freed_neighbour;

// Expects weak::Make(p) on the freed object at p to throw Go's error.
void ExpectMakeThrows(std::uintptr_t encoded, const char* what) {
  auto* p = reinterpret_cast<T*>(encoded ^ g_mask);
  try {
    const gofin::weak::Pointer<T> w = gofin::weak::Make(p);
    const bool non_nil = !IsNil(w);
    ADD_FAILURE() << what << ": weak::Make on a freed object did not throw"
                  << (non_nil ? "; and its Value() is the freed address" : "");
  } catch (const gofin::Error& e) {
    EXPECT_STREQ(e.what(), "weak.Make: pointer not in allocated block") << what;
  }
}
}  // namespace

// Make on a pointer to a freed object: gofin::Error with Go's message, whether the object's
// span still holds live objects or was released to the page heap.
TEST_F(Weak, MakeOnAFreedObjectThrows) {
  std::atomic<bool> same_span{false};
  InThread([&] {
    T* a = gofin::New<T>();
    T* b = gofin::New<T>();
    same_span = gofin::internal::FindObject(a).span == gofin::internal::FindObject(b).span;
    g_freed_neighbour = a;
    g_freed_w[0] = gofin::weak::Make(b);
    g_freed_w[1] = gofin::weak::Make(a);
    g_freed_addr[0] = Encode(b);
    g_freed_addr[1] = Encode(a);
  });
  ExactGC();
  ASSERT_TRUE(IsNil(g_freed_w[0])) << "the object was not collected";
  ASSERT_FALSE(IsNil(g_freed_w[1]));
  if (!same_span.load()) {
    std::fprintf(stderr, "note: the two objects are in different spans\n");
  } else if (gofin::internal::FindObject(reinterpret_cast<T*>(g_freed_addr[0].load() ^ g_mask))
                 .span != nullptr) {
    std::fprintf(stderr, "note: the freed slot was allocated again\n");
  } else {
    ExpectMakeThrows(g_freed_addr[0].load(), "a freed slot in a span in use");
  }

  g_freed_neighbour.reset();
  ExactGC();
  ASSERT_TRUE(IsNil(g_freed_w[1])) << "the object was not collected";
  const auto* a = reinterpret_cast<T*>(g_freed_addr[1].load() ^ g_mask);
  if (gofin::internal::FindObject(a).span != nullptr) {
    GTEST_SKIP() << "the freed slot was allocated again";
  }
  const bool released =
      gofin::internal::g_heap.arenas.SpanOfHeap(reinterpret_cast<std::uintptr_t>(a)) == nullptr;
  ExpectMakeThrows(g_freed_addr[1].load(),
                   released ? "a freed object whose span was released" : "a freed slot");
}

// ---------------------------------------------------------------------------------------------
// Weak pointers kept where the collector does not look
// ---------------------------------------------------------------------------------------------

namespace malloc_kept {

struct Payload {
  std::uint64_t v[3] = {1, 2, 3};
};

[[gnu::noinline]] void MakeAndDrop(std::vector<gofin::weak::Pointer<Payload>>* kept, int n) {
  for (int i = 0; i < n; ++i) kept->push_back(gofin::weak::Make(gofin::New<Payload>()));
}

// Pointer-free 8-byte objects full of ones: any freed slot of that size class is taken and
// overwritten.
[[gnu::noinline]] void ChurnSmallNoScan(int n) {
  for (int i = 0; i < n; ++i) {
    void* p = gofin::detail::Malloc(8, gofin::detail::kAllocNoScan | gofin::detail::kAllocNoTiny,
                                    nullptr, 0);
    std::memset(p, 0xff, 8);
  }
}

}  // namespace malloc_kept

// A std::vector of weak pointers lives in malloc memory, which is not scanned (a cache keyed
// by name, as real programs keep them): the weak pointers must stay valid, and nil, after their
// objects died and the memory around them was reused.
TEST(WeakKept, PointersInMallocMemoryStayNilAfterTheirObjectsDie) {
  constexpr int kN = 2000;
  auto kept = std::make_unique<std::vector<gofin::weak::Pointer<malloc_kept::Payload>>>();
  kept->reserve(kN);
  auto* raw = kept.get();
  InThread([raw] { malloc_kept::MakeAndDrop(raw, kN); });
  for (int i = 0; i < 3; ++i) CycleAndDrain();
  InThread([] { malloc_kept::ChurnSmallNoScan(200000); });
  for (int i = 0; i < 2; ++i) CycleAndDrain();
  int non_nil = 0;
  for (const auto& w : *kept) non_nil += w.Value() != nullptr ? 1 : 0;
  EXPECT_EQ(non_nil, 0) << "weak pointers in malloc memory went non-nil after their objects died";
  // Copies and equality still work on the cleared pointers.
  const auto copy = (*kept)[0];
  EXPECT_TRUE(copy == (*kept)[0]);
  EXPECT_FALSE((*kept)[0] == (*kept)[1]);
}
