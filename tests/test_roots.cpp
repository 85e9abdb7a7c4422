// What is a root (API.md "What is a root"): other threads' stacks and registers, globals,
// gofin::Root<T>, AddRoots ranges, interior pointers; and what is not: noscan objects,
// malloc'd memory, one-past-the-end pointers.
//
// Conservative scanning means a stale stack word can keep an object alive. Every test here is
// built so that its assertions are exact: objects are created in [[gnu::noinline]] helpers
// that return no pointer to the test body (or in threads that exit before the collection),
// the dead stack below the test body is zeroed before each GC(), and "was it freed" is read
// from destructor counters, never by holding the pointer in the test's frame.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <gofin/gofin.hpp>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

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

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

// Aborts the process with a message if the guarded scope does not finish in time: a hang in
// the collector then fails the test binary instead of stalling it.
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

// A scan object with a non-trivial destructor that counts into the counter it was given (a
// global: never a heap address) and poisons its canary.
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

// Garbage of Tracked's size class, so that a prematurely freed Tracked would be reused and
// overwritten. Returns nothing.
std::atomic<int> g_churn_dtors{0};
[[gnu::noinline]] void Churn(int n) {
  for (int i = 0; i < n; ++i) {
    auto* t = gofin::New<Tracked>(&g_churn_dtors, static_cast<std::uint64_t>(i));
    asm volatile("" : : "r"(t) : "memory");
  }
}

// The pointer is stored XOR this mask where the test must hold it without it being a root:
// the high bits make the encoded value a non-canonical address, never inside the heap.
volatile std::uintptr_t g_mask = 0x5a5a000000000000ULL;

[[gnu::noinline]] std::uintptr_t NewEncoded(std::atomic<int>* counter, std::uint64_t v) {
  auto* p = gofin::New<Tracked>(counter, v);
  return reinterpret_cast<std::uintptr_t>(p) ^ g_mask;
}

[[gnu::noinline]] Tracked* Decode(std::uintptr_t enc) {
  return reinterpret_cast<Tracked*>(enc ^ g_mask);
}

int Load(const std::atomic<int>& a) { return a.load(std::memory_order_relaxed); }

// Restores GC pacing after tests that change it (none here, but a collection started by the
// pacer must not be what makes a test pass or fail, so pacing is off for the whole binary and
// every collection is an explicit GC()).
class RootsEnv : public ::testing::Environment {
 public:
  void SetUp() override { old_ = gofin::debug::SetGCPercent(-1); }
  void TearDown() override { gofin::debug::SetGCPercent(old_); }

 private:
  int old_ = 100;
};
[[maybe_unused]] ::testing::Environment* const g_env =
    ::testing::AddGlobalTestEnvironment(new RootsEnv);

}  // namespace

// ---------------------------------------------------------------------------------------------
// Another thread's stack
// ---------------------------------------------------------------------------------------------

namespace stack_root {
std::atomic<int> g_dtors{0};
}

TEST(Roots, OtherThreadsStackKeepsObjectAlive) {
  Watchdog wd("OtherThreadsStackKeepsObjectAlive");
  using stack_root::g_dtors;
  g_dtors = 0;
  std::mutex mu;
  std::condition_variable cv;
  bool holding = false;
  bool release = false;
  bool intact = false;
  std::thread t([&] {
    // A volatile local lives in memory: the pointer is on this thread's stack while it
    // waits (and, as the encoded value was, nowhere else).
    Tracked* volatile slot = Decode(NewEncoded(&g_dtors, 4242));
    ClobberStack();
    {
      std::lock_guard lock(mu);
      holding = true;
    }
    cv.notify_all();
    {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return release; });
    }
    intact = slot->Ok(4242);
  });
  {
    std::unique_lock lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(30), [&] { return holding; }));
  }
  const int churned = Load(g_churn_dtors);
  for (int i = 0; i < 5; ++i) {
    Churn(20000);
    CollectClean();
  }
  EXPECT_GT(Load(g_churn_dtors) - churned, 90000) << "the churn garbage was not collected";
  EXPECT_EQ(Load(g_dtors), 0) << "an object held on another thread's stack was freed";
  {
    std::lock_guard lock(mu);
    release = true;
  }
  cv.notify_all();
  t.join();
  EXPECT_TRUE(intact) << "the object's contents changed while it was held on a stack";
  CollectClean();  // the thread is gone: nothing holds the object any more
  EXPECT_EQ(Load(g_dtors), 1);
}

// ---------------------------------------------------------------------------------------------
// Another thread's registers
// ---------------------------------------------------------------------------------------------

namespace reg_root {
std::atomic<int> g_dtors{0};
std::atomic<int> g_neg_dtors{0};
}  // namespace reg_root

// The spinning thread keeps the only copy of the pointer in a register: it is produced from an
// encoded value after the stack was zeroed, and the loop's asm forces it to stay in a
// register. The encoded value, which is not a heap address, may sit anywhere.
TEST(Roots, OtherThreadsRegisterKeepsObjectAlive) {
  Watchdog wd("OtherThreadsRegisterKeepsObjectAlive");
  using reg_root::g_dtors;
  g_dtors = 0;
  std::atomic<bool> ready{false};
  std::atomic<bool> stop{false};
  std::atomic<bool> intact{false};
  std::thread t([&] {
    const std::uintptr_t enc = NewEncoded(&g_dtors, 777);
    ClobberStack();
    Tracked* p = reinterpret_cast<Tracked*>(enc ^ g_mask);
    ready.store(true, std::memory_order_release);
    while (!stop.load(std::memory_order_relaxed)) {
      asm volatile("" : "+r"(p));
    }
    intact.store(p->Ok(777));
  });
  while (!ready.load(std::memory_order_acquire)) std::this_thread::yield();
  for (int i = 0; i < 5; ++i) {
    Churn(20000);
    CollectClean();
  }
  EXPECT_EQ(Load(g_dtors), 0) << "an object held only in another thread's register was freed";
  stop.store(true);
  t.join();
  EXPECT_TRUE(intact.load()) << "the object's contents changed while it was held in a register";
  CollectClean();
  EXPECT_EQ(Load(g_dtors), 1);
}

// The control for the test above: the same thread holding only the encoded value (not a
// pointer) does not keep the object alive. This shows the setup leaves no stray copy of the
// pointer anywhere, so the test above passes because of the register alone.
TEST(Roots, EncodedPointerInSpinningThreadKeepsNothingAlive) {
  Watchdog wd("EncodedPointerInSpinningThreadKeepsNothingAlive");
  using reg_root::g_neg_dtors;
  g_neg_dtors = 0;
  std::atomic<bool> ready{false};
  std::atomic<bool> stop{false};
  std::thread t([&] {
    std::uintptr_t enc = NewEncoded(&g_neg_dtors, 778);
    ClobberStack();
    ready.store(true, std::memory_order_release);
    while (!stop.load(std::memory_order_relaxed)) {
      asm volatile("" : "+r"(enc));
    }
  });
  while (!ready.load(std::memory_order_acquire)) std::this_thread::yield();
  CollectClean();
  EXPECT_EQ(Load(g_neg_dtors), 1) << "an object with no pointer to it survived a collection";
  stop.store(true);
  t.join();
}

// ---------------------------------------------------------------------------------------------
// Globals (data and bss)
// ---------------------------------------------------------------------------------------------

namespace global_root {
std::atomic<int> g_dtors{0};
}  // namespace global_root

// Namespace scope, external linkage, zero-initialised: in .bss.
Tracked* g_ptr = nullptr;
// Initialised to a non-zero value: in .data.
Tracked* g_data_ptr = reinterpret_cast<Tracked*>(std::uintptr_t{1});

namespace {
[[gnu::noinline]] void SetGlobals() {
  g_ptr = gofin::New<Tracked>(&global_root::g_dtors, 11);
  g_data_ptr = gofin::New<Tracked>(&global_root::g_dtors, 12);
}
[[gnu::noinline]] bool GlobalsOk() { return g_ptr->Ok(11) && g_data_ptr->Ok(12); }
[[gnu::noinline]] void ClearGlobals() {
  g_ptr = nullptr;
  g_data_ptr = nullptr;
}
}  // namespace

TEST(Roots, GlobalVariablesKeepObjectsAlive) {
  using global_root::g_dtors;
  g_dtors = 0;
  SetGlobals();
  for (int i = 0; i < 3; ++i) {
    Churn(20000);
    CollectClean();
  }
  EXPECT_EQ(Load(g_dtors), 0) << "an object referenced from a global was freed";
  EXPECT_TRUE(GlobalsOk());
  ClearGlobals();
  CollectClean();
  EXPECT_EQ(Load(g_dtors), 2) << "objects no longer referenced from globals were not freed";
}

// ---------------------------------------------------------------------------------------------
// gofin::Root<T>
// ---------------------------------------------------------------------------------------------

namespace root_handle {
// Every operation that moves a raw pointer runs in a noinline helper: inlined into the test
// body, Root's copy would leave the pointer in a callee-saved register of the test's frame.
using R = gofin::Root<Tracked>;
[[gnu::noinline]] void Fill(R& r, std::atomic<int>* counter, std::uint64_t v) {
  r = gofin::New<Tracked>(counter, v);
}
[[gnu::noinline]] bool Holds(const R& r, std::uint64_t v) {
  return r.get() != nullptr && r->Ok(v) && (*r).value == v && static_cast<bool>(r);
}
[[gnu::noinline]] bool Same(const R& a, const R& b) { return a.get() == b.get(); }
[[gnu::noinline]] void CopyConstruct(std::optional<R>& dst, const R& src) { dst.emplace(src); }
[[gnu::noinline]] void CopyAssign(R& dst, const R& src) { dst = src; }
[[gnu::noinline]] void SelfAssign(R& r) {
  R& alias = r;
  r = alias;
}
}  // namespace root_handle

TEST(Roots, RootKeepsObjectAliveAndResetReleasesIt) {
  using namespace root_handle;  // NOLINT
  static std::atomic<int> dtors{0};
  dtors = 0;
  R r;
  EXPECT_FALSE(static_cast<bool>(r));
  EXPECT_TRUE(r.get() == nullptr);
  Fill(r, &dtors, 1);
  Churn(20000);
  CollectClean();
  EXPECT_EQ(Load(dtors), 0);
  EXPECT_TRUE(Holds(r, 1));
  r.reset();
  EXPECT_FALSE(static_cast<bool>(r));
  CollectClean();
  EXPECT_EQ(Load(dtors), 1) << "reset() did not release the object";
  // A reset Root can be reused.
  Fill(r, &dtors, 2);
  CollectClean();
  EXPECT_EQ(Load(dtors), 1);
  EXPECT_TRUE(Holds(r, 2));
  r.reset();
  CollectClean();
  EXPECT_EQ(Load(dtors), 2);
}

TEST(Roots, RootCopyConstructionAndAssignment) {
  using namespace root_handle;  // NOLINT
  static std::atomic<int> dtors{0};
  dtors = 0;
  R a;
  Fill(a, &dtors, 10);
  {
    std::optional<R> b;
    CopyConstruct(b, a);  // a second slot holding the same pointer
    EXPECT_TRUE(Same(a, *b));
    a.reset();
    CollectClean();
    EXPECT_EQ(Load(dtors), 0) << "the copy did not keep the object alive";
    EXPECT_TRUE(Holds(*b, 10));
    R c;
    CopyAssign(c, *b);
    EXPECT_TRUE(Same(*b, c));
    b->reset();
    CollectClean();
    EXPECT_EQ(Load(dtors), 0) << "the copy-assigned Root did not keep the object alive";
    EXPECT_TRUE(Holds(c, 10));
    SelfAssign(c);  // harmless
    EXPECT_TRUE(Holds(c, 10));
    b.reset();  // destroys the (empty) copy
    CollectClean();
    EXPECT_EQ(Load(dtors), 0);
  }  // c destroyed: its slot is released
  CollectClean();
  EXPECT_EQ(Load(dtors), 1) << "destroying the last Root did not release the object";
}

TEST(Roots, RootMoveConstructionAndAssignment) {
  using namespace root_handle;  // NOLINT
  static std::atomic<int> dtors{0};
  dtors = 0;
  R a;
  Fill(a, &dtors, 20);
  R b(std::move(a));                   // moves the slot; no raw pointer passes through this frame
  EXPECT_TRUE(a.get() == nullptr);     // NOLINT(bugprone-use-after-move): moved-from is empty
  EXPECT_FALSE(static_cast<bool>(a));  // NOLINT(bugprone-use-after-move)
  CollectClean();
  EXPECT_EQ(Load(dtors), 0) << "the moved-to Root did not keep the object alive";
  EXPECT_TRUE(Holds(b, 20));

  R c;
  Fill(c, &dtors, 21);
  c = std::move(b);                 // c's old object (21) loses its only root
  EXPECT_TRUE(b.get() == nullptr);  // NOLINT(bugprone-use-after-move)
  CollectClean();
  EXPECT_EQ(Load(dtors), 1) << "move assignment did not release the overwritten object";
  EXPECT_TRUE(Holds(c, 20));

  // A moved-from Root can be assigned a pointer again (it acquires a new slot).
  Fill(a, &dtors, 22);  // NOLINT(bugprone-use-after-move)
  CollectClean();
  EXPECT_EQ(Load(dtors), 1);
  EXPECT_TRUE(Holds(a, 22));
  a.reset();
  c.reset();
  CollectClean();
  EXPECT_EQ(Load(dtors), 3);
}

TEST(Roots, RootPointerAssignmentReleasesPreviousObject) {
  using namespace root_handle;  // NOLINT
  static std::atomic<int> dtors{0};
  dtors = 0;
  R r;
  Fill(r, &dtors, 30);
  Fill(r, &dtors, 31);  // operator=(T*): 30 loses its only root
  CollectClean();
  EXPECT_EQ(Load(dtors), 1);
  EXPECT_TRUE(Holds(r, 31));
  r = nullptr;
  EXPECT_FALSE(static_cast<bool>(r));
  CollectClean();
  EXPECT_EQ(Load(dtors), 2);
}

namespace root_threads {
std::atomic<int> g_dtors{0};
[[gnu::noinline]] void PushNew(std::vector<gofin::Root<Tracked>>& v, std::uint64_t value) {
  v.emplace_back(gofin::New<Tracked>(&g_dtors, value));
}
[[gnu::noinline]] bool Check(const std::vector<gofin::Root<Tracked>>& v, std::uint64_t first) {
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (!v[i] || !v[i]->Ok(first + i)) return false;
  }
  return true;
}
}  // namespace root_threads

// Four threads create and destroy Roots (in std::vectors: malloc'd memory, which only the
// Roots make safe) while the main thread collects. Every rooted object must stay intact.
TEST(Roots, RootsCreatedAndDestroyedConcurrently) {
  using namespace root_threads;  // NOLINT
  Watchdog wd("RootsCreatedAndDestroyedConcurrently", std::chrono::seconds(300));
  g_dtors = 0;
  constexpr int kThreads = 4;
  const int rounds = kSanitized ? 150 : 600;
  constexpr int kWindow = 64;
  std::atomic<int> running{kThreads};
  std::atomic<int> failures{0};
  std::atomic<int> created{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<gofin::Root<Tracked>> window;
      for (int round = 0; round < rounds; ++round) {
        const std::uint64_t first =
            (static_cast<std::uint64_t>(t) << 40) | (static_cast<std::uint64_t>(round) << 8);
        for (int i = 0; i < kWindow; ++i) PushNew(window, first + static_cast<std::uint64_t>(i));
        created.fetch_add(kWindow, std::memory_order_relaxed);
        Churn(64);
        if (!Check(window, first)) failures.fetch_add(1);
        // Copy a few, move a few, then destroy them all.
        std::vector<gofin::Root<Tracked>> copies(window.begin(), window.begin() + 8);
        std::vector<gofin::Root<Tracked>> moved;
        for (auto& r : window) moved.push_back(std::move(r));
        window.clear();
        if (!Check(moved, first) || !Check(copies, first)) failures.fetch_add(1);
      }
      running.fetch_sub(1);
    });
  }
  int gcs = 0;
  while (running.load() != 0) {
    gofin::GC();
    ++gcs;
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0) << "a rooted object was freed or overwritten";
  EXPECT_GT(gcs, 0);
  CollectClean();
  // All Roots are gone and the threads that allocated exited: everything is garbage.
  EXPECT_EQ(Load(g_dtors), created.load());
}

// ---------------------------------------------------------------------------------------------
// AddRoots / RemoveRoots; malloc'd memory is not a root
// ---------------------------------------------------------------------------------------------

namespace add_roots {
std::atomic<int> g_dtors{0};
constexpr int kN = 100;
[[gnu::noinline]] void FillBuffer(Tracked** buf) {
  for (int i = 0; i < kN; ++i) buf[i] = gofin::New<Tracked>(&g_dtors, 500 + i);
}
[[gnu::noinline]] bool BufferOk(Tracked** buf) {
  for (int i = 0; i < kN; ++i) {
    if (!buf[i]->Ok(500 + i)) return false;
  }
  return true;
}
}  // namespace add_roots

TEST(Roots, AddRootsRangeKeepsObjectsAliveUntilRemoved) {
  using namespace add_roots;  // NOLINT
  g_dtors = 0;
  auto** buf = static_cast<Tracked**>(std::calloc(kN, sizeof(Tracked*)));
  ASSERT_NE(buf, nullptr);
  FillBuffer(buf);
  gofin::AddRoots(buf, buf + kN);
  for (int i = 0; i < 3; ++i) {
    Churn(20000);
    CollectClean();
  }
  EXPECT_EQ(Load(g_dtors), 0) << "objects referenced from an AddRoots range were freed";
  EXPECT_TRUE(BufferOk(buf));
  gofin::RemoveRoots(buf, buf + kN);
  CollectClean();
  EXPECT_EQ(Load(g_dtors), kN) << "after RemoveRoots the objects should be collectable";
  std::free(buf);
}

namespace malloc_not_root {
std::atomic<int> g_dtors{0};
[[gnu::noinline]] void FillBuffer(Tracked** buf, int n) {
  for (int i = 0; i < n; ++i) buf[i] = gofin::New<Tracked>(&g_dtors, 900 + i);
}
}  // namespace malloc_not_root

TEST(Roots, MallocMemoryIsNotARoot) {
  using namespace malloc_not_root;  // NOLINT
  g_dtors = 0;
  constexpr int kN = 64;
  auto** buf = static_cast<Tracked**>(std::malloc(kN * sizeof(Tracked*)));
  ASSERT_NE(buf, nullptr);
  FillBuffer(buf, kN);
  CollectClean();
  EXPECT_EQ(Load(g_dtors), kN) << "objects referenced only from malloc'd memory survived";
  std::free(buf);  // holds dangling pointers now; never dereferenced
}

// ---------------------------------------------------------------------------------------------
// A long chain: no recursion in the marker
// ---------------------------------------------------------------------------------------------

namespace chain {
std::atomic<int> g_dtors{0};
struct Link {
  Link* next = nullptr;
  std::uint64_t value = 0;
  std::uint64_t check = 0;
  ~Link() { g_dtors.fetch_add(1, std::memory_order_relaxed); }
};
// Built head-first so the list runs from the newest node to the oldest.
[[gnu::noinline]] void Build(gofin::Root<Link>& head, int n) {
  Link* h = nullptr;
  for (int i = 0; i < n; ++i) {
    Link* l = gofin::New<Link>();
    l->next = h;
    l->value = static_cast<std::uint64_t>(i);
    l->check = static_cast<std::uint64_t>(i) * kCanary;
    h = l;
  }
  head = h;
}
[[gnu::noinline]] long Verify(const gofin::Root<Link>& head, int n) {
  long count = 0;
  std::uint64_t expect = static_cast<std::uint64_t>(n);
  for (const Link* l = head.get(); l != nullptr; l = l->next) {
    --expect;
    if (l->value != expect || l->check != expect * kCanary) return -1 - count;
    ++count;
  }
  return count;
}
}  // namespace chain

TEST(Roots, MillionObjectChainSurvivesAndIsCollected) {
  using namespace chain;  // NOLINT
  Watchdog wd("MillionObjectChainSurvivesAndIsCollected", std::chrono::seconds(300));
  g_dtors = 0;
  constexpr int kN = 1000000;
  gofin::Root<Link> head;
  // Built in a thread that exits: the only reference left is the Root.
  std::thread([&] { Build(head, kN); }).join();
  CollectClean();
  CollectClean();
  EXPECT_EQ(Load(g_dtors), 0) << "nodes of a rooted chain were freed";
  EXPECT_EQ(Verify(head, kN), kN) << "the chain is broken or corrupted";
  head.reset();
  CollectClean();
  EXPECT_EQ(Load(g_dtors), kN) << "the dropped chain was not collected";
}

// ---------------------------------------------------------------------------------------------
// Interior pointers
// ---------------------------------------------------------------------------------------------

namespace interior {
std::atomic<int> g_dtors{0};
struct Elem {
  std::uint64_t canary = kCanary;
  std::uint64_t pad = 0;
  ~Elem() {
    g_dtors.fetch_add(1, std::memory_order_relaxed);
    canary = kDead;
    asm volatile("" : : "r"(this) : "memory");  // keep the store: it is not dead to us
  }
};
constexpr int kN = 100;
}  // namespace interior

// A pointer into the middle of an array (in .bss) keeps the whole array alive.
interior::Elem* g_interior = nullptr;

namespace interior {
[[gnu::noinline]] void Make() {
  Elem* arr = gofin::NewArray<Elem>(kN);
  for (int i = 0; i < kN; ++i) arr[i].pad = static_cast<std::uint64_t>(i);
  g_interior = arr + kN / 2;
}
[[gnu::noinline]] bool AllOk() {
  const Elem* arr = g_interior - kN / 2;
  for (int i = 0; i < kN; ++i) {
    if (arr[i].canary != kCanary || arr[i].pad != static_cast<std::uint64_t>(i)) return false;
  }
  return true;
}
[[gnu::noinline]] void Drop() { g_interior = nullptr; }
}  // namespace interior

TEST(Roots, InteriorPointerKeepsWholeObjectAlive) {
  using namespace interior;  // NOLINT
  g_dtors = 0;
  Make();
  for (int i = 0; i < 3; ++i) {
    Churn(20000);
    CollectClean();
  }
  EXPECT_EQ(Load(g_dtors), 0) << "an array referenced by an interior pointer was freed";
  EXPECT_TRUE(AllOk());
  Drop();
  CollectClean();
  EXPECT_EQ(Load(g_dtors), kN) << "every element's destructor runs once the array is freed";
}

// A one-past-the-end pointer (v.end()) must not keep the object that follows alive
// (Go's TestEmptySlice).
namespace past_end {
std::atomic<int> g_arr_dtors{0};
std::atomic<int> g_next_dtors{0};
struct E16 {
  std::uint64_t a = 1;
  std::uint64_t b = 2;
  ~E16() { g_arr_dtors.fetch_add(1, std::memory_order_relaxed); }
};
// NewArray<E16>(2) asks for 33 bytes: size class 48. Next is 40 bytes with a destructor too
// (New pads it only if it filled its class), so both come from spans of the same class and
// consecutive allocations are neighbours.
struct Next {
  std::uint64_t w[5] = {};
  ~Next() { g_next_dtors.fetch_add(1, std::memory_order_relaxed); }
};
static_assert(sizeof(Next) == 40);
}  // namespace past_end

std::uintptr_t g_past_end = 0;  // .bss, holds an address (a root word)

namespace past_end {
// Returns true once an array and a Next were allocated back to back; the array's end pointer
// is left in g_past_end. Unsuitable pairs are garbage.
[[gnu::noinline]] bool MakeAdjacentPair() {
  E16* arr = gofin::NewArray<E16>(2);
  Next* next = gofin::New<Next>();
  const auto end = reinterpret_cast<std::uintptr_t>(arr + 2);
  const auto next_addr = reinterpret_cast<std::uintptr_t>(next);
  if (next_addr != reinterpret_cast<std::uintptr_t>(arr) + 48) return false;
  g_past_end = end;
  return next_addr > end;
}
}  // namespace past_end

TEST(Roots, OnePastTheEndPointerDoesNotKeepNextObjectAlive) {
  using namespace past_end;  // NOLINT
  g_past_end = 0;
  g_arr_dtors = 0;
  g_next_dtors = 0;
  bool made = false;
  int tries = 0;
  for (; tries < 1000 && !made; ++tries) made = MakeAdjacentPair();
  ASSERT_TRUE(made) << "could not allocate an array and an object back to back";
  CollectClean();
  // The pairs that were not adjacent are garbage too; only the kept array may survive.
  EXPECT_EQ(Load(g_next_dtors), tries) << "the object after the array was kept alive by the "
                                          "array's one-past-the-end pointer";
  EXPECT_EQ(Load(g_arr_dtors), 2 * (tries - 1))
      << "the array itself must stay alive (its end pointer lies in its padding)";
  g_past_end = 0;
  CollectClean();
  EXPECT_EQ(Load(g_arr_dtors), 2 * tries);
}

// ---------------------------------------------------------------------------------------------
// Noscan objects are never scanned
// ---------------------------------------------------------------------------------------------

namespace noscan {
std::atomic<int> g_dtors{0};
constexpr std::uintptr_t kMagic = 0x1234567890abcdefULL;
}  // namespace noscan

std::uintptr_t* g_noscan_block = nullptr;

namespace noscan {
[[gnu::noinline]] void Make() {
  auto* block = static_cast<std::uintptr_t*>(gofin::AllocNoScan(64));
  block[0] = reinterpret_cast<std::uintptr_t>(gofin::New<Tracked>(&g_dtors, 1));
  block[1] = kMagic;
  block[2] = reinterpret_cast<std::uintptr_t>(gofin::New<Tracked>(&g_dtors, 2)) + 8;  // interior
  g_noscan_block = block;
}
[[gnu::noinline]] void ChurnNoScan() {
  for (int i = 0; i < 20000; ++i) {
    void* p = gofin::AllocNoScan(64);
    std::memset(p, 0xab, 64);
  }
}
}  // namespace noscan

TEST(Roots, NoScanObjectKeepsNothingAlive) {
  using namespace noscan;  // NOLINT
  g_dtors = 0;
  Make();
  CollectClean();
  EXPECT_EQ(Load(g_dtors), 2) << "addresses stored in a noscan object kept objects alive";
  // The noscan block itself is rooted by the global and must be intact.
  ChurnNoScan();
  CollectClean();
  EXPECT_EQ(g_noscan_block[1], kMagic) << "a rooted noscan object was freed and reused";
  g_noscan_block = nullptr;
}
