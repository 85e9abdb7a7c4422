#pragma once
// Go: m.locks and async preemption. A thread may be stopped for a collection only at a safe
// point: anywhere outside gofin's critical regions. A critical region (any heap lock, the
// allocation fast path, a span being swept) defers the stop signal until the region ends, so
// the collector never finds a heap structure half-updated and never waits on a lock held by
// a stopped thread.
#include <atomic>
#include <csignal>

namespace gofin::internal {

struct ThreadCache;

// Per-thread state the stop signal handler reads; initial-exec TLS so that the handler can
// touch it without calling into the dynamic linker (async-signal-safe).
struct ThreadLocalState {
  int nosafepoint = 0;                             // depth of critical regions
  volatile std::sig_atomic_t preempt_pending = 0;  // a stop arrived inside a region
  ThreadCache* cache = nullptr;                    // Go: mcache; set once the thread is registered
  void* record = nullptr;                          // gc/thread_registry's record for this thread
  int guard_depth = 0;                             // nesting of StwGuard (heap.hpp)
  bool destructor_thread = false;                  // gc/destructor_queue's runner
  // A gofin thread that only touches the heap inside StwGuards (the background sweeper): it
  // gets a cache but is never registered, stopped or scanned.
  bool gc_internal = false;
  // The thread's exit hook (thread_registry's thread_local guard) has run: a later
  // registration (a thread_local or pthread_key destructor calling gofin) is undone by a
  // pthread_key destructor instead, which runs after every thread_local destructor.
  bool exit_hook_ran = false;
};

extern constinit thread_local ThreadLocalState t_local __attribute__((tls_model("initial-exec")));

// Implemented by the gc layer (gc/stop_the_world.cpp): parks the calling thread when a stop
// request arrived while it was inside a critical region.
void ParkAtSafepoint() noexcept;

inline void EnterNoPreempt() noexcept {
  ++t_local.nosafepoint;
  // The signal handler runs on this thread: a compiler fence orders the store before it.
  std::atomic_signal_fence(std::memory_order_seq_cst);
}

inline void ExitNoPreempt() noexcept {
  std::atomic_signal_fence(std::memory_order_seq_cst);
  if (--t_local.nosafepoint == 0 && t_local.preempt_pending != 0) ParkAtSafepoint();
}

// RAII critical region.
class NoPreempt {
 public:
  NoPreempt() noexcept { EnterNoPreempt(); }
  ~NoPreempt() { ExitNoPreempt(); }
  NoPreempt(const NoPreempt&) = delete;
  NoPreempt& operator=(const NoPreempt&) = delete;
};

}  // namespace gofin::internal
