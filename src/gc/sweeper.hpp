#pragma once
// Go: mgcsweep.go. After each mark, every in-use span is unswept (its sweepgen two behind the
// heap's). Allocation sweeps the spans of the class it needs before reusing them (lazy), a
// background thread sweeps the rest, and GC() finishes whatever is left before returning.
// Sweeping frees unmarked objects, runs their C++ destructors with no gofin lock held, swaps
// the mark and allocation bitmaps and returns empty spans to the page heap.
#include <cstddef>
#include <cstdint>

namespace gofin::internal {

struct Span;

// Go: the specials part of mspan.sweep, supplied by the specials layer. Called for a span
// with specials before its objects are freed; it may mark objects (resurrection).
using SweepSpecialsFn = void (*)(Span* s);
void SetSweepSpecialsHook(SweepSpecialsFn fn);

// Go: sweepone until none is left, then waits for sweeps other threads have claimed.
void FinishSweep();
// Starts the background sweeper (once) and wakes it for a new cycle.
void WakeBackgroundSweeper();
// After fork(), in the child: the sweeper thread is gone; a new one starts with the next cycle.
void ResetSweeperAfterFork();
// Bytes the scavenger should leave resident after this cycle (Go: the scavenger's goal).
void SetScavengeGoal(std::uint64_t bytes);

}  // namespace gofin::internal
