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
// The vector state a stop saves (bdwgc scans the signal context's FP area too): XMM0-15, the
// YMM upper halves, the AVX-512 opmasks, ZMM upper halves and ZMM16-31, in words.
inline constexpr std::size_t kSavedVectorWords = (256 + 256 + 64 + 512 + 1024) / 8;
inline constexpr std::size_t kSavedCalleeRegisters = 6;  // rbx, rbp, r12-r15

// Go: m
struct ThreadRecord {
  pthread_t thread{};
  pid_t tid = 0;
  std::uintptr_t stack_lo = 0;
  std::uintptr_t stack_hi = 0;  // the stack's base (highest address)
  // Published when the thread parks for a stop: the lowest live address of the stack it was
  // interrupted on (red zone included; that stack may be another than its own) and its
  // registers. Zero while the thread runs.
  std::atomic<std::uintptr_t> stopped_sp{0};
  // The epoch (stop_the_world.cpp) of the stop this thread last parked for, plus one: a stop
  // signal that arrives twice for one stop (the fallback signal after a retried one) must not
  // be acknowledged twice.
  std::atomic<std::uint32_t> parked_epoch{0};
  // At the stop, when the thread ran on its alternate signal stack: its bounds, else zero.
  std::uintptr_t altstack_lo = 0;
  std::uintptr_t altstack_hi = 0;
  std::uintptr_t regs[kSavedRegisters] = {};
  std::uintptr_t vector_regs[kSavedVectorWords] = {};
  // gofin::SetCurrentStack: the user-level stack segment the thread runs on (zero: its own
  // stack), and where it left its own stack, with the callee-saved registers it had there.
  // Written by the thread itself inside a critical region, read by the collector while the
  // thread is stopped.
  std::uintptr_t segment_lo = 0;
  std::uintptr_t segment_hi = 0;
  std::uintptr_t resume_sp = 0;
  std::uintptr_t resume_regs[kSavedCalleeRegisters] = {};
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
// With RegistryLock held and the world stopped: drops the records whose tid the stop set to 0
// (threads that exited without unregistering), and their allocation caches.
void RemoveDeadThreadRecords();
// gofin::SetCurrentStack: the calling thread now runs on [lo, hi) (lo == hi: its own stack).
void SetCurrentStack(std::uintptr_t lo, std::uintptr_t hi) noexcept;
void CurrentStack(std::uintptr_t& lo, std::uintptr_t& hi) noexcept;
// After fork(), in the child: only the forking thread exists.
void ResetRegistryAfterFork();

// The body of each of gofin's own threads (finalizer, cleanup, destructor, sweeper), run
// named for top and gdb ("gofin-sweep"; 15 characters at most) and on a cleared stack. glibc
// gives a new thread the cached stack of one that exited, not zeroed: the slots that this
// thread's frames leave unwritten would still hold the old thread's GC pointers, and every
// collection that scans this thread while it waits would keep those objects alive.
void RunGofinThread(const char* name, void (*body)());

}  // namespace gofin::internal
