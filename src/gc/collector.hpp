#pragma once
// Go: mgc.go. One collection cycle: finish the previous sweep, stop the world, flush the
// thread caches, mark from the roots, advance the sweep generation, restart the world and
// let the sweepers free what was not marked.
#include <cstdint>

namespace gofin::internal {

// Reads the environment, installs the stop signal and starts the mark workers; idempotent.
void EnsureCollectorInitialized();

struct GcConfig {
  int workers = 1;       // GOFIN_GCWORKERS
  bool gctrace = false;  // GOFIN_DEBUG=gctrace=1
};
const GcConfig& Config();

// Go: work.cycles / memstats.numgc and friends.
struct CycleCounters {
  std::uint64_t num_gc;
  std::uint64_t num_forced_gc;
  std::uint64_t pause_total_ns;
  std::uint64_t last_gc_unix_ns;
};
CycleCounters Counters();

// The low end of the calling thread's stack segment that holds sp (its own stack, its
// SetCurrentStack segment or its alternate signal stack), or sp when gofin does not know it.
std::uintptr_t CurrentStackLow(std::uintptr_t sp);

// Stops the world for a consistent read (ReadMemStats); runs fn with the world stopped and
// every thread cache flushed.
void WithWorldStopped(void (*fn)(void*), void* arg);

}  // namespace gofin::internal
