#pragma once
// Go: mgcsweep.go. After each mark, every in-use span is unswept (its sweepgen two behind the
// heap's). Allocation sweeps the spans of the class it needs before reusing them (lazy), a
// background thread sweeps the rest, and GC() finishes whatever is left before returning.
// Sweeping frees unmarked objects, queues the C++ destructors of those that have one (they
// are freed once it ran: gc/destructor_queue.hpp), swaps the mark and allocation bitmaps and
// returns empty spans to the page heap.
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
// Frees objects whose queued destructors ran (gc/destructor_queue.hpp), with the world
// stopped and every thread's cache flushed. An object is freed if the sweep that queued it
// was this cycle's (sweepgen `sg`) and its slot still says so; a later cycle's sweep frees it
// otherwise. Consecutive objects of one span are freed with one update of the span's lists.
class DestroyedFreer {
 public:
  DestroyedFreer() = default;
  ~DestroyedFreer() { FinishSpan(); }
  DestroyedFreer(const DestroyedFreer&) = delete;
  DestroyedFreer& operator=(const DestroyedFreer&) = delete;
  // False if the object was left for the sweep.
  bool Free(void* obj, std::uint32_t sg);

 private:
  void FinishSpan();
  Span* cur_ = nullptr;
  std::uint32_t freed_in_cur_ = 0;
};
// Bytes the scavenger should leave resident after this cycle (Go: the scavenger's goal).
void SetScavengeGoal(std::uint64_t bytes);

}  // namespace gofin::internal
