#pragma once
// Go: the cleanup queue of mcleanup.go (cleanupQueue, cleanupBlock, runCleanups), Go 1.25's
// design: cleanups are not finalizers. There is no resurrection, so the sweep that finds an
// object dead frees it in the same cycle and queues its cleanups here; the queue is its own
// (not the finalizer queue), drained by up to max(workers/4, 1) cleanup threads that run in
// parallel with each other and never wait for the finalizer thread.
//
//   sweep:   dead object's cleanup records -> their boxes, one batch per span (one lock)
//   mark:    every queued box is marked and scanned (what fn and arg reference lives)
//   threads: each takes a block and claims its boxes from the end, no gofin lock held; while
//            entries remain, a sleeping thread is woken (or, up to the limit, a thread
//            started) to claim from the same block, so that a cleanup that blocks, even on
//            another cleanup of its block, holds up no other (gofin's departure: Go runs a
//            block on one goroutine)
//
// The blocks live off the GC heap (fixalloc); the marker walks every block ever made and reads
// [0, cnt), so moving blocks between lists needs no care about where a stop lands.
#include <chrono>
#include <cstddef>
#include <cstdint>

namespace gofin::internal {

class MarkWorker;

// Queues the boxes of one span's sweep under one lock, waking the threads once.
class CleanupBatch {
 public:
  CleanupBatch() = default;
  ~CleanupBatch();
  CleanupBatch(const CleanupBatch&) = delete;
  CleanupBatch& operator=(const CleanupBatch&) = delete;
  // False when no queue memory could be had: the caller runs nothing and the cleanup is lost
  // (Go's queue cannot fail; gofin's metadata map can, when the OS refuses memory).
  [[nodiscard]] bool Add(void* box);

 private:
  std::size_t added_ = 0;
  bool locked_ = false;
};

// Marks (and so scans) every queued box, with the world stopped.
void MarkCleanupQueueRoots(MarkWorker& w);
// Starts the first cleanup thread, or another when work was queued while every thread was
// busy (Go: needG, createGs; a running thread also starts one when its block holds more).
// Called by AddCleanup; two relaxed loads when nothing is wanted. Never from inside a guard.
void StartCleanupThreads();
// After fork(), in the child: the threads are gone; queued cleanups wait for the next
// AddCleanup to start one.
void ResetCleanupQueueAfterFork();
bool WaitForCleanupsFor(std::chrono::nanoseconds timeout);
std::uint64_t CleanupsQueued();
std::uint64_t CleanupsExecuted();
std::uint64_t CleanupsPending();

}  // namespace gofin::internal
