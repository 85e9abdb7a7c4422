#pragma once
// Collection (Go: runtime.GC, runtime.ReadMemStats, runtime/debug).
#include <cstdint>

namespace gofin {

// A full collection. Returns once marking and sweeping are complete: every finalizer of an
// object unreachable at the call is queued and the destructors of every object it freed ran.
void GC();

// Go: runtime.MemStats, with Go's field meanings.
struct MemStats {
  std::uint64_t Alloc, TotalAlloc, Sys, Mallocs, Frees, HeapAlloc, HeapSys, HeapIdle, HeapInuse,
      HeapReleased, HeapObjects, NextGC, LastGC, PauseTotalNs, NumGC, NumForcedGC;
};
MemStats ReadMemStats();

namespace debug {
// Returns the previous value; a negative value turns pacing off (only GC() and the memory
// limit collect).
int SetGCPercent(int percent);
// Returns the previous limit in bytes; a negative value only reads it.
std::int64_t SetMemoryLimit(std::int64_t limit);
}  // namespace debug

}  // namespace gofin
