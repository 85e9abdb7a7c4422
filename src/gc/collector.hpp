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

// The collector's moments that a layer above follows (the heap profile's three-cycle
// bookkeeping, Go's mProf_NextCycle / mProf_Flush / mProf_PostSweep). Each function is
// optional. mark_done runs with the world stopped after the mark (no lock of gofin's may be
// taken there that a stopped thread could hold); world_restarted runs on the collecting
// thread right after the restart; sweep_done when GC() has finished the cycle's sweep.
struct CycleHooks {
  void (*mark_done)() = nullptr;
  void (*world_restarted)() = nullptr;
  void (*sweep_done)() = nullptr;
};
// At initialization; at most four sets.
void AddCycleHooks(const CycleHooks& hooks);
// Runs the sweep_done hooks (GC() once its sweep is complete).
void CycleSweepDone();

// Go: memstats.pause_ns / pause_end, the last 256 cycles' stopped time and end, and the
// collector's CPU time since the program started (Go: gcController's GC CPU).
void CopyPauses(std::uint64_t (&pause_ns)[256], std::uint64_t (&pause_end)[256]);  // NOLINT
double GCCPUFraction();

// The low end of the calling thread's stack segment that holds sp (its own stack, its
// SetCurrentStack segment or its alternate signal stack), or sp when gofin does not know it.
std::uintptr_t CurrentStackLow(std::uintptr_t sp);

// Stops the world for a consistent read (ReadMemStats); runs fn with the world stopped and
// every thread cache flushed.
// kCollectorWork counts the stop as the most recent cycle's pause (MemStats::PauseNs); a stop
// to read counters does not count, as in Go.
enum class StopKind { kRead, kCollectorWork };
void WithWorldStopped(void (*fn)(void*), void* arg, StopKind kind = StopKind::kRead);

}  // namespace gofin::internal
