// The collector in real programs (the issue of that name): stacks other than a thread's own
// (coroutines, alternate signal stacks), pointers only in vector registers, a stop signal that
// cannot be queued, blocked or taken over, dlclose during a collection, pthread_cancel, and
// threads that call gofin from their exit destructors, destructors that take the program's
// locks or block.
//
// Whatever can hang or crash runs in a child process (a death test, re-executed: gofin has
// threads) that bounds itself with alarm(). Objects that must survive are held in one frame
// only; objects that must die are made in [[gnu::noinline]] helpers or short-lived threads,
// and survival is read from finalizer counters after GC() and a bounded queue drain.
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <gofin/gofin.hpp>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "gc/stop_the_world.hpp"
#include "test_support.hpp"
#include "test_wait.hpp"

extern char** environ;

namespace {

using namespace std::chrono_literals;
using gofin_test::ClobberStack;

constexpr bool kTsan = gofin_test::kThreadSanitizer;

struct Obj {
  std::uint64_t value = 0;
  Obj* next = nullptr;
};

std::atomic<int> g_fins{0};

// Pointers handed around without being roots travel XOR this mask (never a heap address).
volatile std::uintptr_t g_mask = 0x5a5a000000000000ULL;

[[gnu::noinline]] std::uintptr_t NewFinalized() {
  auto* o = gofin::New<Obj>();
  o->value = 42;
  gofin::SetFinalizer(o, [](Obj*) { g_fins.fetch_add(1); });
  return reinterpret_cast<std::uintptr_t>(o) ^ g_mask;
}
[[gnu::noinline]] Obj* Decode(std::uintptr_t e) { return reinterpret_cast<Obj*>(e ^ g_mask); }

// Runs GC() and drains the finalizer queue (bounded).
[[gnu::noinline]] void CollectAndDrain() {
  gofin::GC();
  gofin::GC();
  gofin::testing::BlockUntilEmptyFinalizerQueue(10s);
}

// Collects until n finalizers ran, at most ~10 s.
bool WaitForFinalizers(int n) {
  for (int i = 0; i < 200 && g_fins.load() < n; ++i) {
    ClobberStack();
    CollectAndDrain();
  }
  return g_fins.load() >= n;
}

// The child's exit status: 0 when ok, after a bounded run.
[[noreturn]] void ChildExit(bool ok) {
  std::fflush(stdout);
  std::fflush(stderr);
  _exit(ok ? 0 : 1);
}

class RealPrograms : public ::testing::Test {
 protected:
  void SetUp() override {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    gofin::debug::SetGCPercent(-1);
  }
};

// ---------------------------------------------------------------------------------------
// 1. Stacks other than the thread's own.

constexpr std::size_t kCoroutineStack = 256 * 1024;
ucontext_t g_main_ctx;
ucontext_t g_coro_ctx;
std::atomic<int> g_coro_state{0};

void CoroutineCallsGC() {
  gofin::GC();
  gofin::GC();
  g_coro_state.store(1);
  swapcontext(&g_coro_ctx, &g_main_ctx);
}

// The object is held only in this frame, on the thread's own stack, while the thread runs a
// coroutine (makecontext/swapcontext, gofin not told) that collects.
[[gnu::noinline]] bool HoldAcrossCoroutine(void (*body)(), bool use_scope) {
  volatile std::uintptr_t enc = NewFinalized();
  Obj* volatile held = Decode(enc);
  enc = 0;
  ClobberStack();
  std::vector<char> stack(kCoroutineStack);
  getcontext(&g_coro_ctx);
  g_coro_ctx.uc_stack.ss_sp = stack.data();
  g_coro_ctx.uc_stack.ss_size = stack.size();
  g_coro_ctx.uc_link = &g_main_ctx;
  makecontext(&g_coro_ctx, body, 0);
  if (use_scope) {
    gofin::StackScope scope(stack.data(), stack.data() + stack.size());
    swapcontext(&g_main_ctx, &g_coro_ctx);
  } else {
    swapcontext(&g_main_ctx, &g_coro_ctx);
  }
  gofin::testing::BlockUntilEmptyFinalizerQueue(10s);
  const bool alive = g_fins.load() == 0 && held->value == 42;
  gofin::KeepAlive(held);
  return alive;
}

TEST_F(RealPrograms, CoroutineThatCollectsKeepsTheCallersObjects) {
  EXPECT_EXIT(
      {
        alarm(60);
        bool ok = true;
        std::thread([&] { ok = HoldAcrossCoroutine(&CoroutineCallsGC, false); }).join();
        ok = ok && g_coro_state.load() == 1;
        ok = ok && WaitForFinalizers(1);  // and it is collected once dropped
        ChildExit(ok);
      },
      ::testing::ExitedWithCode(0), "");
}

TEST_F(RealPrograms, CoroutineWithStackScopeThatCollectsKeepsTheCallersObjects) {
  EXPECT_EXIT(
      {
        alarm(60);
        bool ok = true;
        std::thread([&] { ok = HoldAcrossCoroutine(&CoroutineCallsGC, true); }).join();
        ChildExit(ok && g_coro_state.load() == 1 && WaitForFinalizers(1));
      },
      ::testing::ExitedWithCode(0), "");
}

// Another thread collects while this one runs in a coroutine (on its StackScope segment),
// holding one object in the caller's frame and one in the coroutine's.
std::atomic<bool> g_coro_release{false};
std::atomic<bool> g_coro_running{false};
void CoroutineHoldsAndSpins() {
  volatile std::uintptr_t enc = NewFinalized();
  Obj* volatile mine = Decode(enc);
  enc = 0;
  ClobberStack();
  g_coro_running.store(true);
  while (!g_coro_release.load()) {
  }
  g_coro_state.store(mine->value == 42 ? 2 : 3);
  gofin::KeepAlive(mine);
  swapcontext(&g_coro_ctx, &g_main_ctx);
}

TEST_F(RealPrograms, ThreadStoppedInACoroutineKeepsBothStacksObjects) {
  if (kTsan) GTEST_SKIP() << "a spinning thread takes no signal under TSan";
  for (const bool scope : {false, true}) {
    EXPECT_EXIT(
        {
          alarm(60);
          bool ok = true;
          std::thread t([&] { ok = HoldAcrossCoroutine(&CoroutineHoldsAndSpins, scope); });
          while (!g_coro_running.load()) std::this_thread::yield();
          CollectAndDrain();
          const int early = g_fins.load();
          g_coro_release.store(true);
          t.join();
          ChildExit(ok && early == 0 && g_coro_state.load() == 2 && WaitForFinalizers(2));
        },
        ::testing::ExitedWithCode(0), "");
  }
}

// 6. GC() on a 16 KiB coroutine stack with a guard page below it, mapped above the thread's
// own stack (where a check against the thread's own bounds sees room to clear).
char* MapSmallStackAboveOwnStack(std::size_t bytes, std::size_t page) {
  pthread_attr_t attr;
  void* addr = nullptr;
  std::size_t size = 0;
  pthread_getattr_np(pthread_self(), &attr);
  pthread_attr_getstack(&attr, &addr, &size);
  pthread_attr_destroy(&attr);
  const auto hi = reinterpret_cast<std::uintptr_t>(addr) + size;
  for (std::uintptr_t off = std::uintptr_t{1} << 20; off < (std::uintptr_t{1} << 30); off <<= 1) {
    void* want = reinterpret_cast<void*>((hi + off) & ~(page - 1));
    void* got = mmap(want, bytes + page, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (got == want) {
      mprotect(got, page, PROT_NONE);
      return static_cast<char*>(got) + page;
    }
    if (got != MAP_FAILED) munmap(got, bytes + page);
  }
  return nullptr;
}

// GC() from 9 KiB down a 16 KiB stack: less than the 8 KiB that GC() clears is left below.
[[gnu::noinline]] void CollectDeepDown() {
  volatile char frame[9 * 1024];
  frame[0] = 1;
  gofin::GC();
  gofin::GC();
  asm volatile("" : : "r"(&frame[0]) : "memory");
}
void CoroutineCallsGCDeepDown() {
  CollectDeepDown();
  g_coro_state.store(1);
  swapcontext(&g_coro_ctx, &g_main_ctx);
}

TEST_F(RealPrograms, GCOnASmallCoroutineStackDoesNotWriteBelowIt) {
  for (const bool scope : {false, true}) {
    EXPECT_EXIT(
        {
          alarm(60);
          const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
          constexpr std::size_t kSmall = 16 * 1024;
          std::thread([&] {
            gofin::ThreadScope registered;
            char* lo = MapSmallStackAboveOwnStack(kSmall, page);
            if (lo == nullptr) ChildExit(false);
            getcontext(&g_coro_ctx);
            g_coro_ctx.uc_stack.ss_sp = lo;
            g_coro_ctx.uc_stack.ss_size = kSmall;
            g_coro_ctx.uc_link = &g_main_ctx;
            makecontext(&g_coro_ctx, &CoroutineCallsGCDeepDown, 0);
            if (scope) {
              gofin::StackScope s(lo, lo + kSmall);
              swapcontext(&g_main_ctx, &g_coro_ctx);
            } else {
              swapcontext(&g_main_ctx, &g_coro_ctx);
            }
          }).join();
          ChildExit(g_coro_state.load() == 1);
        },
        ::testing::ExitedWithCode(0), "");
  }
}

// A handler on the alternate signal stack that collects, and one that is stopped there.
std::atomic<int> g_handler_mode{0};  // 1: collect; 2: spin until released
std::atomic<bool> g_in_handler{false};
std::atomic<bool> g_handler_release{false};
void OnStackHandler(int /*sig*/) {
  if (g_handler_mode.load() == 1) {
    gofin::GC();
    gofin::GC();
  } else {
    g_in_handler.store(true);
    while (!g_handler_release.load()) {
    }
  }
}

[[gnu::noinline]] bool HoldAcrossHandler() {
  volatile std::uintptr_t enc = NewFinalized();
  Obj* volatile held = Decode(enc);
  enc = 0;
  ClobberStack();
  std::vector<char> alt(64 * 1024);
  stack_t ss{};
  ss.ss_sp = alt.data();
  ss.ss_size = alt.size();
  sigaltstack(&ss, nullptr);
  pthread_kill(pthread_self(), SIGUSR1);
  stack_t off{};
  off.ss_flags = SS_DISABLE;
  sigaltstack(&off, nullptr);
  gofin::testing::BlockUntilEmptyFinalizerQueue(10s);
  const bool alive = g_fins.load() == 0 && held->value == 42;
  gofin::KeepAlive(held);
  return alive;
}

void InstallOnStackHandler(int sig, void (*fn)(int)) {
  struct sigaction sa {};
  sa.sa_handler = fn;
  sa.sa_flags = SA_ONSTACK | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(sig, &sa, nullptr);
}

TEST_F(RealPrograms, HandlerOnTheAlternateStackThatCollectsKeepsTheThreadsObjects) {
  if (kTsan) GTEST_SKIP() << "TSan reports GC() in a signal handler as a signal-unsafe call";
  EXPECT_EXIT(
      {
        alarm(60);
        InstallOnStackHandler(SIGUSR1, &OnStackHandler);
        g_handler_mode.store(1);
        bool ok = true;
        std::thread([&] { ok = HoldAcrossHandler(); }).join();
        ChildExit(ok && WaitForFinalizers(1));
      },
      ::testing::ExitedWithCode(0), "");
}

TEST_F(RealPrograms, ThreadStoppedOnItsAlternateStackKeepsItsObjects) {
  if (kTsan) GTEST_SKIP() << "a spinning thread takes no signal under TSan";
  EXPECT_EXIT(
      {
        alarm(60);
        InstallOnStackHandler(SIGUSR1, &OnStackHandler);
        g_handler_mode.store(2);
        bool ok = true;
        std::thread t([&] { ok = HoldAcrossHandler(); });
        while (!g_in_handler.load()) std::this_thread::yield();
        CollectAndDrain();
        const int early = g_fins.load();
        g_handler_release.store(true);
        t.join();
        ChildExit(ok && early == 0 && WaitForFinalizers(1));
      },
      ::testing::ExitedWithCode(0), "");
}

// A 1 kHz SIGPROF sampling profiler on a sigaltstack, while a thread holds finalized objects
// and collections run: no finalizer may run for them.
std::atomic<long> g_samples{0};
void ProfHandler(int /*sig*/) {
  g_samples.fetch_add(1, std::memory_order_relaxed);
  // A sampler's stack walk takes a while: the stop often lands here.
  for (int i = 0; i < 20000; ++i) asm volatile("");
}

void SetProfTimer(long usec) {
  itimerval it{};
  it.it_interval.tv_usec = usec;
  it.it_value.tv_usec = usec;
  setitimer(ITIMER_PROF, &it, nullptr);
}

constexpr int kHeld = 64;
std::atomic<bool> g_prof_stop{false};
std::atomic<bool> g_prof_ready{false};
[[gnu::noinline]] bool HoldWhileProfiled() {
  std::vector<char> alt(64 * 1024);
  stack_t ss{};
  ss.ss_sp = alt.data();
  ss.ss_size = alt.size();
  sigaltstack(&ss, nullptr);
  Obj* volatile held[kHeld];
  for (auto& h : held) h = Decode(NewFinalized());
  ClobberStack();
  g_prof_ready.store(true);
  while (!g_prof_stop.load()) {
  }
  bool ok = true;
  for (auto& h : held) ok = ok && h->value == 42;
  gofin::KeepAlive(held);
  stack_t off{};
  off.ss_flags = SS_DISABLE;
  sigaltstack(&off, nullptr);
  return ok;
}

TEST_F(RealPrograms, SigprofProfilerOnAnAlternateStackFreesNothingReachable) {
  if (kTsan) GTEST_SKIP() << "a spinning thread takes no signal under TSan";
  EXPECT_EXIT(
      {
        alarm(60);
        InstallOnStackHandler(SIGPROF, &ProfHandler);
        bool ok = true;
        std::thread t([&] { ok = HoldWhileProfiled(); });
        while (!g_prof_ready.load()) std::this_thread::yield();
        SetProfTimer(1000);
        const auto end = std::chrono::steady_clock::now() + 2s;
        while (std::chrono::steady_clock::now() < end && g_fins.load() == 0) gofin::GC();
        gofin::testing::BlockUntilEmptyFinalizerQueue(10s);
        const int early = g_fins.load();
        SetProfTimer(0);
        g_prof_stop.store(true);
        t.join();
        if (early != 0) std::fprintf(stderr, "%d finalizers ran for reachable objects\n", early);
        ChildExit(ok && early == 0 && g_samples.load() > 0 && WaitForFinalizers(kHeld));
      },
      ::testing::ExitedWithCode(0), "");
}

// ---------------------------------------------------------------------------------------
// 3. A stop signal that cannot be queued (RLIMIT_SIGPENDING = 0: every real-time signal
// sent with tgkill fails with EAGAIN).

// Bounded waits a collection can stop (test_wait.hpp): the holder waits scanned.
gofin_test::Event g_hold_release;
gofin_test::Event g_holding;
[[gnu::noinline]] bool HoldUntilReleased() {
  volatile std::uintptr_t enc = NewFinalized();
  Obj* volatile held = Decode(enc);
  enc = 0;
  ClobberStack();
  g_holding.Set();
  const bool released = g_hold_release.WaitFor(std::chrono::seconds(60));
  const bool ok = released && held->value == 42;
  gofin::KeepAlive(held);
  return ok;
}

TEST_F(RealPrograms, StopSignalThatCannotBeQueuedStillStopsAndScansTheThread) {
  EXPECT_EXIT(
      {
        alarm(60);
        rlimit none{};
        if (setrlimit(RLIMIT_SIGPENDING, &none) != 0) ChildExit(false);
        bool ok = true;
        std::thread t([&] { ok = HoldUntilReleased(); });
        if (!g_holding.WaitFor(std::chrono::seconds(30))) ChildExit(false);
        CollectAndDrain();
        const int early = g_fins.load();
        g_hold_release.Set();
        t.join();
        ChildExit(ok && early == 0 && WaitForFinalizers(1));
      },
      ::testing::ExitedWithCode(0), "");
}

// ---------------------------------------------------------------------------------------
// 4. Pointers held only in vector registers.

std::atomic<int> g_xmm_release{0};
std::atomic<bool> g_xmm_loaded{false};
// Loads two pointers into xmm8 and (with AVX) a third into ymm9's upper half, clears every
// other copy, spins until released, then stores them back.
[[gnu::noinline]] void HoldInVectorRegisters(std::uintptr_t* encs, bool avx) {
  std::uintptr_t back[3] = {0, 0, 0};
  const std::uintptr_t mask = g_mask;
  if (avx) {
    asm volatile(
        "mov 0(%[e]), %%rax\n xor %[m], %%rax\n movq %%rax, %%xmm8\n"
        "mov 8(%[e]), %%rax\n xor %[m], %%rax\n movq %%rax, %%xmm0\n"
        "punpcklqdq %%xmm0, %%xmm8\n"
        "mov 16(%[e]), %%rax\n xor %[m], %%rax\n movq %%rax, %%xmm0\n"
        "vinserti128 $1, %%xmm0, %%ymm9, %%ymm9\n"
        "pxor %%xmm0, %%xmm0\n xor %%eax, %%eax\n"
        "movq $0, 0(%[e])\n movq $0, 8(%[e])\n movq $0, 16(%[e])\n"
        "movb $1, (%[loaded])\n"
        "1: pause\n cmpl $0, (%[rel])\n je 1b\n"
        "movq %%xmm8, 0(%[b])\n pextrq $1, %%xmm8, 8(%[b])\n"
        "vextracti128 $1, %%ymm9, %%xmm0\n movq %%xmm0, 16(%[b])\n vzeroupper\n"
        :
        : [e] "r"(encs), [m] "r"(mask), [b] "r"(back), [rel] "r"(&g_xmm_release),
          [loaded] "r"(&g_xmm_loaded)
        : "rax", "xmm0", "xmm8", "xmm9", "memory");
  } else {
    asm volatile(
        "mov 0(%[e]), %%rax\n xor %[m], %%rax\n movq %%rax, %%xmm8\n"
        "mov 8(%[e]), %%rax\n xor %[m], %%rax\n movq %%rax, %%xmm0\n"
        "punpcklqdq %%xmm0, %%xmm8\n"
        "pxor %%xmm0, %%xmm0\n xor %%eax, %%eax\n"
        "movq $0, 0(%[e])\n movq $0, 8(%[e])\n"
        "movb $1, (%[loaded])\n"
        "1: pause\n cmpl $0, (%[rel])\n je 1b\n"
        "movq %%xmm8, 0(%[b])\n pextrq $1, %%xmm8, 8(%[b])\n"
        :
        : [e] "r"(encs), [m] "r"(mask), [b] "r"(back), [rel] "r"(&g_xmm_release),
          [loaded] "r"(&g_xmm_loaded)
        : "rax", "xmm0", "xmm8", "memory");
  }
  const int n = avx ? 3 : 2;
  bool ok = true;
  for (int i = 0; i < n; ++i) ok = ok && reinterpret_cast<Obj*>(back[i])->value == 42;
  for (auto& b : back) b ^= mask;  // no plain copy left behind
  asm volatile("" : : "r"(back) : "memory");
  if (!ok) g_fins.fetch_add(1000);
}

TEST_F(RealPrograms, PointersOnlyInVectorRegistersKeepTheirObjects) {
  if (kTsan) GTEST_SKIP() << "a thread spinning in assembly takes no signal under TSan";
  EXPECT_EXIT(
      {
        alarm(60);
        const bool avx = __builtin_cpu_supports("avx2");
        const int n = avx ? 3 : 2;
        std::thread t([&] {
          std::uintptr_t encs[3] = {NewFinalized(), NewFinalized(), avx ? NewFinalized() : 0};
          ClobberStack();
          HoldInVectorRegisters(encs, avx);
        });
        while (!g_xmm_loaded.load()) std::this_thread::yield();
        CollectAndDrain();
        const int early = g_fins.load();
        g_xmm_release.store(1);
        t.join();
        if (early != 0) std::fprintf(stderr, "%d objects held in vector registers freed\n", early);
        ChildExit(early == 0 && WaitForFinalizers(n) && g_fins.load() == n);
      },
      ::testing::ExitedWithCode(0), "");
}

// ---------------------------------------------------------------------------------------
// 5. dlopen/dlclose in a loop while another thread collects.

TEST_F(RealPrograms, DlcloseDuringCollectionsDoesNotCrash) {
  EXPECT_EXIT(
      {
        alarm(60);
        std::atomic<bool> stop{false};
        std::atomic<long> loads{0};
        std::thread loader([&] {
          while (!stop.load()) {
            void* h = dlopen(GOFIN_TEST_MODULE_PATH, RTLD_NOW | RTLD_LOCAL);
            if (h == nullptr) {
              std::fprintf(stderr, "dlopen: %s\n", dlerror());
              ChildExit(false);
            }
            // Its globals hold a GC pointer while it is loaded.
            auto* set = reinterpret_cast<void (*)(void*)>(dlsym(h, "gofin_test_module_set"));
            if (set != nullptr) set(gofin::New<Obj>());
            dlclose(h);
            loads.fetch_add(1);
          }
        });
        const auto end = std::chrono::steady_clock::now() + 2s;
        long cycles = 0;
        while (std::chrono::steady_clock::now() < end) {
          gofin::GC();
          ++cycles;
        }
        stop.store(true);
        loader.join();
        std::fprintf(stderr, "%ld loads, %ld cycles\n", loads.load(), cycles);
        ChildExit(loads.load() > 0 && cycles > 0);
      },
      ::testing::ExitedWithCode(0), "");
}

// ---------------------------------------------------------------------------------------
// 7. pthread_cancel while threads create and destroy Roots (gofin's waits are no
// cancellation points).

std::atomic<int> g_cancel_rounds{0};
gofin_test::Event g_cancel_ready;

TEST_F(RealPrograms, PthreadCancelOfThreadsUsingRootsDoesNotTerminate) {
  EXPECT_EXIT(
      {
        alarm(60);
        std::atomic<bool> stop{false};
        std::thread collector([&] {
          while (!stop.load()) gofin::GC();
        });
        for (int round = 0; round < 10; ++round) {
          g_cancel_rounds.store(0);
          g_cancel_ready.Reset();
          std::vector<pthread_t> threads(4);
          for (auto& t : threads) {
            pthread_create(
                &t, nullptr,
                [](void*) -> void* {
                  for (;;) {
                    for (int i = 0; i < 64; ++i) {
                      gofin::Root<Obj> r(gofin::New<Obj>());
                      gofin::KeepAlive(r.get());
                    }
                    if (g_cancel_rounds.fetch_add(1) + 1 == 4 * 8) g_cancel_ready.Set();
                    pthread_testcancel();
                  }
                },
                nullptr);
          }
          // Every thread is busy with its Roots (8 rounds each, on average) when cancelled.
          if (!g_cancel_ready.WaitFor(std::chrono::seconds(30))) ChildExit(false);
          for (auto& t : threads) pthread_cancel(t);
          for (auto& t : threads) pthread_join(t, nullptr);
        }
        stop.store(true);
        collector.join();
        gofin::GC();
        ChildExit(true);
      },
      ::testing::ExitedWithCode(0), "");
}

// ---------------------------------------------------------------------------------------
// 8. The stop signal blocked, inherited blocked, or taken over.

TEST_F(RealPrograms, ThreadThatBlocksAllSignalsStillStops) {
  EXPECT_EXIT(
      {
        alarm(30);
        bool ok = true;
        std::thread t([&] {
          sigset_t all;
          sigfillset(&all);
          pthread_sigmask(SIG_BLOCK, &all, nullptr);
          ok = HoldUntilReleased();
        });
        // The "block everything, one thread sigwaits" design: this thread waits for every
        // signal (and is registered).
        std::atomic<bool> waiter_stop{false};
        std::thread waiter([&] {
          gofin::ThreadScope registered;
          sigset_t all;
          sigfillset(&all);
          pthread_sigmask(SIG_BLOCK, &all, nullptr);
          while (!waiter_stop.load()) {
            timespec ts{0, 10000000};
            siginfo_t info;
            if (sigtimedwait(&all, &info, &ts) == gofin::internal::StopSignal()) ChildExit(false);
          }
        });
        if (!g_holding.WaitFor(std::chrono::seconds(30))) ChildExit(false);
        CollectAndDrain();
        const int early = g_fins.load();
        g_hold_release.Set();
        t.join();
        waiter_stop.store(true);
        waiter.join();
        ChildExit(ok && early == 0 && WaitForFinalizers(1));
      },
      ::testing::ExitedWithCode(0), "");
}

TEST_F(RealPrograms, FinalizerThreadStartedWithSignalsBlockedDoesNotHangCollections) {
  EXPECT_EXIT(
      {
        alarm(30);
        // The mask is set with the raw system call, which no wrapper sees: the finalizer
        // thread, started by the first SetFinalizer, inherits it.
        std::thread([] {
          sigset_t all;
          sigfillset(&all);
          syscall(SYS_rt_sigprocmask, SIG_BLOCK, &all, nullptr, 8);
          gofin::SetFinalizer(gofin::New<Obj>(), [](Obj*) { g_fins.fetch_add(1); });
          sigset_t none;
          sigemptyset(&none);
          syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, nullptr, 8);
        }).join();
        ChildExit(WaitForFinalizers(1));
      },
      ::testing::ExitedWithCode(0), "");
}

std::atomic<int> g_foreign{0};
sem_t g_foreign_sem;  // posted by the handler: sem_post is async-signal-safe
void ForeignHandler(int /*sig*/) {
  g_foreign.fetch_add(1);
  sem_post(&g_foreign_sem);
}

TEST_F(RealPrograms, ForeignHandlerOnTheStopSignalIsReportedAndForwarded) {
  EXPECT_EXIT(
      {
        alarm(30);
        gofin::GC();  // gofin's handler is installed
        struct sigaction sa {};
        sem_init(&g_foreign_sem, 0, 0);
        sa.sa_handler = &ForeignHandler;
        sigemptyset(&sa.sa_mask);
        sigaction(gofin::internal::StopSignal(), &sa, nullptr);
        bool ok = true;
        std::thread t([&] { ok = HoldUntilReleased(); });
        if (!g_holding.WaitFor(std::chrono::seconds(30))) ChildExit(false);
        CollectAndDrain();
        const int early = g_fins.load();
        // The program's own use of the signal still reaches its handler.
        const int before = g_foreign.load();
        kill(getpid(), gofin::internal::StopSignal());
        timespec deadline{};
        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_sec += 10;
        while (g_foreign.load() == before && sem_timedwait(&g_foreign_sem, &deadline) != 0 &&
               errno == EINTR) {
        }
        g_hold_release.Set();
        t.join();
        ChildExit(ok && early == 0 && g_foreign.load() > before && WaitForFinalizers(1));
      },
      ::testing::ExitedWithCode(0), "installed its own handler on signal");
}

TEST_F(RealPrograms, ThreadThatBlocksTheStopSignalBehindGofinsBackIsNamed) {
  EXPECT_EXIT(
      {
        alarm(3);
        std::atomic<bool> blocked{false};
        std::thread t([&] {
          gofin::ThreadScope registered;
          sigset_t all;
          sigfillset(&all);
          syscall(SYS_rt_sigprocmask, SIG_BLOCK, &all, nullptr, 8);
          blocked.store(true);
          for (;;) pause();
        });
        t.detach();
        while (!blocked.load()) std::this_thread::yield();
        gofin::GC();  // waits; the message comes after 1 s, the alarm after 3
        ChildExit(false);
      },
      ::testing::KilledBySignal(SIGALRM), "which blocks signal [0-9]+, gofin's stop signal");
}

// GOFIN_STOP_SIGNAL: the child is this program again, run with the variable set.
TEST_F(RealPrograms, StopSignalChosenByTheEnvironment) {
  if (std::getenv("GOFIN_STOP_SIGNAL") != nullptr) {
    // The child.
    const int expected = std::atoi(std::getenv("GOFIN_TEST_EXPECT_SIGNAL"));
    EXPECT_EQ(gofin::internal::StopSignal(), expected);
    bool ok = true;
    std::thread t([&] { ok = HoldUntilReleased(); });
    ASSERT_TRUE(g_holding.WaitFor(std::chrono::seconds(30)));
    CollectAndDrain();
    EXPECT_EQ(g_fins.load(), 0);
    g_hold_release.Set();
    t.join();
    EXPECT_TRUE(ok);
    return;
  }
  for (const auto& [value, sig] :
       {std::pair<std::string, int>{"SIGRTMIN+3", SIGRTMIN + 3},
        std::pair<std::string, int>{"SIGUSR2", SIGUSR2},
        std::pair<std::string, int>{std::to_string(SIGRTMAX - 1), SIGRTMAX - 1}}) {
    EXPECT_EQ(gofin_test::RunSelfFiltered(
                  "RealPrograms.StopSignalChosenByTheEnvironment",
                  {"GOFIN_STOP_SIGNAL=" + value, "GOFIN_TEST_EXPECT_SIGNAL=" + std::to_string(sig)},
                  std::chrono::seconds(30)),
              0)
        << value;
  }
}

// ---------------------------------------------------------------------------------------
// 9. Thread-exit destructors that call gofin.

struct AllocatesOnExit {
  ~AllocatesOnExit() {
    auto* o = gofin::New<Obj>();
    gofin::KeepAlive(o);
  }
};

TEST_F(RealPrograms, ThreadLocalDestructorAllocatingAfterTheExitHookDoesNotHangCollections) {
  EXPECT_EXIT(
      {
        alarm(30);
        for (int i = 0; i < 8; ++i) {
          std::thread([] {
            // Constructed before the thread registers, so destroyed after gofin's exit hook.
            thread_local AllocatesOnExit late;
            gofin::KeepAlive(&late);
            gofin::New<Obj>();
          }).join();
        }
        gofin::GC();
        gofin::GC();
        ChildExit(true);
      },
      ::testing::ExitedWithCode(0), "");
}

TEST_F(RealPrograms, PthreadKeyDestructorAllocatingAfterTheExitHookDoesNotHangCollections) {
  EXPECT_EXIT(
      {
        alarm(30);
        static pthread_key_t key;
        static std::atomic<int> destroyed{0};
        pthread_key_create(&key, [](void*) {
          gofin::KeepAlive(gofin::New<Obj>());
          destroyed.fetch_add(1);
        });
        for (int i = 0; i < 8; ++i) {
          std::thread t([] {
            gofin::New<Obj>();
            pthread_setspecific(key, &key);
          });
          t.detach();
        }
        // Detached: nothing to join. Collections while they exit, then after.
        for (int i = 0; i < 1000 && destroyed.load() < 8; ++i) gofin::GC();
        gofin::GC();
        gofin::GC();
        ChildExit(true);
      },
      ::testing::ExitedWithCode(0), "");
}

// ---------------------------------------------------------------------------------------
// 10. Destructors are user code: they run on gofin's destructor thread, never inside an
// allocation or a collection, and no stop waits for one.

namespace dtors {

std::mutex g_registry_mu;
std::atomic<std::uint64_t> g_destroyed{0};
std::atomic<pid_t> g_dtor_tid{0};
std::atomic<bool> g_ran_on_a_mutator{false};
std::atomic<pid_t> g_mutator_tids[4];

pid_t Tid() { return static_cast<pid_t>(syscall(SYS_gettid)); }

// A registry whose mutex the program holds around New<Tracked>() and which ~Tracked takes:
// the pattern that deadlocked while the sweep (inside New and GC) ran destructors.
struct Tracked {
  ~Tracked() {
    const std::lock_guard lock(g_registry_mu);
    const pid_t me = Tid();
    for (auto& t : g_mutator_tids) {
      if (t.load() == me) g_ran_on_a_mutator.store(true);
    }
    g_dtor_tid.store(me);
    g_destroyed.fetch_add(1);
  }
  std::uint64_t payload[3] = {};
};

[[gnu::noinline]] void AllocateUnderTheLock(int n) {
  for (int i = 0; i < n; ++i) {
    const std::lock_guard lock(g_registry_mu);
    auto* t = gofin::New<Tracked>();
    t->payload[0] = static_cast<std::uint64_t>(i);
  }
}

struct ListNode {
  ~ListNode() { g_destroyed.fetch_add(1); }
  ListNode* next = nullptr;
  std::uint64_t pad = 0;
};

[[gnu::noinline]] void BuildGarbageList(int n) {
  ListNode* head = nullptr;
  for (int i = 0; i < n; ++i) {
    auto* node = gofin::New<ListNode>();
    node->next = head;
    head = node;
  }
  asm volatile("" : : "r"(head) : "memory");
}

std::mutex g_release_mu;
std::condition_variable g_release_cv;
bool g_release = false;  // under g_release_mu
std::atomic<bool> g_blocking{false};
struct Blocks {
  // Blocks the destructor thread until released, at most 30 s: a bounded condition wait, in
  // which the stop signal reaches the thread as anywhere else.
  ~Blocks() {
    g_blocking.store(true);
    std::unique_lock lock(g_release_mu);
    g_release_cv.wait_for(lock, std::chrono::seconds(30), [] { return g_release; });
  }
  std::uint64_t pad[2] = {};
};

[[gnu::noinline]] void MakeBlocking() { gofin::KeepAlive(gofin::New<Blocks>()); }

[[gnu::noinline]] void Churn(int n) {
  for (int i = 0; i < n; ++i) gofin::KeepAlive(gofin::Alloc(256));
}

}  // namespace dtors

TEST_F(RealPrograms, DestructorTakingALockHeldAroundAllocationDoesNotDeadlock) {
  // TSan's pthread_mutex_lock interceptor holds a signal back until the lock is taken, so a
  // thread blocked on the registry lock (held by a thread whose New() collects) never stops.
  if (kTsan) GTEST_SKIP() << "a thread blocked in TSan's mutex interceptor takes no signal";
  EXPECT_EXIT(
      {
        alarm(60);
        gofin::debug::SetGCPercent(10);  // automatic cycles inside the locked New()s
        std::vector<std::thread> threads;
        for (int t = 0; t < 2; ++t) {
          threads.emplace_back([t] {
            dtors::g_mutator_tids[t].store(dtors::Tid());
            dtors::AllocateUnderTheLock(30000);
          });
        }
        dtors::g_mutator_tids[2].store(dtors::Tid());
        for (int i = 0; i < 20; ++i) gofin::GC();  // GC() while the others hold the lock
        for (auto& t : threads) t.join();
        gofin::GC();
        const bool ok = dtors::g_destroyed.load() > 0 && !dtors::g_ran_on_a_mutator.load();
        if (!ok) {
          std::fprintf(stderr, "destroyed=%llu on_a_mutator=%d\n",
                       static_cast<unsigned long long>(dtors::g_destroyed.load()),
                       static_cast<int>(dtors::g_ran_on_a_mutator.load()));
        }
        ChildExit(ok);
      },
      ::testing::ExitedWithCode(0), "");
}

TEST_F(RealPrograms, AutomaticCollectionsGoOnWhileADestructorBlocks) {
  EXPECT_EXIT(
      {
        alarm(10);  // the destructor would block for 30 s
        dtors::MakeBlocking();
        ClobberStack();
        gofin::debug::SetGCPercent(10);
        // Automatic cycles find the object dead and queue its destructor, which then blocks.
        for (int i = 0; i < 20000 && !dtors::g_blocking.load(); ++i) dtors::Churn(100);
        if (!dtors::g_blocking.load()) ChildExit(false);
        const std::uint64_t before = gofin::ReadMemStats().NumGC;
        for (int i = 0; i < 20000 && gofin::ReadMemStats().NumGC < before + 5; ++i) {
          dtors::Churn(100);
        }
        const bool ok = gofin::ReadMemStats().NumGC >= before + 5;
        if (!ok) std::fprintf(stderr, "no collection completed while the destructor blocked\n");
        {
          const std::lock_guard lock(dtors::g_release_mu);
          dtors::g_release = true;
        }
        dtors::g_release_cv.notify_all();
        gofin::GC();  // returns once the destructor did
        ChildExit(ok);
      },
      ::testing::ExitedWithCode(0), "");
}

TEST_F(RealPrograms, ListOfObjectsWithDestructorsIsFreedByOneGC) {
  constexpr int kN = 5000;
  dtors::g_destroyed = 0;
  std::thread([] { dtors::BuildGarbageList(kN); }).join();
  const gofin::MemStats before = gofin::ReadMemStats();
  gofin::testing::GC(gofin::testing::StackState::kNoHeapPointers);
  const gofin::MemStats after = gofin::ReadMemStats();
  // Queued objects are kept but not scanned: every node's destructor ran in the one cycle
  // that found the list dead, and GC() gave their memory back before returning.
  EXPECT_EQ(dtors::g_destroyed.load(), static_cast<std::uint64_t>(kN));
  EXPECT_GE(before.HeapObjects - after.HeapObjects, static_cast<std::uint64_t>(kN));
  EXPECT_GE(after.Frees - before.Frees, static_cast<std::uint64_t>(kN));
}

TEST_F(RealPrograms, DestructorsRunOffTheCallersThread) {
  dtors::g_destroyed = 0;
  dtors::g_dtor_tid = 0;
  dtors::g_ran_on_a_mutator = false;
  for (auto& t : dtors::g_mutator_tids) t = 0;
  dtors::g_mutator_tids[0] = dtors::Tid();
  std::thread([] {
    dtors::g_mutator_tids[1] = dtors::Tid();
    dtors::AllocateUnderTheLock(1000);
  }).join();
  gofin::testing::GC(gofin::testing::StackState::kNoHeapPointers);
  EXPECT_EQ(dtors::g_destroyed.load(), 1000U);
  EXPECT_FALSE(dtors::g_ran_on_a_mutator.load());
  EXPECT_NE(dtors::g_dtor_tid.load(), 0);
  EXPECT_NE(dtors::g_dtor_tid.load(), dtors::Tid());
}

}  // namespace
