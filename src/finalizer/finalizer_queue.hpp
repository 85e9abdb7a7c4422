#pragma once
// Go: finq, finc, allfin, finblock, fing, runfinq, wakefing (mfinal.go). Finalizers the sweeper
// found ready wait in blocks of records outside the GC heap; one dedicated thread takes the
// whole queue at a time and runs them one by one, with no gofin lock held.
#include <chrono>
#include <cstdint>
#include <exception>

namespace gofin::internal {

// Runs a finalizer: invoke(ctx, obj) (include/gofin/finalizer.hpp builds both).
using FinalizerInvoke = void (*)(void* ctx, void* obj);

// Go: queuefinalizer, for several records: holds the queue's lock from construction to
// destruction, which wakes the finalizer thread once. Called by the sweeper; never allocates
// from the GC heap (and never runs user code while it holds the lock).
class FinalizerQueueBatch {
 public:
  FinalizerQueueBatch();
  ~FinalizerQueueBatch();
  FinalizerQueueBatch(const FinalizerQueueBatch&) = delete;
  FinalizerQueueBatch& operator=(const FinalizerQueueBatch&) = delete;
  void Add(void* obj, FinalizerInvoke invoke, void* ctx);

 private:
  std::uint64_t added_ = 0;
};
// One record.
void QueueFinalizer(void* obj, FinalizerInvoke invoke, void* ctx);
// Go: createfing. Starts the finalizer thread once.
void CreateFinalizerThread();
// Go: the finalizer queue is a root (markroot's allfin walk); marks queued objects and boxes.
void MarkFinalizerQueueRoots(class MarkWorker& w);
bool BlockUntilEmptyFinalizerQueue(std::chrono::nanoseconds timeout);

// Go: fingStatus bits.
enum FingStatus : std::uint32_t {
  kFingCreated = 1U << 0,
  kFingRunningFinalizer = 1U << 1,
  kFingWait = 1U << 2,
  kFingWake = 1U << 3,
};
std::uint32_t FinalizerThreadStatus();

struct FinalizerCounters {
  std::uint64_t queued;
  std::uint64_t executed;
};
FinalizerCounters ReadFinalizerCounters();

}  // namespace gofin::internal
