#pragma once
// Go: stopTheWorld / startTheWorld (proc.go) and async preemption (preempt.go, signal_unix.go).
// A signal stops every registered thread wherever it is (a tight loop, a blocking system
// call); the handler saves the registers to the thread's record, publishes its stack pointer,
// acknowledges and waits. A thread inside one of gofin's critical regions defers the stop to
// the region's end (heap/safepoint.hpp).
#include <cstddef>
#include <cstdint>

namespace gofin::internal {

struct ThreadRecord;

// Chooses the stop signal (GOFIN_STOP_SIGNAL, default SIGRTMIN+7) and installs its handler;
// idempotent.
void InitStopTheWorld();
// The stop signal's number (0 before InitStopTheWorld).
int StopSignal();
// Unblocks the stop signal (and its fallback) in the calling thread: a thread about to be
// registered may have inherited a mask that blocks it.
void UnblockStopSignals();
// Notes in the record which stack the calling thread is on at sp (the alternate signal stack
// or another), for the collector.
void NoteStack(ThreadRecord* r, std::uintptr_t sp);
// The calling thread's alternate signal stack when it is running on it, else false.
bool OnAlternateSignalStack(std::uintptr_t& lo, std::uintptr_t& hi);
// Stops every registered thread but the caller. The caller holds the collector's mutex, no
// StwGuard and no critical region. Returns with RegistryLock() held.
void StopTheWorld();
// Resumes them and releases RegistryLock().
void StartTheWorld();

// Pushes the callee-saved registers and XMM0-15 on the stack and calls fn(arg, sp) with the
// lowest address holding them: scanning [sp, stack base) then covers every register the
// caller had. The callee-saved registers are the kSpilledCalleeRegisters words from
// sp + kSpilledCalleeOffset (r15, r14, r13, r12, rbx, rbp).
using SpilledFn = void (*)(void* arg, std::uintptr_t sp);
extern "C" void gofin_spill_registers_and_call(void* arg, SpilledFn fn);
inline constexpr std::uintptr_t kSpilledCalleeOffset = 264;

// bdwgc: GC_clear_stack. Zeroes `bytes` (a multiple of 8) of dead stack below the caller's
// frame, moving the stack pointer over them first so that a signal handler never shares the
// region, and zeroes the scratch registers, vector ones included: stale copies of pointers the
// caller's callees held can no longer keep their objects alive.
extern "C" void gofin_clear_stack(std::size_t bytes);

}  // namespace gofin::internal
