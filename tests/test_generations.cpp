// Minor collections (gc/generations.hpp, debug::SetGenerational, testing::MinorGC), end to end.
//
// After a collection every survivor is old; a minor cycle marks from the roots but stops at old
// objects, and rescans only the old objects on pages written since the previous cycle. So:
//   - a young object reachable only through a pointer stored into an old object after it
//     became old survives a minor cycle intact: stored by this thread, by the kernel (read()
//     from a pipe), by another registered thread, into a large object's last page, into the
//     part of a small object that lies on a later OS page than its start, into an object in a
//     heap reservation made after tracking began, and at the head of a young chain; also after
//     the setting was turned on at run time;
//   - roots (Root<T>, globals, AddRoots ranges) are scanned by every minor cycle;
//   - a minor cycle frees unreachable young objects and queues their finalizers, while
//     unreachable old objects (and their finalizers) wait for a full cycle: the next GC(), or
//     at most 16 automatic cycles away;
//   - a finalizer's closure attached to an old object survives minor cycles;
//   - MemStats::NumMinorGC counts minor cycles, NumGC counts them too, GC() is never minor;
//   - debug::SetGenerational(false) makes MinorGC a full cycle, and returns the previous
//     setting;
//   - threads relinking old nodes to fresh young ones while minor and full cycles alternate
//     never see a node freed under them.
//
// Exact reachability despite conservative scanning: everything a test needs alive is in a
// Root, a global or another thread's stack; objects are allocated in [[gnu::noinline]]
// helpers or threads that exit; collections are testing::GC/MinorGC(kNoHeapPointers), which do
// not scan this thread's stack and registers; pointers are never gtest operands (helpers
// compare inside, or compare integers). Where the test depends on a page being write-protected
// after a cycle, it checks that first with the kernel's own report (dirty::ReadWritten), so
// that it cannot pass by accident (the page written for another reason).
//
// Where minor cycles are not in effect (kernels before 6.7, seccomp, valgrind,
// GOFIN_GENERATIONAL=0) every test that needs them is skipped.
#include <gtest/gtest.h>
#include <linux/io_uring.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <gofin/gofin.hpp>
#include <initializer_list>
#include <mutex>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "heap/dirty_pages.hpp"
#include "heap/heap.hpp"
#include "heap/malloc.hpp"
#include "test_support.hpp"
#include "test_wait.hpp"

namespace {

using namespace std::chrono_literals;
using gofin::testing::StackState;
using gofin_test::ClobberStack;
using gofin_test::Watchdog;

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

constexpr std::uint64_t kMiB = std::uint64_t{1} << 20;
constexpr std::uintptr_t kOsPage = gofin::internal::dirty::kOsPageSize;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

template <class F>
void InThread(F&& fn) {
  std::thread(std::forward<F>(fn)).join();
}

bool Drain() { return gofin::testing::BlockUntilEmptyFinalizerQueue(60s); }

// A full collection that sees only roots, globals and other threads' stacks.
void ExactGC() { gofin::testing::GC(StackState::kNoHeapPointers); }
// A minor collection when possible (the return value), likewise exact.
bool ExactMinorGC() { return gofin::testing::MinorGC(StackState::kNoHeapPointers); }

int Load(const std::atomic<int>& a) { return a.load(); }

void Zero(std::initializer_list<std::atomic<int>*> counters) {
  for (std::atomic<int>* c : counters) c->store(0);
}

constexpr std::uint64_t kDead = 0xdeadbeefdeadbeefULL;

std::uint64_t Mix(std::uint64_t x) {  // splitmix64's finaliser
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// The young objects: 64 bytes (size class 64), a destructor that counts and poisons, and a
// checksummed payload. A freed Young is detected by its destructor counter, and one whose
// memory was reused by its contents.
struct Young {
  Young(std::atomic<int>* d, std::uint64_t v) : dtors(d), value(v), check(Mix(v)) {
    for (std::size_t i = 0; i < 4; ++i) payload[i] = Mix(v + i + 1);
  }
  ~Young() {
    dtors->fetch_add(1);
    check = kDead;
    asm volatile("" : : "r"(this) : "memory");  // keep the poisoning store
  }
  Young(const Young&) = delete;
  Young& operator=(const Young&) = delete;
  [[nodiscard]] bool Ok(std::uint64_t v) const {
    if (value != v || check != Mix(v)) return false;
    for (std::size_t i = 0; i < 4; ++i) {
      if (payload[i] != Mix(v + i + 1)) return false;
    }
    return true;
  }

  std::atomic<int>* dtors;
  Young* next = nullptr;
  std::uint64_t value;
  std::uint64_t check;
  std::uint64_t payload[4];
};
static_assert(sizeof(Young) == 64);

// The old objects: 320 bytes, a size class nothing else here uses, so that no other
// allocation writes to their pages after they were promoted.
constexpr std::size_t kHolderSlots = 39;
struct Holder {
  Young* slot[kHolderSlots];
  std::uint64_t tag;
};
static_assert(sizeof(Holder) == 320);

[[gnu::noinline]] Holder* NewHolder() {
  auto* h = gofin::New<Holder>();
  h->tag = Mix(320);
  return h;
}

// A chain of n Young objects valued v, v+1, ..., linked through next.
[[gnu::noinline]] Young* MakeChain(std::atomic<int>* d, std::uint64_t v, int n) {
  Young* head = nullptr;
  for (int k = n - 1; k >= 0; --k) {
    auto* y = gofin::New<Young>(d, v + static_cast<std::uint64_t>(k));
    y->next = head;
    head = y;
  }
  return head;
}

std::uintptr_t Addr(const volatile void* p) { return reinterpret_cast<std::uintptr_t>(p); }

// Whether p is the start of an allocated heap object: checked before a pointer read from
// possibly freed memory is followed, so that a broken collector fails a test instead of
// crashing the binary.
bool Live(const void* p) { return p != nullptr && gofin::internal::FindObject(p).base == Addr(p); }

// With check_live false, for finalizers: they run on the finalizer thread, concurrently with
// sweeps that FindObject must not race with.
[[gnu::noinline]] bool ChainOk(const Young* y, std::uint64_t v, int n, bool check_live = true) {
  for (int k = 0; k < n; ++k) {
    if (y == nullptr || (check_live && !Live(y)) || !y->Ok(v + static_cast<std::uint64_t>(k))) {
      return false;
    }
    y = y->next;
  }
  return y == nullptr;
}

// Stores a fresh young chain into h->slot[i]; the test's frame never sees its address.
[[gnu::noinline]] void StoreYoung(Holder* h, std::size_t i, std::atomic<int>* d, std::uint64_t v,
                                  int n = 1) {
  h->slot[i] = MakeChain(d, v, n);
}

[[gnu::noinline]] bool SlotOk(const Holder* h, std::size_t i, std::uint64_t v, int n = 1) {
  return ChainOk(h->slot[i], v, n);
}

[[gnu::noinline]] void MakeYoungGarbage(std::atomic<int>* d, int n) {
  for (int i = 0; i < n; ++i) {
    auto* y = gofin::New<Young>(d, static_cast<std::uint64_t>(i));
    asm volatile("" : : "r"(y) : "memory");
  }
}

// Garbage of many small sizes, written all over: any freed small object's memory is reused
// and overwritten. Never in the Holders' size class (320), whose pages must stay unwritten.
[[gnu::noinline]] void Churn(std::size_t bytes) {
  std::size_t done = 0;
  for (std::size_t i = 0; done < bytes; ++i) {
    const std::size_t size = 16 + (i % 64) * 16;
    if (size + 1 > 288 && size + 1 <= 320) continue;
    auto* p = static_cast<unsigned char*>(gofin::Alloc(size));
    std::memset(p, 0xa5, size);
    done += size;
  }
}

// Whether the kernel reports addr's OS page written since it was last write-protected (true
// also when the report fails: the collector then treats every page as written).
[[gnu::noinline]] bool OsPageWritten(std::uintptr_t addr) {
  namespace dirty = gofin::internal::dirty;
  static auto* out = new std::vector<dirty::Region>(std::size_t{1} << 16);
  long n = 0;
  {
    std::lock_guard lock(gofin::internal::g_heap.lock);
    n = dirty::ReadWritten(out->data(), out->size());
  }
  if (n < 0) return true;
  const std::uintptr_t page = addr & ~(kOsPage - 1);
  for (long r = 0; r < n; ++r) {
    const dirty::Region& reg = (*out)[static_cast<std::size_t>(r)];
    if (page >= reg.start && page < reg.end) return true;
  }
  return false;
}

// Every collection in this binary is explicit unless a test turns pacing on.
class GenerationsEnv : public ::testing::Environment {
 public:
  void SetUp() override { old_ = gofin::debug::SetGCPercent(-1); }
  void TearDown() override { gofin::debug::SetGCPercent(old_); }

 private:
  int old_ = 100;
};
[[maybe_unused]] ::testing::Environment* const g_env =
    ::testing::AddGlobalTestEnvironment(new GenerationsEnv);

// Tests that need minor cycles. Each starts from a quiet heap whose survivors are old (the
// marks of the last full cycle are sticky), and leaves the setting on.
class Gen : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!gofin::debug::GenerationalActive()) {
      GTEST_SKIP() << "minor collections are not in effect here (the kernel lacks userfaultfd "
                      "asynchronous write protection, or GOFIN_GENERATIONAL=0)";
    }
    ClobberStack();
    for (int i = 0; i < 2; ++i) {
      ExactGC();
      ASSERT_TRUE(Drain());
    }
  }
  void TearDown() override {
    if (IsSkipped()) return;
    gofin::debug::SetGenerational(true);
    ExactGC();
    EXPECT_TRUE(Drain());
  }
};

// Turns automatic collections on for a scope.
class Pacing {
 public:
  explicit Pacing(int percent) : old_(gofin::debug::SetGCPercent(percent)) {}
  ~Pacing() { gofin::debug::SetGCPercent(old_); }
  Pacing(const Pacing&) = delete;
  Pacing& operator=(const Pacing&) = delete;

 private:
  int old_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// 1. A pointer stored into an old object keeps a young object alive
// ---------------------------------------------------------------------------------------------

namespace {
std::atomic<int> g_store_dtors{0};
}  // namespace

TEST_F(Gen, YoungObjectStoredIntoOldObjectSurvivesMinorCycle) {
  Zero({&g_store_dtors});
  gofin::Root<Holder> old(NewHolder());
  ExactGC();  // old is promoted
  ASSERT_TRUE(ExactMinorGC()) << "no minor cycle right after a full one";
  EXPECT_FALSE(OsPageWritten(Addr(&old->slot[5])))
      << "the old object's page is not write-protected after a cycle: this test could pass "
         "without the write being tracked";

  StoreYoung(old.get(), 5, &g_store_dtors, 1000);
  EXPECT_TRUE(OsPageWritten(Addr(&old->slot[5]))) << "the store was not reported";
  ASSERT_TRUE(ExactMinorGC());
  EXPECT_EQ(Load(g_store_dtors), 0) << "the young object was freed by the minor cycle";
  EXPECT_TRUE(SlotOk(old.get(), 5, 1000)) << "the young object's contents changed";

  // Whatever memory a wrongly freed object had is reused and overwritten now.
  MakeYoungGarbage(&g_store_dtors, 5000);
  Churn(2 * kMiB);
  ASSERT_TRUE(ExactMinorGC());
  EXPECT_TRUE(SlotOk(old.get(), 5, 1000));
  EXPECT_EQ(Load(g_store_dtors), 5000) << "only the garbage may have been freed";

  // Overwriting the pointer with another young object: the first one is garbage now, and
  // young, so the next minor cycle frees it; the second survives.
  Zero({&g_store_dtors});
  ASSERT_TRUE(ExactMinorGC());
  StoreYoung(old.get(), 5, &g_store_dtors, 2000);  // the 1000 object is old by now
  StoreYoung(old.get(), 6, &g_store_dtors, 3000);
  StoreYoung(old.get(), 6, &g_store_dtors, 4000);  // 3000: young garbage
  ASSERT_TRUE(ExactMinorGC());
  EXPECT_EQ(Load(g_store_dtors), 1) << "the overwritten young object was not freed (or more were)";
  EXPECT_TRUE(SlotOk(old.get(), 5, 2000));
  EXPECT_TRUE(SlotOk(old.get(), 6, 4000));
  // The old object dropped in the first store (1000) is freed by a full cycle only.
  ExactGC();
  EXPECT_EQ(Load(g_store_dtors), 2);
  EXPECT_TRUE(SlotOk(old.get(), 5, 2000));
  EXPECT_TRUE(SlotOk(old.get(), 6, 4000));
}

TEST_F(Gen, YoungChainStoredIntoOldObjectSurvivesMinorCycle) {
  Zero({&g_store_dtors});
  // old -> young -> young -> young, and old -> old -> young (the written old object reachable
  // only through another old object).
  gofin::Root<Holder> old(NewHolder());
  old->slot[0] = reinterpret_cast<Young*>(NewHolder());  // an inner old object, as a Young*
  ExactGC();
  ASSERT_TRUE(ExactMinorGC());
  auto* inner = reinterpret_cast<Holder*>(old->slot[0]);
  EXPECT_FALSE(OsPageWritten(Addr(&old->slot[10])));
  EXPECT_FALSE(OsPageWritten(Addr(&inner->slot[20])));

  StoreYoung(old.get(), 10, &g_store_dtors, 100, 3);
  StoreYoung(inner, 20, &g_store_dtors, 200, 4);
  inner = nullptr;
  ASSERT_TRUE(ExactMinorGC());
  EXPECT_EQ(Load(g_store_dtors), 0);
  EXPECT_TRUE(SlotOk(old.get(), 10, 100, 3));
  EXPECT_TRUE(SlotOk(reinterpret_cast<Holder*>(old->slot[0]), 20, 200, 4));

  MakeYoungGarbage(&g_store_dtors, 5000);
  ASSERT_TRUE(ExactMinorGC());
  ASSERT_TRUE(ExactMinorGC());
  EXPECT_EQ(Load(g_store_dtors), 5000);
  EXPECT_TRUE(SlotOk(old.get(), 10, 100, 3));
  EXPECT_TRUE(SlotOk(reinterpret_cast<Holder*>(old->slot[0]), 20, 200, 4));
}

// ---------------------------------------------------------------------------------------------
// 2. The store is made by the kernel: read() from a pipe into the old object
// ---------------------------------------------------------------------------------------------

namespace {
std::atomic<int> g_kernel_dtors{0};

// The young chain's address goes into the pipe and nowhere else.
[[gnu::noinline]] bool SendYoung(int fd, std::uint64_t v, int n) {
  const std::uintptr_t addr = Addr(MakeChain(&g_kernel_dtors, v, n));
  return write(fd, &addr, sizeof(addr)) == static_cast<ssize_t>(sizeof(addr));
}

[[gnu::noinline]] ssize_t ReceiveInto(int fd, Holder* h, std::size_t i) {
  return read(fd, &h->slot[i], sizeof(h->slot[i]));
}
}  // namespace

TEST_F(Gen, YoungObjectStoredByTheKernelSurvivesMinorCycle) {
  Zero({&g_kernel_dtors});
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  gofin::Root<Holder> old(NewHolder());
  ExactGC();
  ASSERT_TRUE(ExactMinorGC());
  EXPECT_FALSE(OsPageWritten(Addr(&old->slot[30])));

  ASSERT_TRUE(SendYoung(fds[1], 700, 1));
  errno = 0;
  const ssize_t got = ReceiveInto(fds[0], old.get(), 30);
  const int err = errno;
  ASSERT_EQ(got, static_cast<ssize_t>(sizeof(void*)))
      << "read() into the old (write-protected) object failed: " << std::strerror(err);
  EXPECT_TRUE(OsPageWritten(Addr(&old->slot[30]))) << "the kernel's store was not reported";
  ASSERT_TRUE(ExactMinorGC());
  EXPECT_EQ(Load(g_kernel_dtors), 0) << "the young object stored by read() was freed";
  EXPECT_TRUE(SlotOk(old.get(), 30, 700));

  // Again, after the old object's page was protected anew by that cycle: a chain this time.
  EXPECT_FALSE(OsPageWritten(Addr(&old->slot[31])));
  ASSERT_TRUE(SendYoung(fds[1], 800, 3));
  errno = 0;
  const ssize_t got2 = ReceiveInto(fds[0], old.get(), 31);
  const int err2 = errno;
  ASSERT_EQ(got2, static_cast<ssize_t>(sizeof(void*))) << std::strerror(err2);
  ASSERT_TRUE(ExactMinorGC());
  EXPECT_EQ(Load(g_kernel_dtors), 0);
  EXPECT_TRUE(SlotOk(old.get(), 31, 800, 3));

  MakeYoungGarbage(&g_kernel_dtors, 5000);
  ASSERT_TRUE(ExactMinorGC());
  EXPECT_EQ(Load(g_kernel_dtors), 5000);
  EXPECT_TRUE(SlotOk(old.get(), 30, 700));
  EXPECT_TRUE(SlotOk(old.get(), 31, 800, 3));
  close(fds[0]);
  close(fds[1]);
}

// ---------------------------------------------------------------------------------------------
// 3. The store is made by another registered thread
// ---------------------------------------------------------------------------------------------

namespace {
std::atomic<int> g_thread_dtors{0};
}  // namespace

TEST_F(Gen, YoungObjectStoredByAnotherThreadSurvivesMinorCycle) {
  Zero({&g_thread_dtors});
  gofin::Root<Holder> old(NewHolder());
  ExactGC();
  ASSERT_TRUE(ExactMinorGC());
  EXPECT_FALSE(OsPageWritten(Addr(&old->slot[1])));

  // A thread that allocates the young object, stores it and exits.
  InThread([&old] {
    gofin::ThreadScope scope;
    StoreYoung(old.get(), 1, &g_thread_dtors, 10, 2);
  });
  ASSERT_TRUE(ExactMinorGC());
  EXPECT_EQ(Load(g_thread_dtors), 0);
  EXPECT_TRUE(SlotOk(old.get(), 1, 10, 2));

  // A thread that stores and is still alive (stopped and scanned) during the minor cycle; it
  // keeps no copy of the pointer on its stack or in its caller-saved registers.
  gofin_test::Event stored;
  gofin_test::Event release;
  std::thread t([&] {
    gofin::ThreadScope scope;
    StoreYoung(old.get(), 2, &g_thread_dtors, 20, 3);
    ClobberStack();
    stored.Set();
    release.WaitFor(120s);
  });
  ASSERT_TRUE(stored.WaitFor(120s));
  const bool minor = ExactMinorGC();
  release.Set();
  t.join();
  EXPECT_TRUE(minor);
  EXPECT_EQ(Load(g_thread_dtors), 0);
  EXPECT_TRUE(SlotOk(old.get(), 1, 10, 2));
  EXPECT_TRUE(SlotOk(old.get(), 2, 20, 3));

  MakeYoungGarbage(&g_thread_dtors, 5000);
  ASSERT_TRUE(ExactMinorGC());
  EXPECT_EQ(Load(g_thread_dtors), 5000);
  EXPECT_TRUE(SlotOk(old.get(), 1, 10, 2));
  EXPECT_TRUE(SlotOk(old.get(), 2, 20, 3));
}

// ---------------------------------------------------------------------------------------------
// Roots are scanned by every minor cycle
// ---------------------------------------------------------------------------------------------

namespace {
std::atomic<int> g_root_dtors{0};
Young* g_global_young = nullptr;

[[gnu::noinline]] void FillRoots(gofin::Root<Young>* root, Young** malloced) {
  *root = MakeChain(&g_root_dtors, 1, 2);
  g_global_young = MakeChain(&g_root_dtors, 10, 2);
  malloced[3] = MakeChain(&g_root_dtors, 20, 2);
}
}  // namespace

TEST_F(Gen, YoungObjectsInRootsGlobalsAndAddRootsRangesSurviveMinorCycle) {
  Zero({&g_root_dtors});
  gofin::Root<Young> root;  // made after the last full cycle, like its referent
  auto** malloced = static_cast<Young**>(std::calloc(8, sizeof(Young*)));
  ASSERT_NE(malloced, nullptr);
  gofin::AddRoots(malloced, malloced + 8);
  FillRoots(&root, malloced);
  ASSERT_TRUE(ExactMinorGC());
  ASSERT_TRUE(ExactMinorGC());
  EXPECT_EQ(Load(g_root_dtors), 0);
  EXPECT_TRUE(ChainOk(root.get(), 1, 2));
  EXPECT_TRUE(ChainOk(g_global_young, 10, 2));
  EXPECT_TRUE(ChainOk(malloced[3], 20, 2));
  gofin::RemoveRoots(malloced, malloced + 8);
  std::free(malloced);
  g_global_young = nullptr;
  root.reset();
  ExactGC();
  EXPECT_EQ(Load(g_root_dtors), 6);
}

// ---------------------------------------------------------------------------------------------
// 4. Minor cycles free young garbage; old garbage waits for a full cycle
// ---------------------------------------------------------------------------------------------

namespace {
std::atomic<int> g_old_dtors{0};
std::atomic<int> g_young_dtors{0};
}  // namespace

TEST_F(Gen, MinorCycleFreesUnreachableYoungObjectsButNotOldOnes) {
  Zero({&g_old_dtors, &g_young_dtors});
  constexpr int kOld = 300;
  constexpr int kYoung = 3000;
  gofin::Root<Young> root;
  InThread([&root] { root = MakeChain(&g_old_dtors, 0, kOld); });
  ExactGC();  // the chain is old
  root.reset();

  MakeYoungGarbage(&g_young_dtors, kYoung);
  const gofin::MemStats before = gofin::ReadMemStats();
  ASSERT_TRUE(ExactMinorGC());
  const gofin::MemStats after = gofin::ReadMemStats();
  EXPECT_EQ(Load(g_young_dtors), kYoung) << "a minor cycle did not free the young garbage";
  EXPECT_EQ(Load(g_old_dtors), 0) << "a minor cycle freed old objects";
  EXPECT_GE(
      static_cast<std::int64_t>(before.HeapObjects) - static_cast<std::int64_t>(after.HeapObjects),
      kYoung);

  for (int i = 0; i < 3; ++i) {
    MakeYoungGarbage(&g_young_dtors, 100);
    ASSERT_TRUE(ExactMinorGC());
  }
  EXPECT_EQ(Load(g_young_dtors), kYoung + 300);
  EXPECT_EQ(Load(g_old_dtors), 0) << "a minor cycle freed old objects";

  // The next full collection frees them (gofin::GC() scans this thread's stack, which never
  // held the chain's address).
  ClobberStack();
  gofin::GC();
  EXPECT_EQ(Load(g_old_dtors), kOld) << "gofin::GC() did not free the unreachable old objects";
}

// ---------------------------------------------------------------------------------------------
// 5. Finalizers of old objects: after a full cycle, and with automatic cycles only
// ---------------------------------------------------------------------------------------------

namespace {
std::atomic<int> g_fin_runs{0};
std::atomic<int> g_fin_bad{0};
std::atomic<int> g_fin_dtors{0};

[[gnu::noinline]] void MakeFinalized(gofin::Root<Young>* root, std::uint64_t v) {
  auto* o = gofin::New<Young>(&g_fin_dtors, v);
  gofin::SetFinalizer(o, [](Young* p) {
    if (!p->Ok(p->value) || (p->value != 51 && p->value != 52)) g_fin_bad.fetch_add(1);
    g_fin_runs.fetch_add(1);
  });
  *root = o;
}
}  // namespace

TEST_F(Gen, FinalizerOfUnreachableOldObjectRunsAfterAFullCycle) {
  Zero({&g_fin_runs, &g_fin_bad, &g_fin_dtors});
  gofin::Root<Young> root;
  InThread([&root] { MakeFinalized(&root, 51); });
  ExactGC();  // old
  ASSERT_TRUE(ExactMinorGC());
  root.reset();
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(ExactMinorGC());
    ASSERT_TRUE(Drain());
  }
  EXPECT_EQ(Load(g_fin_runs), 0) << "a minor cycle queued an old object's finalizer";
  ClobberStack();
  gofin::GC();
  ASSERT_TRUE(Drain());
  EXPECT_EQ(Load(g_fin_runs), 1) << "gofin::GC() did not queue the old object's finalizer";
  EXPECT_EQ(Load(g_fin_bad), 0);
  EXPECT_EQ(Load(g_fin_dtors), 0) << "freed in the cycle that queued its finalizer";
  ExactGC();
  EXPECT_EQ(Load(g_fin_dtors), 1) << "not freed by the full cycle after its finalizer ran";
}

namespace {
// Small scanned garbage, some of it linked, in a helper that returns nothing.
[[gnu::noinline]] void AllocateGarbage(std::size_t bytes) {
  void* prev = nullptr;
  for (std::size_t done = 0; done < bytes; done += 128) {
    void** p = static_cast<void**>(gofin::Alloc(120));
    p[0] = prev;
    p[1] = reinterpret_cast<void*>(done);
    prev = (done & 1023) == 0 ? nullptr : p;
  }
}
}  // namespace

TEST_F(Gen, FinalizerOfUnreachableOldObjectRunsWithOnlyAutomaticCycles) {
  Watchdog wd("FinalizerOfUnreachableOldObjectRunsWithOnlyAutomaticCycles");
  Zero({&g_fin_runs, &g_fin_bad, &g_fin_dtors});
  gofin::Root<Young> root;
  InThread([&root] { MakeFinalized(&root, 52); });
  ExactGC();
  ASSERT_TRUE(ExactMinorGC());
  root.reset();
  ASSERT_TRUE(Drain());
  ASSERT_EQ(Load(g_fin_runs), 0);

  const gofin::MemStats base = gofin::ReadMemStats();
  std::uint64_t allocated = 0;
  {
    Pacing pacing(100);
    // A major cycle comes at least every 17 automatic cycles, each after a few MiB here: far
    // less than the bound.
    constexpr std::uint64_t kLimit = 512 * kMiB;
    while (Load(g_fin_runs) == 0 && allocated < kLimit) {
      AllocateGarbage(kMiB);
      allocated += kMiB;
    }
  }
  ASSERT_TRUE(Drain());
  const gofin::MemStats m = gofin::ReadMemStats();
  EXPECT_EQ(Load(g_fin_runs), 1) << "the finalizer did not run after " << allocated / kMiB
                                 << " MiB of garbage and " << m.NumGC - base.NumGC << " cycles, "
                                 << m.NumMinorGC - base.NumMinorGC << " minor";
  EXPECT_EQ(Load(g_fin_bad), 0);
  EXPECT_GT(m.NumMinorGC, base.NumMinorGC) << "no automatic cycle was minor";
  EXPECT_GT(m.NumGC - m.NumMinorGC, base.NumGC - base.NumMinorGC) << "no full cycle ran";
}

// Under a binding memory limit every automatic cycle is full: the limit needs the memory of
// dead old objects back, and only a full cycle frees it.
TEST_F(Gen, AutomaticCyclesAreFullWhileAMemoryLimitBinds) {
  Watchdog wd("AutomaticCyclesAreFullWhileAMemoryLimitBinds");
  const gofin::MemStats base = gofin::ReadMemStats();
  {
    Pacing pacing(100);
    const std::int64_t old_limit = gofin::debug::SetMemoryLimit(std::int64_t{1} << 20);
    AllocateGarbage(32 * kMiB);
    gofin::debug::SetMemoryLimit(old_limit);
  }
  const gofin::MemStats m = gofin::ReadMemStats();
  EXPECT_GT(m.NumGC, base.NumGC + 2) << "the limit started no collections";
  EXPECT_EQ(m.NumMinorGC, base.NumMinorGC) << "a minor cycle ran under a binding memory limit";
  // And without the limit, the same churn gets minor cycles again.
  {
    Pacing pacing(100);
    AllocateGarbage(32 * kMiB);
  }
  EXPECT_GT(gofin::ReadMemStats().NumMinorGC, m.NumMinorGC);
}

namespace {
std::atomic<int> g_young_fin_runs{0};
std::atomic<int> g_young_fin_bad{0};
std::atomic<int> g_young_fin_dtors{0};
}  // namespace

TEST_F(Gen, UnreachableYoungObjectIsFinalizedByAMinorCycle) {
  Zero({&g_young_fin_runs, &g_young_fin_bad, &g_young_fin_dtors});
  InThread([] {
    auto* o = gofin::New<Young>(&g_young_fin_dtors, 61);
    o->next = MakeChain(&g_young_fin_dtors, 62, 2);  // kept alive for the finalizer
    gofin::SetFinalizer(o, [](Young* p) {
      if (!p->Ok(61) || !ChainOk(p->next, 62, 2, /*check_live=*/false)) {
        g_young_fin_bad.fetch_add(1);
      }
      g_young_fin_runs.fetch_add(1);
    });
  });
  ASSERT_TRUE(ExactMinorGC());
  ASSERT_TRUE(Drain());
  EXPECT_EQ(Load(g_young_fin_runs), 1) << "a minor cycle did not queue a young object's finalizer";
  EXPECT_EQ(Load(g_young_fin_bad), 0);
  EXPECT_EQ(Load(g_young_fin_dtors), 0);
  ExactGC();
  EXPECT_EQ(Load(g_young_fin_dtors), 3) << "not freed by the full cycle after its finalizer ran";
  EXPECT_EQ(Load(g_young_fin_runs), 1);
}

// A finalizer set on an old object: its closure (a young GC object) and the young object it
// captures are reachable only through the old object's finalizer record.
namespace {
std::atomic<int> g_box_runs{0};
std::atomic<int> g_box_bad{0};
std::atomic<int> g_box_dtors{0};

[[gnu::noinline]] void SetCapturingFinalizer(Young* o) {
  Young* captured = MakeChain(&g_box_dtors, 90, 2);
  const std::uint64_t a = Mix(1);
  const std::uint64_t b = Mix(2);
  const std::uint64_t c = Mix(3);
  gofin::SetFinalizer(o, [captured, a, b, c](Young* p) {
    if (!p->Ok(80) || !ChainOk(captured, 90, 2, /*check_live=*/false) || a != Mix(1) ||
        b != Mix(2) || c != Mix(3)) {
      g_box_bad.fetch_add(1);
    }
    g_box_runs.fetch_add(1);
  });
}
}  // namespace

TEST_F(Gen, FinalizerClosureSetOnOldObjectSurvivesMinorCycles) {
  Zero({&g_box_runs, &g_box_bad, &g_box_dtors});
  gofin::Root<Young> root;
  InThread([&root] { root = gofin::New<Young>(&g_box_dtors, 80); });
  ExactGC();
  ASSERT_TRUE(ExactMinorGC());
  InThread([&root] { SetCapturingFinalizer(root.get()); });
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(ExactMinorGC());
    MakeYoungGarbage(&g_box_dtors, 2000);
    Churn(kMiB);
  }
  ASSERT_TRUE(ExactMinorGC());
  EXPECT_EQ(Load(g_box_dtors), 3 * 2000) << "the captured young objects were freed";
  root.reset();
  ExactGC();
  ASSERT_TRUE(Drain());
  EXPECT_EQ(Load(g_box_runs), 1);
  EXPECT_EQ(Load(g_box_bad), 0) << "the finalizer's closure or what it captured was damaged";
}

// ---------------------------------------------------------------------------------------------
// 6. MemStats
// ---------------------------------------------------------------------------------------------

TEST_F(Gen, MemStatsCountMinorCycles) {
  const gofin::MemStats m0 = gofin::ReadMemStats();
  ASSERT_TRUE(ExactMinorGC());
  const gofin::MemStats m1 = gofin::ReadMemStats();
  EXPECT_EQ(m1.NumMinorGC, m0.NumMinorGC + 1);
  EXPECT_EQ(m1.NumGC, m0.NumGC + 1) << "NumGC does not count minor cycles";

  gofin::GC();
  const gofin::MemStats m2 = gofin::ReadMemStats();
  EXPECT_EQ(m2.NumMinorGC, m1.NumMinorGC) << "gofin::GC() was a minor cycle";
  EXPECT_EQ(m2.NumGC, m1.NumGC + 1);

  ExactGC();
  const gofin::MemStats m3 = gofin::ReadMemStats();
  EXPECT_EQ(m3.NumMinorGC, m2.NumMinorGC) << "testing::GC() was a minor cycle";
  EXPECT_EQ(m3.NumGC, m2.NumGC + 1);

  int minors = 0;
  for (int i = 0; i < 5; ++i) minors += ExactMinorGC() ? 1 : 0;
  EXPECT_EQ(minors, 5);
  const gofin::MemStats m4 = gofin::ReadMemStats();
  EXPECT_EQ(m4.NumMinorGC, m3.NumMinorGC + 5);
  EXPECT_EQ(m4.NumGC, m3.NumGC + 5);
  EXPECT_LE(m4.NumMinorGC, m4.NumGC);

  for (int i = 0; i < 3; ++i) gofin::GC();
  const gofin::MemStats m5 = gofin::ReadMemStats();
  EXPECT_EQ(m5.NumMinorGC, m4.NumMinorGC);
  EXPECT_EQ(m5.NumGC, m4.NumGC + 3);
}

// ---------------------------------------------------------------------------------------------
// 7. debug::SetGenerational
// ---------------------------------------------------------------------------------------------

namespace {
std::atomic<int> g_setting_dtors{0};
}  // namespace

TEST_F(Gen, SetGenerationalFalseMakesMinorGCAFullCycleAndTrueRestoresIt) {
  Zero({&g_setting_dtors});
  ASSERT_TRUE(ExactMinorGC());
  // An old object, unreachable once the setting is off.
  gofin::Root<Young> root;
  InThread([&root] { root = MakeChain(&g_setting_dtors, 5, 10); });
  ExactGC();
  ASSERT_TRUE(ExactMinorGC());
  root.reset();

  EXPECT_TRUE(gofin::debug::SetGenerational(false)) << "did not return the previous setting";
  EXPECT_FALSE(gofin::debug::GenerationalActive());
  EXPECT_FALSE(gofin::debug::SetGenerational(false)) << "did not return the previous setting";
  const gofin::MemStats m0 = gofin::ReadMemStats();
  EXPECT_FALSE(ExactMinorGC()) << "a minor cycle with the setting off";
  EXPECT_EQ(Load(g_setting_dtors), 10) << "MinorGC with the setting off was not a full cycle";
  EXPECT_FALSE(ExactMinorGC());
  const gofin::MemStats m1 = gofin::ReadMemStats();
  EXPECT_EQ(m1.NumMinorGC, m0.NumMinorGC);
  EXPECT_EQ(m1.NumGC, m0.NumGC + 2);

  EXPECT_FALSE(gofin::debug::SetGenerational(true)) << "did not return the previous setting";
  EXPECT_TRUE(gofin::debug::GenerationalActive());
  EXPECT_TRUE(gofin::debug::SetGenerational(true));
  // The previous cycle left no marks: the first MinorGC may have to be full; the next is minor.
  const bool first = ExactMinorGC();
  const bool second = ExactMinorGC();
  EXPECT_TRUE(second) << "no minor cycle after the setting was turned back on (first: " << first
                      << ")";
  ExactGC();
  EXPECT_TRUE(ExactMinorGC());
  const gofin::MemStats m2 = gofin::ReadMemStats();
  EXPECT_EQ(m2.NumMinorGC, m1.NumMinorGC + (first ? 1 : 0) + (second ? 1 : 0) + 1);
}

// Runs everywhere, with or without the kernel's page tracking.
namespace {
std::atomic<int> g_off_dtors{0};
}  // namespace

TEST(Generational, MinorGCIsAFullCycleWhileTheSettingIsOff) {
  Zero({&g_off_dtors});
  const bool previous = gofin::debug::SetGenerational(false);
  EXPECT_FALSE(gofin::debug::GenerationalActive());
  gofin::Root<Young> root;
  InThread([&root] { root = MakeChain(&g_off_dtors, 7, 5); });
  ExactGC();
  root.reset();
  const gofin::MemStats m0 = gofin::ReadMemStats();
  EXPECT_FALSE(ExactMinorGC());
  const gofin::MemStats m1 = gofin::ReadMemStats();
  EXPECT_EQ(Load(g_off_dtors), 5);
  EXPECT_EQ(m1.NumMinorGC, m0.NumMinorGC);
  EXPECT_EQ(m1.NumGC, m0.NumGC + 1);
  EXPECT_FALSE(gofin::debug::SetGenerational(previous));
  ExactGC();
}

// After fork() the child's heap mappings are no longer registered with the parent's
// userfaultfd: the child's collections must all be full, and still work.
#if defined(__SANITIZE_THREAD__)
constexpr bool kForkUnderTsan = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
constexpr bool kForkUnderTsan = true;
#else
constexpr bool kForkUnderTsan = false;
#endif
#else
constexpr bool kForkUnderTsan = false;
#endif

namespace {
std::atomic<int> g_fork_dtors{0};
}  // namespace

TEST_F(Gen, ForkedChildCollectsWithFullCyclesOnly) {
  if (kForkUnderTsan) GTEST_SKIP() << "ThreadSanitizer: fork() of a multi-threaded process";
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int code = 0;
    if (gofin::debug::GenerationalActive()) code |= 1;
    gofin::Root<Young> root;
    std::thread([&root] { root = MakeChain(&g_fork_dtors, 11, 50); }).join();
    if (gofin::testing::MinorGC(gofin::testing::StackState::kNoHeapPointers)) code |= 2;
    root.reset();
    if (gofin::testing::MinorGC(gofin::testing::StackState::kNoHeapPointers)) code |= 4;
    if (g_fork_dtors.load() != 50) code |= 8;  // the full cycle freed the dropped chain
    _exit(code);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "1: tracking on in the child, 2/4: a minor cycle ran, "
                                       "8: the dropped chain was not freed";
  // The parent's own tracking is untouched.
  EXPECT_TRUE(gofin::debug::GenerationalActive());
  EXPECT_TRUE(ExactMinorGC());
}

// Turned on at run time (the process started with GOFIN_GENERATIONAL=0, or a test turned it
// off): tracking starts over a heap whose pages were written untracked. Where the setting is
// on already this is the plain case again.
namespace {
std::atomic<int> g_runtime_dtors{0};
}  // namespace

TEST(Generational, TurnedOnAtRunTimeMinorCyclesKeepYoungObjectsStoredIntoOldOnes) {
  Zero({&g_runtime_dtors});
  const bool previous = gofin::debug::SetGenerational(true);
  if (!gofin::debug::GenerationalActive()) {
    gofin::debug::SetGenerational(previous);
    GTEST_SKIP() << "the kernel does not track written pages for gofin here";
  }
  {
    gofin::Root<Holder> old(NewHolder());
    ExactGC();
    ExactGC();
    ASSERT_TRUE(ExactMinorGC());
    EXPECT_FALSE(OsPageWritten(Addr(&old->slot[3])));
    StoreYoung(old.get(), 3, &g_runtime_dtors, 42, 3);
    ASSERT_TRUE(ExactMinorGC());
    EXPECT_EQ(Load(g_runtime_dtors), 0);
    EXPECT_TRUE(SlotOk(old.get(), 3, 42, 3));
  }
  gofin::debug::SetGenerational(previous);
  ExactGC();
}

// ---------------------------------------------------------------------------------------------
// 9. Large objects; small objects across OS pages
// ---------------------------------------------------------------------------------------------

namespace {
std::atomic<int> g_big_dtors{0};

constexpr std::size_t kBigSlots = 8192;  // 64 KiB: a large object (16 OS pages)
constexpr std::size_t kSlotsPerOsPage = kOsPage / sizeof(void*);
struct Big {
  Young* slot[kBigSlots];
};

// Every page written, so that the promoting cycle write-protects them all.
[[gnu::noinline]] Big* NewBig() {
  auto* b = gofin::New<Big>();
  for (std::size_t i = 0; i < kBigSlots; i += kSlotsPerOsPage) {
    *static_cast<Young* volatile*>(&b->slot[i]) = nullptr;
  }
  return b;
}

[[gnu::noinline]] void StoreYoungInBig(Big* b, std::size_t i, std::uint64_t v, int n) {
  b->slot[i] = MakeChain(&g_big_dtors, v, n);
}

[[gnu::noinline]] bool BigSlotOk(const Big* b, std::size_t i, std::uint64_t v, int n) {
  return ChainOk(b->slot[i], v, n);
}

// A young large object holding a young chain, stored into an old large object.
[[gnu::noinline]] void StoreYoungBigInBig(Big* b, std::size_t i, std::uint64_t v) {
  Big* young = NewBig();
  young->slot[kBigSlots - 1] = MakeChain(&g_big_dtors, v, 2);
  b->slot[i] = reinterpret_cast<Young*>(young);
}

[[gnu::noinline]] bool YoungBigOk(const Big* b, std::size_t i, std::uint64_t v) {
  const auto* young = reinterpret_cast<const Big*>(b->slot[i]);
  return Live(young) && ChainOk(young->slot[kBigSlots - 1], v, 2);
}
}  // namespace

TEST_F(Gen, LargeOldObjectKeepsYoungObjectStoredInItsLastPageAlive) {
  Zero({&g_big_dtors});
  gofin::Root<Big> big(NewBig());
  ExactGC();
  ASSERT_TRUE(ExactMinorGC());
  const std::uintptr_t first = Addr(&big->slot[0]);
  const std::uintptr_t last = Addr(&big->slot[kBigSlots - 1]);
  EXPECT_FALSE(OsPageWritten(first));
  EXPECT_FALSE(OsPageWritten(last));

  StoreYoungInBig(big.get(), kBigSlots - 1, 300, 2);
  EXPECT_TRUE(OsPageWritten(last));
  EXPECT_FALSE(OsPageWritten(first)) << "a store into the last page dirtied the first";
  ASSERT_TRUE(ExactMinorGC());
  EXPECT_EQ(Load(g_big_dtors), 0);
  EXPECT_TRUE(BigSlotOk(big.get(), kBigSlots - 1, 300, 2));

  // One young chain per OS page, each at a different offset in its page.
  for (std::size_t p = 0; p < kBigSlots / kSlotsPerOsPage; ++p) {
    StoreYoungInBig(big.get(), p * kSlotsPerOsPage + (p * 37) % kSlotsPerOsPage, 1000 + p * 10, 2);
  }
  ASSERT_TRUE(ExactMinorGC());
  EXPECT_EQ(Load(g_big_dtors), 0);
  for (std::size_t p = 0; p < kBigSlots / kSlotsPerOsPage; ++p) {
    EXPECT_TRUE(
        BigSlotOk(big.get(), p * kSlotsPerOsPage + (p * 37) % kSlotsPerOsPage, 1000 + p * 10, 2))
        << "page " << p;
  }

  // A young large object (itself holding a young chain in its last page) in the old one's
  // middle.
  StoreYoungBigInBig(big.get(), kBigSlots / 2 + 1, 5000);
  ASSERT_TRUE(ExactMinorGC());
  EXPECT_EQ(Load(g_big_dtors), 0);
  EXPECT_TRUE(YoungBigOk(big.get(), kBigSlots / 2 + 1, 5000));

  MakeYoungGarbage(&g_big_dtors, 5000);
  ASSERT_TRUE(ExactMinorGC());
  EXPECT_EQ(Load(g_big_dtors), 5000);
  EXPECT_TRUE(BigSlotOk(big.get(), kBigSlots - 1, 300, 2));
  EXPECT_TRUE(YoungBigOk(big.get(), kBigSlots / 2 + 1, 5000));
}

// An old object in heap memory reserved after tracking began (the page heap reserves 64 MiB
// arenas; a 72 MiB object needs a new reservation, which must be registered at once).
namespace {
std::atomic<int> g_huge_dtors{0};
constexpr std::size_t kHugeSlots = (std::size_t{72} << 20) / sizeof(void*);

[[gnu::noinline]] Young** NewHuge() { return gofin::NewArray<Young*>(kHugeSlots); }

[[gnu::noinline]] void StoreYoungInHuge(Young** h, std::size_t i, std::uint64_t v) {
  h[i] = MakeChain(&g_huge_dtors, v, 2);
}

[[gnu::noinline]] bool HugeSlotOk(Young* const* h, std::size_t i, std::uint64_t v) {
  return ChainOk(h[i], v, 2);
}
}  // namespace

TEST_F(Gen, HugeOldObjectInANewHeapReservationKeepsYoungObjectsAlive) {
  Zero({&g_huge_dtors});
  gofin::Root<Young*> huge(NewHuge());
  ExactGC();
  ASSERT_TRUE(ExactMinorGC());
  const std::size_t where[] = {kHugeSlots - 1, kHugeSlots / 2, 0};
  for (std::size_t i : where) EXPECT_FALSE(OsPageWritten(Addr(&huge.get()[i]))) << i;
  for (std::size_t i : where) StoreYoungInHuge(huge.get(), i, 7000 + i);
  for (std::size_t i : where) EXPECT_TRUE(OsPageWritten(Addr(&huge.get()[i]))) << i;
  ASSERT_TRUE(ExactMinorGC());
  EXPECT_EQ(Load(g_huge_dtors), 0);
  for (std::size_t i : where) EXPECT_TRUE(HugeSlotOk(huge.get(), i, 7000 + i)) << i;
  MakeYoungGarbage(&g_huge_dtors, 5000);
  ASSERT_TRUE(ExactMinorGC());
  EXPECT_EQ(Load(g_huge_dtors), 5000);
  for (std::size_t i : where) EXPECT_TRUE(HugeSlotOk(huge.get(), i, 7000 + i)) << i;
  huge.reset();
}

namespace {
std::atomic<int> g_wide_dtors{0};

// 6144 bytes (a size class of its own here, 4 per 24 KiB span): every one covers two or three
// OS pages, and its last word is on a later OS page than its start.
constexpr std::size_t kWideSlots = 768;
struct Wide {
  Young* slot[kWideSlots];
};
static_assert(sizeof(Wide) == 6144);

[[gnu::noinline]] Wide* NewWide() {
  auto* w = gofin::New<Wide>();
  for (std::size_t i = 0; i < kWideSlots; i += 64) {
    *static_cast<Young* volatile*>(&w->slot[i]) = nullptr;
  }
  return w;
}

[[gnu::noinline]] void StoreYoungInWide(Wide* w, std::size_t i, std::uint64_t v) {
  w->slot[i] = MakeChain(&g_wide_dtors, v, 2);
}

[[gnu::noinline]] bool WideSlotOk(const Wide* w, std::size_t i, std::uint64_t v) {
  return ChainOk(w->slot[i], v, 2);
}
}  // namespace

TEST_F(Gen, SmallOldObjectKeepsYoungObjectStoredOnALaterOsPageThanItsStart) {
  Zero({&g_wide_dtors});
  constexpr int kN = 8;
  std::vector<gofin::Root<Wide>> wides;
  for (int i = 0; i < kN; ++i) wides.emplace_back(NewWide());
  ExactGC();
  ASSERT_TRUE(ExactMinorGC());
  for (int i = 0; i < kN; ++i) {
    const std::uintptr_t start = Addr(wides[i].get());
    const std::uintptr_t end = Addr(&wides[i]->slot[kWideSlots - 1]);
    ASSERT_NE(start / kOsPage, end / kOsPage);
    EXPECT_FALSE(OsPageWritten(end)) << i;
  }
  for (int i = 0; i < kN; ++i) {
    StoreYoungInWide(wides[i].get(), kWideSlots - 1, 100 * static_cast<std::uint64_t>(i));
  }
  ASSERT_TRUE(ExactMinorGC());
  EXPECT_EQ(Load(g_wide_dtors), 0);
  for (int i = 0; i < kN; ++i) {
    EXPECT_TRUE(WideSlotOk(wides[i].get(), kWideSlots - 1, 100 * static_cast<std::uint64_t>(i)))
        << i;
  }
  MakeYoungGarbage(&g_wide_dtors, 5000);
  ASSERT_TRUE(ExactMinorGC());
  EXPECT_EQ(Load(g_wide_dtors), 5000);
  for (int i = 0; i < kN; ++i) {
    EXPECT_TRUE(WideSlotOk(wides[i].get(), kWideSlots - 1, 100 * static_cast<std::uint64_t>(i)))
        << i;
  }
}

// ---------------------------------------------------------------------------------------------
// 8. Stress: old nodes relinked to fresh young ones while minor and full cycles alternate
// ---------------------------------------------------------------------------------------------

namespace stress {

struct Node {
  explicit Node(std::uint64_t v) : value(v), check(Mix(v)) {}
  ~Node() {
    check = kDead;
    asm volatile("" : : "r"(this) : "memory");
  }
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;
  Node* next = nullptr;
  std::uint64_t value;
  std::uint64_t check;
};

constexpr std::size_t kSlots = 128;
constexpr std::size_t kMaxLen = 40;

struct Worker {
  int id;
  std::mt19937_64 rng;
  std::uint64_t next_value;
  Node** slots;  // a scanned GC array, held on the worker's stack (via this object)
  std::vector<std::vector<std::uint64_t>> model;
  int failures = 0;

  explicit Worker(int i)
      : id(i),
        rng(static_cast<std::uint64_t>(i) * 7919 + 17),
        next_value(static_cast<std::uint64_t>(i + 1) << 40),
        slots(gofin::NewArray<Node*>(kSlots)),
        model(kSlots) {}

  Node* Build(std::size_t n, std::vector<std::uint64_t>& vals) {
    Node* head = nullptr;
    Node** tail = &head;
    for (std::size_t k = 0; k < n; ++k) {
      const std::uint64_t v = next_value++;
      *tail = gofin::New<Node>(v);
      tail = &(*tail)->next;
      vals.push_back(v);
    }
    return head;
  }

  // The list in slot s against the model; a broken list is dropped (counted as a failure).
  bool Verify(std::size_t s) {
    const Node* n = slots[s];
    for (std::uint64_t v : model[s]) {
      if (n == nullptr || n->value != v || n->check != Mix(v)) {
        ++failures;
        slots[s] = nullptr;
        model[s].clear();
        return false;
      }
      n = n->next;
    }
    if (n != nullptr) {
      ++failures;
      slots[s] = nullptr;
      model[s].clear();
      return false;
    }
    return true;
  }

  // The node at position p of slot s (p < length), checked on the way.
  Node* At(std::size_t s, std::size_t p) {
    Node* n = slots[s];
    for (std::size_t k = 0; k < p && n != nullptr; ++k) n = n->next;
    return n;
  }

  void Step() {
    const std::size_t s = rng() % kSlots;
    std::vector<std::uint64_t>& m = model[s];
    const unsigned op = static_cast<unsigned>(rng() % 8);
    if (m.empty() || op <= 1) {  // a fresh list
      m.clear();
      slots[s] = Build(1 + rng() % 8, m);
    } else if (op <= 3) {  // an (often old) node's tail replaced by a fresh young list
      const std::size_t p = rng() % m.size();
      Node* at = At(s, p);
      if (at == nullptr) {
        Verify(s);
        return;
      }
      m.resize(p + 1);
      at->next = Build(1 + rng() % 4, m);
    } else if (op <= 5) {  // a young node inserted after an (often old) node
      const std::size_t p = rng() % m.size();
      Node* at = At(s, p);
      if (at == nullptr) {
        Verify(s);
        return;
      }
      const std::uint64_t v = next_value++;
      Node* fresh = gofin::New<Node>(v);
      fresh->next = at->next;
      at->next = fresh;
      m.insert(m.begin() + static_cast<std::ptrdiff_t>(p + 1), v);
    } else if (op == 6) {  // the head dropped
      if (slots[s] == nullptr) {
        Verify(s);
        return;
      }
      slots[s] = slots[s]->next;
      m.erase(m.begin());
    } else {
      Verify(s);
    }
    if (m.size() > kMaxLen) {
      slots[s] = nullptr;
      m.clear();
    }
  }

  void Run(int iterations) {
    for (int it = 0; it < iterations; ++it) {
      Step();
      if (it % 1024 == 1023) {
        for (std::size_t s = 0; s < kSlots; ++s) Verify(s);
      }
      // This thread collects too now and then (its own stack scanned).
      if (id == 1 && it % 4096 == 4095) {
        (void)gofin::testing::MinorGC(StackState::kMayContainHeapPointers);
      }
    }
    for (std::size_t s = 0; s < kSlots; ++s) Verify(s);
  }
};

std::atomic<int> g_failures{0};
std::atomic<int> g_done{0};

void RunWorker(int id, int iterations) {
  gofin::ThreadScope scope;
  Worker w(id);
  w.Run(iterations);
  g_failures.fetch_add(w.failures);
  g_done.fetch_add(1);
}

}  // namespace stress

TEST_F(Gen, StressThreadsRelinkOldNodesToYoungOnesWhileMinorAndFullCyclesAlternate) {
  Watchdog wd("StressThreadsRelinkOldNodesToYoungOnesWhileMinorAndFullCyclesAlternate");
  stress::g_failures = 0;
  stress::g_done = 0;
  const int iterations = kSanitized ? 20000 : 40000;
  std::thread a(stress::RunWorker, 0, iterations);
  std::thread b(stress::RunWorker, 1, iterations);
  int cycles = 0;
  int minors = 0;
  while (stress::g_done.load() < 2) {
    if (cycles % 4 == 3) {
      gofin::GC();
    } else {
      minors += ExactMinorGC() ? 1 : 0;
    }
    ++cycles;
  }
  a.join();
  b.join();
  EXPECT_EQ(stress::g_failures.load(), 0)
      << "lists damaged after " << cycles << " cycles (" << minors << " minor)";
  EXPECT_GT(minors, 0);
}

// ---------------------------------------------------------------------------------------------
// 10. Writes the tracking cannot see: io_uring fixed buffers (gofin::AddUntrackedWrites)
// ---------------------------------------------------------------------------------------------

namespace uring {

// A minimal io_uring over raw system calls (no liburing): one fixed buffer, one READ_FIXED.
class Ring {
 public:
  Ring() {
    io_uring_params p{};
    fd_ = static_cast<int>(syscall(__NR_io_uring_setup, 4, &p));
    if (fd_ < 0) return;
    sq_len_ = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    cq_len_ = p.cq_off.cqes + p.cq_entries * sizeof(io_uring_cqe);
    sqes_len_ = p.sq_entries * sizeof(io_uring_sqe);
    sq_ = Map(sq_len_, IORING_OFF_SQ_RING);
    cq_ = Map(cq_len_, IORING_OFF_CQ_RING);
    sqes_ = static_cast<io_uring_sqe*>(Map(sqes_len_, IORING_OFF_SQES));
    if (sq_ == nullptr || cq_ == nullptr || sqes_ == nullptr) return;
    sq_tail_ = At<unsigned>(sq_, p.sq_off.tail);
    sq_mask_ = *At<unsigned>(sq_, p.sq_off.ring_mask);
    sq_array_ = At<unsigned>(sq_, p.sq_off.array);
    cq_head_ = At<unsigned>(cq_, p.cq_off.head);
    cq_mask_ = *At<unsigned>(cq_, p.cq_off.ring_mask);
    cqes_ = At<io_uring_cqe>(cq_, p.cq_off.cqes);
    ok_ = true;
  }
  ~Ring() {
    if (sq_ != nullptr) munmap(sq_, sq_len_);
    if (cq_ != nullptr) munmap(cq_, cq_len_);
    if (sqes_ != nullptr) munmap(sqes_, sqes_len_);
    if (fd_ >= 0) close(fd_);
  }
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;

  [[nodiscard]] bool Ok() const { return ok_; }
  // IORING_REGISTER_BUFFERS: the kernel pins buf's pages for direct access.
  bool RegisterBuffer(void* buf, std::size_t len) {
    iovec iov{buf, len};
    return syscall(__NR_io_uring_register, fd_, IORING_REGISTER_BUFFERS, &iov, 1) == 0;
  }
  bool UnregisterBuffers() {
    return syscall(__NR_io_uring_register, fd_, IORING_UNREGISTER_BUFFERS, nullptr, 0) == 0;
  }
  // IORING_OP_READ_FIXED of len bytes at offset 0 of fd into dst (inside buffer 0); waits.
  long ReadFixed(int fd, void* dst, unsigned len) {
    const unsigned tail = *sq_tail_;
    io_uring_sqe* sqe = &sqes_[tail & sq_mask_];
    std::memset(sqe, 0, sizeof(*sqe));
    sqe->opcode = IORING_OP_READ_FIXED;
    sqe->fd = fd;
    sqe->addr = reinterpret_cast<std::uint64_t>(dst);
    sqe->len = len;
    sqe->off = 0;
    sqe->buf_index = 0;
    sq_array_[tail & sq_mask_] = tail & sq_mask_;
    __atomic_store_n(sq_tail_, tail + 1, __ATOMIC_RELEASE);
    if (syscall(__NR_io_uring_enter, fd_, 1, 1, IORING_ENTER_GETEVENTS, nullptr, 0) < 0) {
      return -errno;
    }
    const unsigned head = __atomic_load_n(cq_head_, __ATOMIC_ACQUIRE);
    const long res = cqes_[head & cq_mask_].res;
    __atomic_store_n(cq_head_, head + 1, __ATOMIC_RELEASE);
    return res;
  }

 private:
  void* Map(std::size_t len, off_t what) const {
    void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd_, what);
    return p == MAP_FAILED ? nullptr : p;
  }
  template <class T>
  static T* At(void* base, std::uint32_t off) {
    return reinterpret_cast<T*>(static_cast<char*>(base) + off);
  }

  int fd_ = -1;
  bool ok_ = false;
  void* sq_ = nullptr;
  void* cq_ = nullptr;
  io_uring_sqe* sqes_ = nullptr;
  std::size_t sq_len_ = 0, cq_len_ = 0, sqes_len_ = 0;
  unsigned* sq_tail_ = nullptr;
  unsigned sq_mask_ = 0;
  unsigned* sq_array_ = nullptr;
  unsigned* cq_head_ = nullptr;
  unsigned cq_mask_ = 0;
  io_uring_cqe* cqes_ = nullptr;
};

// Writes a fresh young object's address into the file, and nowhere the collector scans.
[[gnu::noinline]] bool WriteYoungToFile(int fd, std::atomic<int>* d, std::uint64_t v) {
  Young* y = gofin::New<Young>(d, v);
  const std::uintptr_t bits = Addr(y);
  return pwrite(fd, &bits, sizeof(bits), 0) == static_cast<ssize_t>(sizeof(bits));
}

std::atomic<int> g_dtors{0};

}  // namespace uring

// A young object's only pointer read by IORING_OP_READ_FIXED into an old object: the kernel
// writes through the pages it pinned, which the written-page tracking never sees. Declared
// with gofin::UntrackedWrites, the old object's pages are rescanned by every minor cycle.
TEST_F(Gen, YoungObjectReadByIoUringFixedBufferIntoDeclaredOldObjectSurvives) {
  uring::Ring ring;
  if (!ring.Ok()) GTEST_SKIP() << "io_uring is not available here";
  Zero({&uring::g_dtors});
  gofin::Root<Holder> old(NewHolder());
  ExactGC();  // old is promoted
  ASSERT_TRUE(ExactMinorGC());
  const int file = memfd_create("gofin-uring", 0);
  ASSERT_GE(file, 0);
  {
    const gofin::UntrackedWrites declared(old.get(), sizeof(Holder));
    if (!ring.RegisterBuffer(old.get(), sizeof(Holder))) {
      close(file);
      GTEST_SKIP() << "IORING_REGISTER_BUFFERS refused";
    }
    // Pinning the pages wrote them (a fault the tracking saw): a cycle protects them again,
    // so that the test cannot pass because of that write.
    ASSERT_TRUE(ExactMinorGC());
    if (OsPageWritten(Addr(&old->slot[3]))) {
      GTEST_SKIP() << "the old object's page is not write-protected after a cycle";
    }
    ASSERT_TRUE(uring::WriteYoungToFile(file, &uring::g_dtors, 77));
    ClobberStack();
    ASSERT_EQ(ring.ReadFixed(file, &old->slot[3], sizeof(void*)), static_cast<long>(sizeof(void*)));
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(ExactMinorGC());
    EXPECT_EQ(Load(uring::g_dtors), 0) << "the young object was freed by a minor cycle";
    MakeYoungGarbage(&uring::g_dtors, 2000);
    Churn(2 * kMiB);
    ASSERT_TRUE(ExactMinorGC());
    EXPECT_TRUE(SlotOk(old.get(), 3, 77)) << "the young object's memory was reused";
    EXPECT_EQ(Load(uring::g_dtors), 2000) << "only the garbage may have been freed";
    EXPECT_TRUE(ring.UnregisterBuffers());
  }
  close(file);
  old->slot[3] = nullptr;
  ExactGC();
  EXPECT_EQ(Load(uring::g_dtors), 2001);
}

TEST(UntrackedWrites, DeclarationsNestAndBadRemovalsThrow) {
  static std::uint64_t buffer[512];
  gofin::AddUntrackedWrites(buffer, sizeof(buffer));
  gofin::AddUntrackedWrites(buffer, sizeof(buffer));
  gofin::RemoveUntrackedWrites(buffer, sizeof(buffer));
  gofin::RemoveUntrackedWrites(buffer, sizeof(buffer));
  EXPECT_THROW(gofin::RemoveUntrackedWrites(buffer, sizeof(buffer)), gofin::Error);
  EXPECT_THROW(gofin::AddUntrackedWrites(reinterpret_cast<void*>(UINTPTR_MAX - 8), 64),
               gofin::Error);
  gofin::AddUntrackedWrites(nullptr, 0);  // nothing to declare: a no-op
  gofin::RemoveUntrackedWrites(nullptr, 0);
  // A minor cycle with a declared range outside the heap scans nothing there and works.
  {
    const gofin::UntrackedWrites declared(buffer, sizeof(buffer));
    ExactGC();
    ExactMinorGC();
  }
}
