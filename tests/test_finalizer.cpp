// gofin::SetFinalizer at the API level (API.md "Finalizers"): the errors and their exact
// messages, removal, globals, and every parameter form a finalizer may take. Ports of Go's
// runtime/mfinal_test.go: TestFinalizerType, TestFinalizerInterfaceBig,
// TestFinalizerZeroSizedStruct, TestFinalizerOnGlobal, BenchmarkFinalizer (as a correctness
// test). The end-to-end ones (TestEmptySlice, TestEmptyString, TestDeferKeepAlive) are in
// test_finalizer_semantics.cpp, BenchmarkFinalizerRun in test_finalizer_threads.cpp.
//
// Compile-time rejection (static_assert in include/gofin/finalizer.hpp; not testable at run
// time, listed here for the record):
//   - a finalizer not invocable with T* (wrong pointee type: `void(int*)` for a Foo*, a
//     derived-class pointer, a non-const T* for a const T object, no parameter, two parameters);
//   - a parameter a pointer converts to that is not a pointer (`bool`, a by-value `auto`);
//   - a callable that is neither movable nor copyable;
//   - `nullptr` as the callable in the two-argument form is the removal overload, not an error.
//
// Conservative scanning: every object whose finalizer must run is allocated and dropped in a
// short-lived std::thread (a dead thread's stack is not scanned), so "did it run" is exact.
// What a finalizer saw is recorded in atomics; addresses are compared XOR-encoded, since an
// integer equal to an object's address in a global or in the test's frame would be a root.
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <gofin/gofin.hpp>
#include <iostream>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "finalizer/finalizer_queue.hpp"
#include "heap/malloc.hpp"
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

// One collection, then wait until every finalizer it queued has run.
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

// The message of the gofin::Error f throws, or a marker.
template <class F>
std::string ErrorOf(F&& f) {
  try {
    f();
  } catch (const gofin::Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("<other exception: ") + e.what() + ">";
  } catch (...) {
    return "<non-std exception>";
  }
  return "<no exception>";
}

constexpr const char* kErrNil = "runtime.SetFinalizer: first argument is nil";
constexpr const char* kErrNotInBlock = "runtime.SetFinalizer: pointer not in allocated block";
constexpr const char* kErrNotAtBeginning =
    "runtime.SetFinalizer: pointer not at beginning of allocated block";
constexpr const char* kErrAlreadySet = "runtime.SetFinalizer: finalizer already set";

std::uintptr_t BaseOf(const void* p) { return gofin::internal::FindObject(p).base; }

class FinalizerEnv : public ::testing::Environment {
 public:
  void SetUp() override { old_ = gofin::debug::SetGCPercent(-1); }
  void TearDown() override { gofin::debug::SetGCPercent(old_); }

 private:
  int old_ = 100;
};
[[maybe_unused]] ::testing::Environment* const g_env =
    ::testing::AddGlobalTestEnvironment(new FinalizerEnv);

// ---------------------------------------------------------------------------------------------
// Objects
// ---------------------------------------------------------------------------------------------

constexpr int kMagic = 97531;

// Go's `type T struct { v int; p unsafe.Pointer }`: the pointer keeps it out of the tiny
// allocator, so it is freed (and finalized) on its own.
struct TV {
  int v = 0;
  void* p = nullptr;
};
using TVPtr = TV*;  // Go's Tintptr: assignable to *int

// What the current case's finalizer saw.
std::atomic<int> g_runs{0};
std::atomic<int> g_bad_value{0};
std::atomic<int> g_bad_addr{0};
std::atomic<std::uintptr_t> g_expect{0};  // Encode(the pointer the finalizer must receive)

// Go's `finalize`.
void Finalize(const TV* x) {
  if (x->v != kMagic) {
    g_bad_value.fetch_add(1);
    ADD_FAILURE() << "finalizer saw " << x->v << ", want " << kMagic;
  }
  g_runs.fetch_add(1);
}
void CheckArg(const volatile void* got) {
  if (Encode(got) != g_expect.load()) g_bad_addr.fetch_add(1);
}

// New<TV> with Go's value, recorded as the pointer the finalizer must receive.
[[gnu::noinline]] TV* NewTV() {
  TV* o = gofin::New<TV>();
  o->v = kMagic;
  g_expect = Encode(o);
  return o;
}

// Runs `attach` (allocates, sets the finalizer, drops the object) in a thread that exits,
// collects once, and checks that the finalizer ran exactly once with the expected argument.
template <class Attach>
void ExpectRunsOnce(const char* what, Attach attach) {
  const int runs0 = Load(g_runs);
  const int badv0 = Load(g_bad_value);
  const int bada0 = Load(g_bad_addr);
  InThread(attach);
  GCAndDrain();
  EXPECT_EQ(Load(g_runs) - runs0, 1) << what << ": finalizer didn't run (or ran twice)";
  EXPECT_EQ(Load(g_bad_value) - badv0, 0) << what << ": finalizer saw a wrong value";
  EXPECT_EQ(Load(g_bad_addr) - bada0, 0) << what << ": finalizer got a wrong pointer";
  GCAndDrain();
  EXPECT_EQ(Load(g_runs) - runs0, 1) << what << ": finalizer ran again";
}

void FinTV(TV* v) {
  CheckArg(v);
  Finalize(v);
}
void FinTVAlias(TVPtr v) {
  CheckArg(v);
  Finalize(v);
}
void FinTVNoexcept(TV* v) noexcept {
  CheckArg(v);
  Finalize(v);
}
int FinTVReturnsInt(TV* v) {
  CheckArg(v);
  Finalize(v);
  return 42;
}
// Go's "argument spill slot" case: a 32-byte result.
std::array<std::int64_t, 4> FinTVReturnsBig(void* v) {
  CheckArg(v);
  Finalize(static_cast<TV*>(v));
  return {1, 2, 3, 4};
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// TestFinalizerType: every parameter form
// ---------------------------------------------------------------------------------------------

TEST(FinalizerType, FunctionPointer) {
  ExpectRunsOnce("void(*)(T*)", [] { gofin::SetFinalizer(NewTV(), &FinTV); });
  ExpectRunsOnce("function name (decays)", [] { gofin::SetFinalizer(NewTV(), FinTV); });
  ExpectRunsOnce("parameter is an alias of T* (Go: Tintptr)",
                 [] { gofin::SetFinalizer(NewTV(), &FinTVAlias); });
  ExpectRunsOnce("noexcept function", [] { gofin::SetFinalizer(NewTV(), &FinTVNoexcept); });
}

TEST(FinalizerType, Lambda) {
  ExpectRunsOnce("captureless lambda", [] {
    gofin::SetFinalizer(NewTV(), [](TV* v) {
      CheckArg(v);
      Finalize(v);
    });
  });
  ExpectRunsOnce("generic lambda auto*", [] {
    gofin::SetFinalizer(NewTV(), [](auto* v) {
      CheckArg(v);
      Finalize(v);
    });
  });
}

TEST(FinalizerType, ConstPointer) {
  ExpectRunsOnce("const T* parameter", [] {
    gofin::SetFinalizer(NewTV(), [](const TV* v) {
      CheckArg(v);
      Finalize(v);
    });
  });
  ExpectRunsOnce("pointer to const object", [] {
    const TV* c = NewTV();
    gofin::SetFinalizer(c, [](const TV* v) {
      CheckArg(v);
      Finalize(v);
    });
  });
}

TEST(FinalizerType, VoidPointer) {
  ExpectRunsOnce("void* parameter (Go: func(any))", [] {
    gofin::SetFinalizer(NewTV(), [](void* v) {
      CheckArg(v);
      Finalize(static_cast<TV*>(v));
    });
  });
  ExpectRunsOnce("const void* parameter", [] {
    gofin::SetFinalizer(NewTV(), [](const void* v) {
      CheckArg(v);
      Finalize(static_cast<const TV*>(v));
    });
  });
}

namespace {
struct SBase {
  int v = 0;
  void* p = nullptr;
};
struct SDerived : SBase {
  std::uint64_t extra = 0x1234;
};

// Multiple inheritance: the finalizer takes the second base, which is not at offset 0.
struct MFirst {
  std::uint64_t f = 0xF1F1F1F1ULL;
  void* p = nullptr;
};
struct MSecond {
  int v = 0;
  std::uint64_t s = 0x5EC05EC0ULL;
};
struct MMulti : MFirst, MSecond {
  std::uint64_t m = 0x3333ULL;
};

// Go's Tinter: an interface (abstract class) implemented by a type whose interface subobject is
// not first.
struct Tinter {
  virtual ~Tinter() = default;
  [[nodiscard]] virtual int M() const = 0;
};
struct TOther {
  virtual ~TOther() = default;
  std::uint64_t o = 7;
};
struct Tint : TOther, Tinter {
  int v = kMagic;
  void* p = nullptr;
  [[nodiscard]] int M() const override { return v; }
};
std::atomic<std::uintptr_t> g_expect_full{0};

// Virtual inheritance: the base's position is read from the object at conversion time.
struct VBase {
  std::uint64_t tag = 0x77ULL;
  int v = 0;
};
struct VLeft : virtual VBase {
  std::uint64_t l = 1;
};
struct VRight : virtual VBase {
  std::uint64_t r = 2;
};
struct VDiamond : VLeft, VRight {
  void* p = nullptr;
};
}  // namespace

TEST(FinalizerType, BaseClassPointer) {
  ExpectRunsOnce("single inheritance base", [] {
    auto* d = gofin::New<SDerived>();
    d->v = kMagic;
    g_expect = Encode(static_cast<SBase*>(d));
    gofin::SetFinalizer(d, [](SBase* b) {
      CheckArg(b);
      if (static_cast<SDerived*>(b)->extra != 0x1234) g_bad_value.fetch_add(1);
      if (b->v != kMagic) g_bad_value.fetch_add(1);
      g_runs.fetch_add(1);
    });
  });
}

TEST(FinalizerType, NonFirstBaseOfMultipleInheritanceIsAdjusted) {
  std::atomic<bool> adjusted{false};
  ExpectRunsOnce("second base of multiple inheritance", [&] {
    auto* m = gofin::New<MMulti>();
    m->v = kMagic;
    MSecond* second = m;
    adjusted = reinterpret_cast<std::uintptr_t>(second) != reinterpret_cast<std::uintptr_t>(m);
    g_expect = Encode(second);  // what static_cast<MSecond*> gives, computed here
    gofin::SetFinalizer(m, [](MSecond* s) {
      CheckArg(s);
      if (s->s != 0x5EC05EC0ULL || s->v != kMagic) g_bad_value.fetch_add(1);
      if (static_cast<MMulti*>(s)->f != 0xF1F1F1F1ULL) g_bad_value.fetch_add(1);
      g_runs.fetch_add(1);
    });
  });
  EXPECT_TRUE(adjusted.load()) << "the test needs MSecond at a nonzero offset";
}

TEST(FinalizerType, InterfaceOfPolymorphicClass) {
  std::atomic<bool> adjusted{false};
  ExpectRunsOnce("abstract interface base, not first (Go: func(v Tinter))", [&] {
    auto* t = gofin::New<Tint>();
    Tinter* i = t;
    adjusted = reinterpret_cast<std::uintptr_t>(i) != reinterpret_cast<std::uintptr_t>(t);
    g_expect = Encode(i);
    g_expect_full = Encode(t);
    gofin::SetFinalizer(t, [](Tinter* v) {
      CheckArg(v);
      if (v->M() != kMagic) g_bad_value.fetch_add(1);  // virtual call through the adjusted this
      auto* full = dynamic_cast<Tint*>(v);             // Go: v.(*Tint)
      if (full == nullptr || Encode(full) != g_expect_full.load()) g_bad_addr.fetch_add(1);
      g_runs.fetch_add(1);
    });
  });
  EXPECT_TRUE(adjusted.load());
}

TEST(FinalizerType, VirtualBase) {
  ExpectRunsOnce("virtual base of a diamond", [] {
    auto* d = gofin::New<VDiamond>();
    d->v = kMagic;
    g_expect = Encode(static_cast<VBase*>(d));
    gofin::SetFinalizer(d, [](VBase* b) {
      CheckArg(b);
      if (b->tag != 0x77ULL || b->v != kMagic) g_bad_value.fetch_add(1);
      g_runs.fetch_add(1);
    });
  });
  ExpectRunsOnce("second, virtually derived base of a diamond", [] {
    auto* d = gofin::New<VDiamond>();
    d->v = kMagic;
    g_expect = Encode(static_cast<VRight*>(d));
    gofin::SetFinalizer(d, [](VRight* r) {
      CheckArg(r);
      if (r->r != 2 || r->v != kMagic) g_bad_value.fetch_add(1);
      g_runs.fetch_add(1);
    });
  });
}

TEST(FinalizerType, LambdaWithCaptures) {
  std::atomic<int> seen_id{0};
  ExpectRunsOnce("lambda with captures", [&] {
    const int id = 4242;
    std::string tag = "captured by value, malloc'd buffer: " + std::string(40, 'x');
    gofin::SetFinalizer(NewTV(), [id, tag, &seen_id](TV* v) {
      CheckArg(v);
      if (tag != "captured by value, malloc'd buffer: " + std::string(40, 'x')) {
        g_bad_value.fetch_add(1);
      }
      seen_id = id;
      Finalize(v);
    });
  });
  EXPECT_EQ(seen_id.load(), 4242);
}

TEST(FinalizerType, MutableLambda) {
  ExpectRunsOnce("mutable lambda", [] {
    gofin::SetFinalizer(NewTV(), [n = 0](TV* v) mutable {
      ++n;
      if (n != 1) g_bad_value.fetch_add(1);
      CheckArg(v);
      Finalize(v);
    });
  });
}

namespace {
struct Functor {
  int expected;
  void operator()(TV* v) const {
    CheckArg(v);
    if (v->v != expected) g_bad_value.fetch_add(1);
    Finalize(v);
  }
};
struct MoveOnlyFunctor {
  std::unique_ptr<int> state;
  void operator()(TV* v) {
    CheckArg(v);
    if (state == nullptr || *state != 99) g_bad_value.fetch_add(1);
    Finalize(v);
  }
};
struct TVm {
  int v = 0;
  void* p = nullptr;
  void Fin() {
    CheckArg(this);
    if (v != kMagic) g_bad_value.fetch_add(1);
    g_runs.fetch_add(1);
  }
  void FinConst() const {
    CheckArg(this);
    if (v != kMagic) g_bad_value.fetch_add(1);
    g_runs.fetch_add(1);
  }
};
}  // namespace

TEST(FinalizerType, FunctionObjects) {
  ExpectRunsOnce("functor object", [] { gofin::SetFinalizer(NewTV(), Functor{kMagic}); });
  ExpectRunsOnce("functor lvalue (copied)", [] {
    Functor f{kMagic};
    gofin::SetFinalizer(NewTV(), f);
  });
  ExpectRunsOnce("move-only functor",
                 [] { gofin::SetFinalizer(NewTV(), MoveOnlyFunctor{std::make_unique<int>(99)}); });
  ExpectRunsOnce("std::function", [] {
    std::function<void(TV*)> fn = [](TV* v) {
      CheckArg(v);
      Finalize(v);
    };
    gofin::SetFinalizer(NewTV(), fn);
  });
  ExpectRunsOnce("std::function taking a base class pointer", [] {
    auto* d = gofin::New<SDerived>();
    d->v = kMagic;
    g_expect = Encode(static_cast<SBase*>(d));
    std::function<void(SBase*)> fn = [](SBase* b) {
      CheckArg(b);
      if (b->v != kMagic) g_bad_value.fetch_add(1);
      g_runs.fetch_add(1);
    };
    gofin::SetFinalizer(d, std::move(fn));
  });
}

namespace {
std::atomic<int> g_fn_dtors{0};
std::atomic<int> g_fn_runs{0};
std::atomic<int> g_fn_bad{0};
struct Captured {
  std::uint64_t canary = 0xCAFEF00DULL;
  void* p = nullptr;
  ~Captured() {
    canary = 0;
    g_fn_dtors.fetch_add(1);
  }
};
gofin::Root<TV> g_fn_owner;

// Sets on a rooted TV a std::function finalizer that captures `n` (1 or 3) objects referenced
// nowhere else; checks the captures survive three collections while the finalizer is set and
// are intact when it runs.
void CheckStdFunctionCaptures(int n) {
  for (int i = 0; i < 3; ++i) GCAndDrain();  // an earlier run's captures are freed by now
  g_fn_dtors = 0;
  g_fn_runs = 0;
  g_fn_bad = 0;
  InThread([n] {
    TV* owner = NewTV();
    auto* a = gofin::New<Captured>();
    std::function<void(TV*)> fn;
    if (n == 1) {
      fn = [a](TV*) {
        if (a->canary != 0xCAFEF00DULL) g_fn_bad.fetch_add(1);
        g_fn_runs.fetch_add(1);
      };
    } else {
      auto* b = gofin::New<Captured>();
      auto* c = gofin::New<Captured>();
      fn = [a, b, c](TV*) {  // 24 bytes of captures: libstdc++ stores them with operator new
        for (Captured* x : {a, b, c}) {
          if (x->canary != 0xCAFEF00DULL) g_fn_bad.fetch_add(1);
        }
        g_fn_runs.fetch_add(1);
      };
    }
    gofin::SetFinalizer(owner, std::move(fn));
    g_fn_owner = owner;
  });
  for (int i = 0; i < 3; ++i) GCAndDrain();
  EXPECT_EQ(Load(g_fn_dtors), 0)
      << "objects captured by the finalizer were freed while the finalizer was set";
  g_fn_owner.reset();
  GCAndDrain();
  EXPECT_EQ(Load(g_fn_runs), 1);
  EXPECT_EQ(Load(g_fn_bad), 0) << "the finalizer saw freed captures";
}
}  // namespace

// API.md: "Captured GC pointers are kept alive (the callable's storage is scanned)".
TEST(FinalizerType, StdFunctionWithSmallCaptureKeepsItAlive) { CheckStdFunctionCaptures(1); }

// A std::function whose target is too big for its small buffer keeps the target (and the
// captures) in operator-new memory, which gofin does not scan: those captures are NOT kept
// alive. API.md and the README document this; pass the lambda itself instead.

namespace {
struct EmptyFunctor {
  void operator()(TV* v) const {
    CheckArg(v);
    Finalize(v);
  }
};
}  // namespace

TEST(FinalizerType, EmptyFunctor) {
  ExpectRunsOnce("empty (stateless) functor", [] { gofin::SetFinalizer(NewTV(), EmptyFunctor{}); });
}

TEST(FinalizerType, PointerToMemberFunction) {
  ExpectRunsOnce("pointer to member function", [] {
    auto* o = gofin::New<TVm>();
    o->v = kMagic;
    g_expect = Encode(o);
    gofin::SetFinalizer(o, &TVm::Fin);
  });
  ExpectRunsOnce("pointer to const member function", [] {
    auto* o = gofin::New<TVm>();
    o->v = kMagic;
    g_expect = Encode(o);
    gofin::SetFinalizer(o, &TVm::FinConst);
  });
}

TEST(FinalizerType, ResultIsIgnored) {
  ExpectRunsOnce("returns int", [] { gofin::SetFinalizer(NewTV(), &FinTVReturnsInt); });
  ExpectRunsOnce("returns a 32-byte array through void* (Go's spill-slot case)",
                 [] { gofin::SetFinalizer(NewTV(), &FinTVReturnsBig); });
  ExpectRunsOnce("returns std::string", [] {
    gofin::SetFinalizer(NewTV(), [](TV* v) {
      CheckArg(v);
      Finalize(v);
      return std::string(100, 'r');
    });
  });
}

// ---------------------------------------------------------------------------------------------
// TestFinalizerInterfaceBig, TestFinalizerZeroSizedStruct
// ---------------------------------------------------------------------------------------------

namespace {
struct BigValue {
  std::uint64_t fill;
  bool it;
  std::string up;
  bool operator==(const BigValue& o) const { return fill == o.fill && it == o.it && up == o.up; }
};
}  // namespace

TEST(FinalizerInterfaceBig, SeesTheWholeObject) {
  ExpectRunsOnce("func(v any) on *bigValue", [] {
    auto* v = gofin::New<BigValue>(
        BigValue{0xDEADBEEFDEADBEEFULL, true, "It matters not how strait the gate"});
    g_expect = Encode(v);
    BigValue old = *v;
    gofin::SetFinalizer(v, [old](void* any) {
      CheckArg(any);
      auto* i = static_cast<BigValue*>(any);
      if (!(*i == old)) {
        g_bad_value.fetch_add(1);
        ADD_FAILURE() << "finalizer called with {" << std::hex << i->fill << ", " << i->it << ", "
                      << i->up << "}";
      }
      g_runs.fetch_add(1);
    });
  });
}

namespace {
struct Z {};  // Go's struct{}; in C++ sizeof 1
struct ZNoScan {};
}  // namespace
template <>
struct gofin::NoScan<ZNoScan> : std::true_type {};

TEST(FinalizerZeroSizedStruct, DoesNotCrash) {
  // Go's test only checks that this does not crash.
  Z* z = gofin::New<Z>();
  EXPECT_NO_THROW(gofin::SetFinalizer(z, [](Z*) {}));
  EXPECT_NO_THROW(gofin::SetFinalizer(z, nullptr));
  gofin::KeepAlive(z);
}

TEST(FinalizerZeroSizedStruct, RunsWhenUnreachable) {
  ExpectRunsOnce("empty struct", [] {
    Z* z = gofin::New<Z>();
    g_expect = Encode(z);
    gofin::SetFinalizer(z, [](Z* p) {
      CheckArg(p);
      g_runs.fetch_add(1);
    });
  });
  // A pointer-free empty struct goes to the tiny allocator: its finalizer runs when its block
  // is unreachable; the thread that allocated it is gone, so it is.
  ExpectRunsOnce("empty NoScan struct (tiny)", [] {
    ZNoScan* z = gofin::New<ZNoScan>();
    g_expect = Encode(z);
    gofin::SetFinalizer(z, [](ZNoScan* p) {
      CheckArg(p);
      g_runs.fetch_add(1);
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

TEST(FinalizerErrors, NilPointer) {
  EXPECT_EQ(ErrorOf([] { gofin::SetFinalizer(static_cast<TV*>(nullptr), &FinTV); }), kErrNil);
  EXPECT_EQ(ErrorOf([] { gofin::SetFinalizer(static_cast<int*>(nullptr), [](int*) {}); }), kErrNil);
  EXPECT_EQ(ErrorOf([] { gofin::SetFinalizer(static_cast<void*>(nullptr), [](void*) {}); }),
            kErrNil);
  // Go checks the object before it looks at the finalizer: removal on nil fails the same way.
  EXPECT_EQ(ErrorOf([] { gofin::SetFinalizer(static_cast<TV*>(nullptr), nullptr); }), kErrNil);
  EXPECT_THROW(gofin::SetFinalizer(static_cast<TV*>(nullptr), &FinTV), std::logic_error);
}

TEST(FinalizerErrors, NotInAllocatedBlock) {
  void* m = std::malloc(64);
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(ErrorOf([&] { gofin::SetFinalizer(static_cast<TV*>(m), &FinTV); }), kErrNotInBlock)
      << "malloc'd memory";
  EXPECT_EQ(ErrorOf([&] { gofin::SetFinalizer(static_cast<TV*>(m), nullptr); }), kErrNotInBlock)
      << "malloc'd memory, removal";
  EXPECT_EQ(ErrorOf([&] { gofin::SetFinalizer(static_cast<int*>(m), [](int*) {}); }),
            kErrNotInBlock)
      << "malloc'd memory, tiny-eligible type";
  std::free(m);

  auto heap = std::make_unique<TV>();
  EXPECT_EQ(ErrorOf([&] { gofin::SetFinalizer(heap.get(), &FinTV); }), kErrNotInBlock)
      << "operator new memory";

  TV local;
  int local_int = 0;
  EXPECT_EQ(ErrorOf([&] { gofin::SetFinalizer(&local, &FinTV); }), kErrNotInBlock) << "stack";
  EXPECT_EQ(ErrorOf([&] { gofin::SetFinalizer(&local, nullptr); }), kErrNotInBlock)
      << "stack, removal";
  EXPECT_EQ(ErrorOf([&] { gofin::SetFinalizer(&local_int, [](int*) {}); }), kErrNotInBlock)
      << "stack int";

  std::string other_thread;
  InThread([&] {
    TV theirs;
    other_thread = ErrorOf([&] { gofin::SetFinalizer(&theirs, &FinTV); });
  });
  EXPECT_EQ(other_thread, kErrNotInBlock) << "another thread's stack";

  void* mapped = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(mapped, MAP_FAILED);
  EXPECT_EQ(ErrorOf([&] { gofin::SetFinalizer(static_cast<TV*>(mapped), &FinTV); }), kErrNotInBlock)
      << "mmap'd memory";
  munmap(mapped, 4096);
}

namespace {
struct Sub16 {
  std::uint64_t a = 0;
  std::uint64_t b = 0;
};
struct Obj64 {
  void* head = nullptr;
  void* ptr = nullptr;
  Sub16 sub;
  std::string str;  // non-trivially destructible member
};
static_assert(sizeof(Obj64) == 64);
std::atomic<int> g_obj64_fin{0};
}  // namespace

TEST(FinalizerErrors, NotAtBeginningOfAllocatedBlock) {
  Obj64* o = gofin::New<Obj64>();
  EXPECT_EQ(BaseOf(o), reinterpret_cast<std::uintptr_t>(o));
  EXPECT_EQ(ErrorOf([&] { gofin::SetFinalizer(&o->ptr, [](void**) {}); }), kErrNotAtBeginning)
      << "inner pointer of pointer type";
  EXPECT_EQ(ErrorOf([&] { gofin::SetFinalizer(&o->sub, [](Sub16*) {}); }), kErrNotAtBeginning)
      << "inner pointer to a 16-byte pointer-free member (not tiny: size >= 16)";
  EXPECT_EQ(ErrorOf([&] { gofin::SetFinalizer(&o->str, [](std::string*) {}); }), kErrNotAtBeginning)
      << "inner pointer to a non-trivially destructible member";
  TV* inner_tv = reinterpret_cast<TV*>(reinterpret_cast<char*>(o) + 16);
  EXPECT_EQ(ErrorOf([&] { gofin::SetFinalizer(inner_tv, &FinTV); }), kErrNotAtBeginning)
      << "inner pointer cast to a scanned type";
  EXPECT_EQ(ErrorOf([&] { gofin::SetFinalizer(&o->ptr, nullptr); }), kErrNotAtBeginning)
      << "removal through an inner pointer";
  // A pointer to a base-class subobject that is not at offset 0 is an inner pointer too (as an
  // interface conversion in Go never changes the address, this has no Go counterpart; API.md
  // lists no exception for it).
  struct First {
    std::uint64_t f = 1;
    void* p = nullptr;
  };
  struct Second {
    std::uint64_t s = 2;
    void* q = nullptr;
  };
  struct Both : First, Second {};
  Both* both = gofin::New<Both>();
  Second* second = both;
  ASSERT_NE(reinterpret_cast<std::uintptr_t>(second), reinterpret_cast<std::uintptr_t>(both));
  EXPECT_EQ(ErrorOf([&] { gofin::SetFinalizer(second, [](Second*) {}); }), kErrNotAtBeginning)
      << "pointer to a non-first base subobject";
  EXPECT_NO_THROW(gofin::SetFinalizer(static_cast<First*>(both), [](First*) {}))
      << "the first base is at the beginning";
  gofin::KeepAlive(both);
  // A large object as well.
  auto* big = static_cast<char*>(gofin::Alloc(64 * 1024));
  EXPECT_EQ(ErrorOf([&] { gofin::SetFinalizer(reinterpret_cast<TV*>(big + 4096), &FinTV); }),
            kErrNotAtBeginning)
      << "inner pointer of a large object";
  // The failed calls attached nothing: the one at the beginning is the first.
  EXPECT_NO_THROW(gofin::SetFinalizer(o, [](Obj64*) { g_obj64_fin.fetch_add(1); }));
  EXPECT_NO_THROW(gofin::SetFinalizer(o, nullptr));
  gofin::KeepAlive(o);
  gofin::KeepAlive(big);
}

// A failed SetFinalizer leaves no finalizer behind: the object is freed by the first cycle that
// finds it unreachable, like any object without one.
namespace {
std::atomic<int> g_err_dtors{0};
std::atomic<int> g_err_fin{0};
struct ErrObj {
  void* a = nullptr;
  void* b = nullptr;
  ~ErrObj() { g_err_dtors.fetch_add(1); }
};
}  // namespace

TEST(FinalizerErrors, FailedCallsAttachNothing) {
  const int d0 = Load(g_err_dtors);
  std::string err;
  InThread([&] {
    auto* o = gofin::New<ErrObj>();
    err = ErrorOf([&] { gofin::SetFinalizer(&o->b, [](void**) { g_err_fin.fetch_add(1); }); });
  });
  EXPECT_EQ(err, kErrNotAtBeginning);
  GCAndDrain();
  EXPECT_EQ(Load(g_err_fin), 0);
  EXPECT_EQ(Load(g_err_dtors) - d0, 1) << "no finalizer attached: freed by the first cycle";
}

namespace {
std::atomic<int> g_first_fin{0};
std::atomic<int> g_second_fin{0};
}  // namespace

TEST(FinalizerErrors, AlreadySet) {
  const int f0 = Load(g_first_fin);
  const int s0 = Load(g_second_fin);
  std::string err, err_same;
  InThread([&] {
    TV* o = NewTV();
    gofin::SetFinalizer(o, [](TV*) { g_first_fin.fetch_add(1); });
    err = ErrorOf([&] { gofin::SetFinalizer(o, [](TV*) { g_second_fin.fetch_add(1); }); });
    // Even the very same callable again.
    err_same = ErrorOf([&] { gofin::SetFinalizer(o, &FinTV); });
  });
  EXPECT_EQ(err, kErrAlreadySet);
  EXPECT_EQ(err_same, kErrAlreadySet);
  GCAndDrain();
  EXPECT_EQ(Load(g_first_fin) - f0, 1) << "the first finalizer stays and runs";
  EXPECT_EQ(Load(g_second_fin) - s0, 0) << "the rejected one never runs";
}

// ---------------------------------------------------------------------------------------------
// Tiny objects: inner pointers allowed
// ---------------------------------------------------------------------------------------------

namespace {
// Three New<std::uint32_t> allocated back to back usually share one 16-byte tiny block.
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
}  // namespace

TEST(FinalizerTiny, InnerPointersOfTinyObjectsAreAllowed) {
  std::atomic<bool> shared{false};
  std::atomic<bool> inner{false};
  std::string errs[4];
  int runs0[3];
  for (int i = 0; i < 3; ++i) runs0[i] = Load(g_tiny_runs[i]);
  InThread([&] {
    std::uint32_t* t[3] = {};
    if (!ThreeInOneTinyBlock(t)) return;
    shared = true;
    inner = reinterpret_cast<std::uintptr_t>(t[1]) != BaseOf(t[1]) &&
            reinterpret_cast<std::uintptr_t>(t[2]) != BaseOf(t[2]);
    for (int i = 0; i < 3; ++i) {
      g_tiny_expect[i] = Encode(t[i]);
      errs[i] = ErrorOf([&] {
        gofin::SetFinalizer(t[i], [i](std::uint32_t* p) {
          if (Encode(p) != g_tiny_expect[i].load()) g_tiny_bad.fetch_add(1);
          const std::uint32_t want[3] = {0xA1A1A1A1U, 0xB2B2B2B2U, 0xC3C3C3C3U};
          if (*p != want[i]) g_tiny_bad.fetch_add(1);
          g_tiny_runs[i].fetch_add(1);
        });
      });
    }
    errs[3] = ErrorOf([&] { gofin::SetFinalizer(t[1], [](std::uint32_t*) {}); });
  });
  if (!shared.load()) GTEST_SKIP() << "could not get three objects in one tiny block";
  EXPECT_TRUE(inner.load());
  for (int i = 0; i < 3; ++i) EXPECT_EQ(errs[i], "<no exception>") << "tiny object " << i;
  EXPECT_EQ(errs[3], kErrAlreadySet) << "one finalizer per tiny object, too";
  GCAndDrain();
  for (int i = 0; i < 3; ++i) EXPECT_EQ(Load(g_tiny_runs[i]) - runs0[i], 1) << "tiny object " << i;
  EXPECT_EQ(Load(g_tiny_bad), 0);
}

TEST(FinalizerTiny, RemoveOneOfATinyBlock) {
  std::atomic<bool> shared{false};
  int runs0[3];
  for (int i = 0; i < 3; ++i) runs0[i] = Load(g_tiny_runs[i]);
  InThread([&] {
    std::uint32_t* t[3] = {};
    if (!ThreeInOneTinyBlock(t)) return;
    shared = true;
    for (int i = 0; i < 3; ++i) {
      g_tiny_expect[i] = Encode(t[i]);
      gofin::SetFinalizer(t[i], [i](std::uint32_t* p) {
        if (Encode(p) != g_tiny_expect[i].load()) g_tiny_bad.fetch_add(1);
        g_tiny_runs[i].fetch_add(1);
      });
    }
    gofin::SetFinalizer(t[1], nullptr);
  });
  if (!shared.load()) GTEST_SKIP() << "could not get three objects in one tiny block";
  GCAndDrain();
  GCAndDrain();
  EXPECT_EQ(Load(g_tiny_runs[0]) - runs0[0], 1);
  EXPECT_EQ(Load(g_tiny_runs[1]) - runs0[1], 0) << "removed";
  EXPECT_EQ(Load(g_tiny_runs[2]) - runs0[2], 1);
  EXPECT_EQ(Load(g_tiny_bad), 0);
}

// ---------------------------------------------------------------------------------------------
// Removal
// ---------------------------------------------------------------------------------------------

namespace {
std::atomic<int> g_rm_dtors{0};
std::atomic<int> g_rm_fin1{0};
std::atomic<int> g_rm_fin2{0};
struct RmObj {
  std::uint64_t canary = 0xABCDEFULL;
  void* p = nullptr;
  ~RmObj() { g_rm_dtors.fetch_add(1); }
};
}  // namespace

TEST(FinalizerRemoval, RemovedFinalizerNeverRuns) {
  const int d0 = Load(g_rm_dtors), f0 = Load(g_rm_fin1);
  InThread([] {
    auto* o = gofin::New<RmObj>();
    gofin::SetFinalizer(o, [](RmObj*) { g_rm_fin1.fetch_add(1); });
    gofin::SetFinalizer(o, nullptr);
  });
  GCAndDrain();
  EXPECT_EQ(Load(g_rm_fin1) - f0, 0);
  EXPECT_EQ(Load(g_rm_dtors) - d0, 1) << "without a finalizer it is freed by the first cycle";
  GCAndDrain();
  GCAndDrain();
  EXPECT_EQ(Load(g_rm_fin1) - f0, 0);

  // Control: the same without the removal runs, and the object survives that first cycle.
  InThread([] {
    auto* o = gofin::New<RmObj>();
    gofin::SetFinalizer(o, [](RmObj*) { g_rm_fin1.fetch_add(1); });
  });
  GCAndDrain();
  EXPECT_EQ(Load(g_rm_fin1) - f0, 1);
  EXPECT_EQ(Load(g_rm_dtors) - d0, 1);
  GCAndDrain();
  EXPECT_EQ(Load(g_rm_dtors) - d0, 2);
}

TEST(FinalizerRemoval, RemovingANeverSetFinalizerIsANoOp) {
  const int f0 = Load(g_rm_fin1);
  std::string e1, e2, e3;
  InThread([&] {
    auto* o = gofin::New<RmObj>();
    e1 = ErrorOf([&] { gofin::SetFinalizer(o, nullptr); });
    e2 = ErrorOf([&] { gofin::SetFinalizer(o, nullptr); });
    // ... and does not prevent setting one afterwards.
    e3 = ErrorOf([&] { gofin::SetFinalizer(o, [](RmObj*) { g_rm_fin1.fetch_add(1); }); });
    // Removal of a never-set finalizer on a tiny object.
    auto* i = gofin::New<int>(5);
    gofin::SetFinalizer(i, nullptr);
  });
  EXPECT_EQ(e1, "<no exception>");
  EXPECT_EQ(e2, "<no exception>");
  EXPECT_EQ(e3, "<no exception>");
  GCAndDrain();
  EXPECT_EQ(Load(g_rm_fin1) - f0, 1);
}

TEST(FinalizerRemoval, SetAgainAfterRemoval) {
  const int f1 = Load(g_rm_fin1), f2 = Load(g_rm_fin2);
  std::string err;
  InThread([&] {
    auto* o = gofin::New<RmObj>();
    gofin::SetFinalizer(o, [](RmObj*) { g_rm_fin1.fetch_add(1); });
    gofin::SetFinalizer(o, nullptr);
    err = ErrorOf([&] {
      gofin::SetFinalizer(o, [](RmObj* r) {
        if (r->canary == 0xABCDEFULL) g_rm_fin2.fetch_add(1);
      });
    });
    gofin::SetFinalizer(o, nullptr);  // removal twice...
    gofin::SetFinalizer(o, nullptr);
    gofin::SetFinalizer(o, [](RmObj* r) {  // ... and set a third time
      if (r->canary == 0xABCDEFULL) g_rm_fin2.fetch_add(1);
    });
  });
  EXPECT_EQ(err, "<no exception>");
  GCAndDrain();
  EXPECT_EQ(Load(g_rm_fin1) - f1, 0) << "removed finalizer ran";
  EXPECT_EQ(Load(g_rm_fin2) - f2, 1) << "the finalizer set after removal didn't run";
}

// ---------------------------------------------------------------------------------------------
// TestFinalizerOnGlobal
// ---------------------------------------------------------------------------------------------

namespace {
struct Object1 {
  std::vector<char> something;
};
struct Object2 {
  char something;
};
Object1 g_foo1;              // bss (zero-initialised, dynamic constructor)
Object2 g_foo2{'x'};         // data
Object1* g_foo1p = &g_foo1;  // Go: Foo1 = &Object1{}
long g_data_long = 12345;
std::atomic<int> g_global_fin{0};
}  // namespace

TEST(FinalizerOnGlobal, SetAndRemoveAreSilentNoOps) {
  EXPECT_NO_THROW(gofin::SetFinalizer(g_foo1p, [](Object1*) { g_global_fin.fetch_add(1); }));
  EXPECT_NO_THROW(gofin::SetFinalizer(&g_foo2, [](Object2*) { g_global_fin.fetch_add(1); }));
  EXPECT_NO_THROW(gofin::SetFinalizer(g_foo1p, nullptr));
  EXPECT_NO_THROW(gofin::SetFinalizer(&g_foo2, nullptr));

  // Setting twice is no "already set" (nothing was set), removal twice is fine.
  EXPECT_EQ(ErrorOf([] { gofin::SetFinalizer(&g_foo2, [](Object2*) { g_global_fin++; }); }),
            "<no exception>");
  EXPECT_EQ(ErrorOf([] { gofin::SetFinalizer(&g_foo2, [](Object2*) { g_global_fin++; }); }),
            "<no exception>");
  EXPECT_NO_THROW(gofin::SetFinalizer(&g_foo2, nullptr));
  EXPECT_NO_THROW(gofin::SetFinalizer(&g_foo2, nullptr));

  // Tiny-eligible global, an inner pointer into a global (no "not at beginning" for globals, as
  // in Go), a function-local static, and a global of a shared library (libstdc++'s std::cout;
  // it may also have been copied into this executable's bss: a global either way).
  static Object1 local_static;
  EXPECT_NO_THROW(gofin::SetFinalizer(&g_data_long, [](long*) { g_global_fin.fetch_add(1); }));
  EXPECT_NO_THROW(gofin::SetFinalizer(&g_foo1.something,
                                      [](std::vector<char>*) { g_global_fin.fetch_add(1); }));
  EXPECT_NO_THROW(gofin::SetFinalizer(&local_static, [](Object1*) { g_global_fin.fetch_add(1); }));
  EXPECT_NO_THROW(
      gofin::SetFinalizer(&std::cout, [](std::ostream*) { g_global_fin.fetch_add(1); }));
  EXPECT_NO_THROW(gofin::SetFinalizer(&std::cout, nullptr));
  EXPECT_NO_THROW(gofin::SetFinalizer(&local_static, nullptr));

  GCAndDrain();
  GCAndDrain();
  EXPECT_EQ(Load(g_global_fin), 0) << "a global never becomes unreachable";
}

namespace {
void GlobalFinalizerFn(long* /*unused*/) {}

bool FinalizerThreadCreated() {
  return (gofin::internal::FinalizerThreadStatus() & gofin::internal::kFingCreated) != 0;
}
}  // namespace

// Go's SetFinalizer returns for a global before createfing, and a call that fails never gets
// there: a program whose finalizers all target globals has no finalizer thread. Each case runs
// in a fresh process (the threadsafe death-test style re-executes this binary).
TEST(FinalizerOnGlobalDeathTest, StartsNoFinalizerThread) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        gofin::SetFinalizer(&g_foo2, [](Object2*) {});          // stateless lambda
        gofin::SetFinalizer(&g_data_long, &GlobalFinalizerFn);  // function pointer
        int captured = 1;
        gofin::SetFinalizer(&g_foo2, [captured](Object2*) { (void)captured; });  // boxed
        try {
          gofin::SetFinalizer(static_cast<long*>(nullptr), &GlobalFinalizerFn);
        } catch (const gofin::Error&) {
        }
        std::_Exit(FinalizerThreadCreated() ? 1 : 0);
      },
      ::testing::ExitedWithCode(0), "");
  // The status bit the case above reads is set once a finalizer is really attached.
  EXPECT_EXIT(
      {
        long* heap = gofin::New<long>();
        gofin::SetFinalizer(heap, &GlobalFinalizerFn);
        gofin::KeepAlive(heap);
        std::_Exit(FinalizerThreadCreated() ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "");
}

// ---------------------------------------------------------------------------------------------
// BenchmarkFinalizer, as a correctness test: set and remove on the same objects, repeatedly,
// from several threads
// ---------------------------------------------------------------------------------------------

namespace {
std::atomic<int> g_bench_fin{0};
void Fin(int* /*v*/) { g_bench_fin.fetch_add(1); }
}  // namespace

TEST(FinalizerBenchmarkPort, SetThenRemoveBatchesInParallel) {
  Watchdog dog("SetThenRemoveBatchesInParallel");
  constexpr int kBatch = 1000;
  constexpr int kThreads = 4;
  constexpr int kIters = 20;
  const int f0 = Load(g_bench_fin);
  std::atomic<int> errors{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t) {
    ts.emplace_back([&] {
      auto data = std::make_unique<gofin::Root<int>[]>(kBatch);  // malloc'd: rooted by Root
      for (int i = 0; i < kBatch; ++i) data[i] = gofin::New<int>(i);
      for (int it = 0; it < kIters; ++it) {
        for (int i = 0; i < kBatch; ++i) {
          try {
            gofin::SetFinalizer(data[i].get(), &Fin);
          } catch (...) {
            errors.fetch_add(1);
          }
        }
        for (int i = 0; i < kBatch; ++i) gofin::SetFinalizer(data[i].get(), nullptr);
      }
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(errors.load(), 0);
  GCAndDrain();
  GCAndDrain();
  EXPECT_EQ(Load(g_bench_fin) - f0, 0) << "every finalizer was removed";
}

// ---------------------------------------------------------------------------------------------
// Test support in a fresh process
// ---------------------------------------------------------------------------------------------

namespace {
[[noreturn]] void FreshProcessChecks() {
  // No finalizer was ever set: the queue is empty (and nothing runs), the counters are zero.
  const auto t0 = std::chrono::steady_clock::now();
  const bool drained = gofin::testing::BlockUntilEmptyFinalizerQueue(10s);
  const bool quick = std::chrono::steady_clock::now() - t0 < 5s;
  const gofin::FinalizerStats s = gofin::ReadFinalizerStats();
  std::fprintf(stderr, "drained=%d quick=%d queued=%llu executed=%llu\n", drained, quick,
               static_cast<unsigned long long>(s.Queued),
               static_cast<unsigned long long>(s.Executed));
  std::exit(drained && quick && s.Queued == 0 && s.Executed == 0 ? 0 : 1);
}
}  // namespace

TEST(FinalizerTestSupportDeathTest, BeforeAnyFinalizerIsSet) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(FreshProcessChecks(), ::testing::ExitedWithCode(0), "drained=1 quick=1");
}
