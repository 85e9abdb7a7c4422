#include "gc/thread_registry.hpp"

#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <ctime>
#include <memory>

#include "gc/collector.hpp"
#include "gc/destructor_queue.hpp"
#include "gc/stop_the_world.hpp"
#include "gofin/detail/runtime.hpp"
#include "heap/fixalloc.hpp"
#include "heap/heap.hpp"
#include "heap/hooks.hpp"
#include "heap/safepoint.hpp"
#include "heap/thread_cache.hpp"

#if defined(__SANITIZE_THREAD__)
#define GOFIN_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define GOFIN_TSAN 1
#endif
#endif

namespace gofin::internal {

namespace {

// ThreadSanitizer (GCC 12's libtsan) creates a thread's signal context lazily, at the
// thread's first blocking call (nanosleep, pthread_join, a condition-variable wait) or first
// signal, and not reentrantly: a signal that arrives while that context is being created is
// recorded in a second context, which the first then replaces, and is lost. A thread in its
// first blocking call just when the collector sends its stop signal (an exiting thread
// waiting for the registry lock the collector holds, a thread waiting for the root table,
// main in its first join) never runs the handler, and the collection waits for it forever.
// So a thread makes one blocking call, creating the context, before it is registered and
// can be sent a stop signal. (Later libtsan versions create the context with a CAS.)
void PrepareForStopSignals() {
#if defined(GOFIN_TSAN)
  NonCancelableSleep(0);
#endif
}

constinit ThreadRecord* g_threads = nullptr;
constinit FixAlloc<ThreadRecord> g_record_alloc{};
constinit std::atomic<std::size_t> g_thread_count{0};
constexpr std::size_t kMaxExitHooks = 4;
constinit std::atomic<void (*)()> g_exit_hooks[kMaxExitHooks] = {};

// Unregisters the thread when it exits (thread_local destructors run on every normal exit).
struct ExitGuard {
  ExitGuard() = default;
  ExitGuard(const ExitGuard&) = delete;
  ExitGuard& operator=(const ExitGuard&) = delete;
  bool armed = false;
  ~ExitGuard() {
    if (armed) UnregisterThread();
    t_local.exit_hook_ran = true;
  }
};
thread_local ExitGuard t_exit_guard;

// A thread_local destructor that runs after the guard's (one constructed before it) or a
// pthread_key destructor may call gofin, which registers the dying thread again. That
// registration is undone by this key's destructor: glibc runs key destructors after every
// thread_local one, and again (up to PTHREAD_DESTRUCTOR_ITERATIONS rounds) while destructors
// set keys, so a registration made in a key destructor is undone too. A thread that still
// exits registered (a registration in the last round) is found gone by the next stop and
// dropped; it is never waited for. (An unregistered thread with a cache cannot be allowed:
// its allocation fast path would race the collector's cache flush, which only the stop
// signal keeps apart.)
pthread_key_t LateExitKey() {
  static const pthread_key_t key = [] {
    pthread_key_t k{};
    pthread_key_create(&k, [](void* /*record*/) { UnregisterThread(); });
    return k;
  }();
  return key;
}

void StackBounds(std::uintptr_t& lo, std::uintptr_t& hi) {
  pthread_attr_t attr;
  void* addr = nullptr;
  std::size_t size = 0;
  if (pthread_getattr_np(pthread_self(), &attr) == 0) {
    pthread_attr_getstack(&attr, &addr, &size);
    pthread_attr_destroy(&attr);
  }
  lo = reinterpret_cast<std::uintptr_t>(addr);
  hi = lo + size;
}

}  // namespace

PreemptibleMutex& RegistryLock() {
  // Never destroyed: threads may exit after static destructors ran.
  static auto* lock = new PreemptibleMutex();  // NOLINT(cppcoreguidelines-owning-memory)
  return *lock;
}

ThreadRecord* RegistryHead() { return g_threads; }

ThreadRecord* CurrentThreadRecord() { return static_cast<ThreadRecord*>(t_local.record); }

std::size_t RegisteredThreadCount() { return g_thread_count.load(std::memory_order_relaxed); }

bool RegisterThread() {
  if (t_local.record != nullptr) return false;
  EnsureCollectorInitialized();
  if (t_local.gc_internal) {
    // No collection can run while such a thread holds a GC pointer (only inside guards), so
    // its stack is no root: a stale word there must not keep garbage alive.
    if (t_local.cache == nullptr) t_local.cache = NewThreadCache();
    return false;
  }
  std::uintptr_t lo = 0;
  std::uintptr_t hi = 0;
  StackBounds(lo, hi);
  ThreadCache* cache = t_local.cache != nullptr ? t_local.cache : NewThreadCache();
  PrepareForStopSignals();
  // A mask inherited from the creating thread (signals blocked around pthread_create) would
  // keep this thread from ever stopping.
  UnblockStopSignals();
  ThreadRecord* r = nullptr;
  {
    std::lock_guard lock(RegistryLock());
    r = g_record_alloc.Alloc();
    r->thread = pthread_self();
    r->tid = static_cast<pid_t>(syscall(SYS_gettid));
    r->stack_lo = lo;
    r->stack_hi = hi;
    r->cache = cache;
    r->next = g_threads;
    if (g_threads != nullptr) g_threads->prev = r;
    g_threads = r;
    t_local.cache = cache;
    t_local.record = r;
    g_thread_count.fetch_add(1, std::memory_order_relaxed);
  }
  if (t_local.exit_hook_ran) {
    pthread_setspecific(LateExitKey(), r);
  } else {
    t_exit_guard.armed = true;
  }
  // The destructor thread exists before the first collection, which would otherwise create
  // it (RunCycle) on whatever stack collects: a coroutine's 16 KiB stack is too small for
  // pthread_create under AddressSanitizer. A registration runs on the thread's own stack.
  StartDestructorThread();
  return true;
}

void AddThreadExitHook(void (*fn)()) {
  for (auto& hook : g_exit_hooks) {
    void (*expected)() = nullptr;
    if (hook.compare_exchange_strong(expected, fn, std::memory_order_acq_rel)) return;
  }
}

void UnregisterThread() {
  auto* r = static_cast<ThreadRecord*>(t_local.record);
  if (r == nullptr) return;
  for (auto& hook : g_exit_hooks) {
    if (void (*fn)() = hook.load(std::memory_order_acquire)) fn();
  }
  // The cache goes first, while the thread is still registered: its spans return to the
  // central lists (the guard inside keeps a collection from catching it half-way).
  if (t_local.cache != nullptr) {
    FreeThreadCache(t_local.cache);
    t_local.cache = nullptr;
  }
  std::lock_guard lock(RegistryLock());
  if (r->prev != nullptr) {
    r->prev->next = r->next;
  } else {
    g_threads = r->next;
  }
  if (r->next != nullptr) r->next->prev = r->prev;
  t_local.record = nullptr;
  g_record_alloc.Free(r);
  g_thread_count.fetch_sub(1, std::memory_order_relaxed);
  if (!t_local.exit_hook_ran) t_exit_guard.armed = false;
}

void RemoveDeadThreadRecords() {
  ThreadRecord* r = g_threads;
  while (r != nullptr) {
    ThreadRecord* next = r->next;
    if (r->tid == 0) {
      if (r->prev != nullptr) {
        r->prev->next = r->next;
      } else {
        g_threads = r->next;
      }
      if (r->next != nullptr) r->next->prev = r->prev;
      // The thread is gone: its cached spans go back to the central lists.
      if (r->cache != nullptr) {
        r->cache->ReleaseAll();
        RemoveThreadCache(r->cache);
      }
      g_record_alloc.Free(r);
      g_thread_count.fetch_sub(1, std::memory_order_relaxed);
    }
    r = next;
  }
}

namespace {
void NoteResume(void* arg, std::uintptr_t sp) {
  auto* r = static_cast<ThreadRecord*>(arg);
  r->resume_sp = sp;
  std::memcpy(r->resume_regs, reinterpret_cast<const void*>(sp + kSpilledCalleeOffset),
              sizeof(r->resume_regs));
}
}  // namespace

void SetCurrentStack(std::uintptr_t lo, std::uintptr_t hi) noexcept {
  RegisterThread();
  auto* r = static_cast<ThreadRecord*>(t_local.record);
  if (r == nullptr) return;  // a gofin-internal thread
  // A stop sees the segment and the resume point both old or both new.
  NoPreempt region;
  if (hi <= lo || (lo == r->stack_lo && hi == r->stack_hi)) {
    r->segment_lo = r->segment_hi = 0;
    r->resume_sp = 0;
    return;
  }
  if (r->segment_hi == 0) {
    // Leaving its own stack: the frames above here stay live, and the callee-saved registers
    // they hold are kept, since the switch may save them where gofin does not look.
    const auto sp = reinterpret_cast<std::uintptr_t>(__builtin_frame_address(0));
    if (sp >= r->stack_lo && sp < r->stack_hi) {
      gofin_spill_registers_and_call(r, &NoteResume);
    } else {
      r->resume_sp = 0;  // on a stack gofin was not told of: the whole own stack is scanned
    }
  }
  r->segment_lo = lo;
  r->segment_hi = hi;
}

void CurrentStack(std::uintptr_t& lo, std::uintptr_t& hi) noexcept {
  const auto* r = static_cast<const ThreadRecord*>(t_local.record);
  lo = r != nullptr ? r->segment_lo : 0;
  hi = r != nullptr ? r->segment_hi : 0;
}

void ResetRegistryAfterFork() {
  std::construct_at(&RegistryLock());
  auto* self = static_cast<ThreadRecord*>(t_local.record);
  ThreadRecord* r = g_threads;
  g_threads = nullptr;
  std::size_t n = 0;
  while (r != nullptr) {
    ThreadRecord* next = r->next;
    if (r == self) {
      r->next = r->prev = nullptr;
      r->thread = pthread_self();
      r->tid = static_cast<pid_t>(syscall(SYS_gettid));
      g_threads = r;
      ++n;
    } else {
      // The thread is gone: its cached spans go back to the central lists.
      if (r->cache != nullptr) {
        r->cache->ReleaseAll();
        RemoveThreadCache(r->cache);
      }
      g_record_alloc.Free(r);
    }
    r = next;
  }
  g_thread_count.store(n, std::memory_order_relaxed);
}

ThreadCache* AttachCurrentThread() {
  RegisterThread();
  return t_local.cache;
}

[[gnu::noinline]] void RunGofinThread(const char* name, void (*body)()) {
  (void)pthread_setname_np(pthread_self(), name);
  // Below this frame, where body's frames go. 32 KiB covers the depth at which each thread
  // waits; a finalizer or cleanup running deeper writes its own frames, and the threads clear
  // what those leave after each run.
  gofin_clear_stack(std::size_t{32} * 1024);
  body();
}

}  // namespace gofin::internal

namespace gofin::detail {
bool RegisterCurrentThread() { return internal::RegisterThread(); }
void UnregisterCurrentThread() { internal::UnregisterThread(); }
void SwitchStack(void* lo, void* hi, void** prev_lo, void** prev_hi) noexcept {
  std::uintptr_t plo = 0;
  std::uintptr_t phi = 0;
  internal::CurrentStack(plo, phi);
  if (prev_lo != nullptr) *prev_lo = reinterpret_cast<void*>(plo);
  if (prev_hi != nullptr) *prev_hi = reinterpret_cast<void*>(phi);
  internal::SetCurrentStack(reinterpret_cast<std::uintptr_t>(lo),
                            reinterpret_cast<std::uintptr_t>(hi));
}
}  // namespace gofin::detail

namespace gofin {
void SetCurrentStack(void* lo, void* hi) noexcept { detail::SwitchStack(lo, hi, nullptr, nullptr); }
}  // namespace gofin
