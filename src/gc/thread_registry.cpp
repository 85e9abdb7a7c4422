#include "gc/thread_registry.hpp"

#include <sys/syscall.h>
#include <unistd.h>

#include <ctime>
#include <memory>

#include "gc/collector.hpp"
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
  timespec zero{0, 0};
  nanosleep(&zero, nullptr);
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
  }
};
thread_local ExitGuard t_exit_guard;

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
  {
    std::lock_guard lock(RegistryLock());
    ThreadRecord* r = g_record_alloc.Alloc();
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
  t_exit_guard.armed = true;
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
  t_exit_guard.armed = false;
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

}  // namespace gofin::internal

namespace gofin::detail {
bool RegisterCurrentThread() { return internal::RegisterThread(); }
void UnregisterCurrentThread() { internal::UnregisterThread(); }
}  // namespace gofin::detail
