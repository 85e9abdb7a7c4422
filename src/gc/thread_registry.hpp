#pragma once
// Go: m and allm (runtime2.go, proc.go). Every thread that may hold GC pointers on its stack
// or in its registers is registered here, so that the collector can stop it and scan it.
#include <pthread.h>
#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>

#include "gc/preemptible_mutex.hpp"
#include "heap/safepoint.hpp"

namespace gofin::internal {

struct ThreadCache;

inline constexpr std::size_t kSavedRegisters = 23;  // NGREG on x86-64

// Go: m
struct ThreadRecord {
  pthread_t thread{};
  pid_t tid = 0;
  std::uintptr_t stack_lo = 0;
  std::uintptr_t stack_hi = 0;  // the stack's base (highest address)
  // Published when the thread parks for a stop: the lowest live stack address (red zone
  // included) and its registers. Zero while the thread runs.
  std::atomic<std::uintptr_t> stopped_sp{0};
  std::uintptr_t regs[kSavedRegisters] = {};
  ThreadCache* cache = nullptr;
  ThreadRecord* next = nullptr;
  ThreadRecord* prev = nullptr;
};

// The registry lock. Held by the collector from before the stop to after the restart, so the
// set of threads cannot change under it; never a critical region, so a thread blocked on it
// can still be stopped.
PreemptibleMutex& RegistryLock();
ThreadRecord* RegistryHead();  // with RegistryLock held
ThreadRecord* CurrentThreadRecord();
// Registers the calling thread if it is not yet; true if this call registered it.
bool RegisterThread();
// What every public entry point does first: a thread that holds a GC pointer in its frames
// or registers must be stopped and scanned by any collection from its first call on (Go: every
// goroutine is known to the scheduler). One thread-local test once registered.
inline void EnsureRegistered() {
  if (t_local.record == nullptr && !t_local.gc_internal) [[unlikely]]
    RegisterThread();
}
void UnregisterThread();
// Layers above keep per-thread state (the specials' record cache); fn runs on a registered
// thread as it unregisters, before its allocation cache goes. At most a few hooks.
void AddThreadExitHook(void (*fn)());
std::size_t RegisteredThreadCount();  // approximate, for statistics
// After fork(), in the child: only the forking thread exists.
void ResetRegistryAfterFork();

}  // namespace gofin::internal
