// API.md "What is a root": a thread is registered automatically the first time it calls any
// gofin function. One test per SetFinalizer entry point, each with a thread whose first and
// only gofin call is that entry point (Go's TestDeferKeepAlive, across threads): the thread
// holds the object on its stack, the main thread collects a few times, the object must
// survive (its finalizer not run, or for a removal its destructor not run) until the thread's
// KeepAlive; once the thread is gone, it is finalized (or freed).
//
// The object is allocated by another, short-lived thread and handed over through a
// std::atomic<uintptr_t> in malloc'd memory, XOR-obfuscated, so that nothing the collector
// scans holds it except the holder thread's stack and registers.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <gofin/gofin.hpp>
#include <new>
#include <string>
#include <thread>
#include <utility>

#include "test_support.hpp"
#include "test_wait.hpp"

namespace {

using namespace std::chrono_literals;
using gofin_test::Event;

[[gnu::noinline]] void CollectClean() {
  gofin_test::ClobberStack();
  gofin::GC();
}

bool Drain() { return gofin::testing::BlockUntilEmptyFinalizerQueue(30s); }

[[gnu::noinline]] void GCAndDrain() {
  CollectClean();
  ASSERT_TRUE(Drain()) << "the finalizer queue did not drain within 30 s";
}

volatile std::uintptr_t g_mask = 0x5a5a000000000000ULL;
std::uintptr_t Encode(const volatile void* p) {
  return reinterpret_cast<std::uintptr_t>(p) ^ g_mask;
}

int Load(const std::atomic<int>& a) { return a.load(); }

[[maybe_unused]] ::testing::Environment* const g_env =
    ::testing::AddGlobalTestEnvironment(new gofin_test::NoPacingEnvironment);

constexpr std::uint64_t kCanary = 0x9e3779b97f4a7c15ULL;

std::atomic<int> g_fin_runs{0};
std::atomic<int> g_dtors{0};
std::atomic<int> g_bad{0};

// A scanned object with a destructor (a pointer member keeps it out of the tiny allocator).
struct Obj {
  std::uint64_t canary = kCanary;
  void* p = nullptr;
  ~Obj() {
    canary = 0;
    g_dtors.fetch_add(1);
  }
};

void FinObj(Obj* o) {
  if (o->canary != kCanary) g_bad.fetch_add(1);
  g_fin_runs.fetch_add(1);
}

// The hand-over slot, in malloc'd memory (not scanned), obfuscated.
struct Handoff {
  std::atomic<std::uintptr_t> enc{0};
};

enum class Entry { kFunctionPointer, kCapturelessLambda, kStatefulLambda, kRemoval, kNullFnPtr };

const char* Name(Entry e) {
  switch (e) {
    case Entry::kFunctionPointer:
      return "SetFinalizer(o, &fn)";
    case Entry::kCapturelessLambda:
      return "SetFinalizer(o, [](Obj*) {...})";
    case Entry::kStatefulLambda:
      return "SetFinalizer(o, [capture](Obj*) {...})";
    case Entry::kRemoval:
      return "SetFinalizer(o, nullptr)";
    case Entry::kNullFnPtr:
      return "SetFinalizer(o, (void (*)(Obj*))nullptr)";
  }
  return "?";
}

bool IsRemoval(Entry e) { return e == Entry::kRemoval || e == Entry::kNullFnPtr; }

// In a thread that exits: allocates the object (for a removal, with a finalizer already set)
// and leaves only its obfuscated address behind.
void AllocateElsewhere(Handoff* h, bool with_finalizer) {
  std::thread([h, with_finalizer] {
    auto* o = gofin::New<Obj>();
    if (with_finalizer) gofin::SetFinalizer(o, &FinObj);
    h->enc.store(Encode(o));
  }).join();
}

// The holder thread's whole gofin use: one entry point call, then KeepAlive at the end.
[[gnu::noinline]] void CallEntryPoint(Entry e, Obj* o) {
  switch (e) {
    case Entry::kFunctionPointer:
      gofin::SetFinalizer(o, &FinObj);
      break;
    case Entry::kCapturelessLambda:
      gofin::SetFinalizer(o, [](Obj* x) { FinObj(x); });
      break;
    case Entry::kStatefulLambda: {
      const std::uint64_t want = kCanary;
      gofin::SetFinalizer(o, [want](Obj* x) {
        if (x->canary != want) g_bad.fetch_add(1);
        g_fin_runs.fetch_add(1);
      });
      break;
    }
    case Entry::kRemoval:
      gofin::SetFinalizer(o, nullptr);
      break;
    case Entry::kNullFnPtr: {
      void (*volatile none)(Obj*) = nullptr;
      void (*fn)(Obj*) = none;
      gofin::SetFinalizer(o, fn);
      break;
    }
  }
}

struct Observed {
  std::atomic<int> fin_runs{-1};
  std::atomic<int> dtors{-1};
  std::atomic<int> canary_ok{-1};
};

void RunEntryPointCase(Entry e) {
  for (int i = 0; i < 3; ++i) GCAndDrain();
  g_fin_runs = 0;
  g_dtors = 0;
  g_bad = 0;
  void* mem = std::malloc(sizeof(Handoff));
  ASSERT_NE(mem, nullptr);
  auto* h = ::new (mem) Handoff();
  AllocateElsewhere(h, IsRemoval(e));

  Event ready;
  Event go;
  Observed seen;
  std::thread holder([&, e] {
    Obj* o = reinterpret_cast<Obj*>(h->enc.load() ^ g_mask);
    CallEntryPoint(e, o);  // this thread's first gofin call
    ready.Set();
    if (!go.WaitFor(120s)) std::abort();
    // Still held: nothing may have run.
    seen.fin_runs = Load(g_fin_runs);
    seen.dtors = Load(g_dtors);
    // (Read only while it has not been freed: a freed object's memory may be reused.)
    seen.canary_ok = Load(g_dtors) != 0 ? -1 : (o->canary == kCanary ? 1 : 0);
    gofin::KeepAlive(o);
  });
  ASSERT_TRUE(ready.WaitFor(60s));
  for (int i = 0; i < 3; ++i) GCAndDrain();
  go.Set();
  holder.join();
  h->~Handoff();
  std::free(mem);

  if (IsRemoval(e)) {
    EXPECT_EQ(seen.dtors.load(), 0)
        << Name(e)
        << ": the object was freed (its destructor ran) while the thread whose only "
           "gofin call this was still held it";
    EXPECT_EQ(seen.fin_runs.load(), 0) << Name(e) << ": the removed finalizer ran";
  } else {
    EXPECT_EQ(seen.fin_runs.load(), 0)
        << Name(e)
        << ": the finalizer ran while the thread whose only gofin call this was "
           "still held the object";
    EXPECT_EQ(seen.dtors.load(), 0) << Name(e) << ": the object was freed while held";
    if (seen.dtors.load() == 0) {
      EXPECT_EQ(seen.canary_ok.load(), 1) << Name(e) << ": the held object was damaged";
    }
  }
  // Control: once the holder is gone, the object becomes unreachable: finalized (or, for a
  // removal, freed without its finalizer).
  for (int i = 0; i < 6 && Load(IsRemoval(e) ? g_dtors : g_fin_runs) == 0; ++i) GCAndDrain();
  if (IsRemoval(e)) {
    EXPECT_EQ(Load(g_dtors), 1) << Name(e) << ": control, freed once the holder exited";
    EXPECT_EQ(Load(g_fin_runs), 0) << Name(e) << ": the removed finalizer never runs";
  } else {
    EXPECT_EQ(Load(g_fin_runs), 1) << Name(e) << ": control, finalized once the holder exited";
    for (int i = 0; i < 6 && Load(g_dtors) == 0; ++i) GCAndDrain();
    EXPECT_EQ(Load(g_dtors), 1) << Name(e) << ": freed after its finalizer ran";
  }
  EXPECT_EQ(Load(g_bad), 0) << Name(e);
}

}  // namespace

TEST(EntryPointRegistration, SetFinalizerWithFunctionPointer) {
  RunEntryPointCase(Entry::kFunctionPointer);
}

TEST(EntryPointRegistration, SetFinalizerWithCapturelessLambda) {
  RunEntryPointCase(Entry::kCapturelessLambda);
}

TEST(EntryPointRegistration, SetFinalizerWithStatefulLambda) {
  RunEntryPointCase(Entry::kStatefulLambda);
}

TEST(EntryPointRegistration, SetFinalizerNullptrRemoval) { RunEntryPointCase(Entry::kRemoval); }

TEST(EntryPointRegistration, SetFinalizerNullFunctionPointerRemoval) {
  RunEntryPointCase(Entry::kNullFnPtr);
}
