#pragma once
// Go: finq, finc, allfin, finblock, fing, runfinq, wakefing (mfinal.go). Finalizers the sweeper
// found ready wait in blocks of records outside the GC heap; one dedicated thread takes the
// whole queue at a time and runs them one by one, with no gofin lock held.
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>

#include "heap/heap.hpp"

namespace gofin::internal {

// Runs a finalizer: invoke(ctx, obj) (include/gofin/finalizer.hpp builds both).
using FinalizerInvoke = void (*)(void* ctx, void* obj);

// Go: finalizer (the queued record).
struct QueuedFinalizer {
  void* obj;
  FinalizerInvoke invoke;
  void* ctx;
};

// Go: finblock. 4 KiB, off the GC heap.
struct FinBlock {
  static constexpr std::size_t kRecords = (4096 - 64) / sizeof(QueuedFinalizer);
  FinBlock* alllink = nullptr;  // every block ever made: the marker scans them all
  FinBlock* next = nullptr;     // finq or finc
  // Records [0, cnt) are live. The finalizer thread lowers cnt before running a record, so
  // the block stops rooting it; the thread's own stack roots it while it runs. Relaxed: the
  // marker reads it with the world stopped.
  std::atomic<std::uint32_t> cnt{0};
  // Not initialised: only records below cnt are ever read, and a fresh block's 4 KiB would
  // otherwise be cleared for nothing each time the queue grows.
  QueuedFinalizer fin[kRecords];
};

// Go: queuefinalizer, for several records: holds the queue's lock from construction to
// destruction, which wakes the finalizer thread once. Called by the sweeper inside a span's
// sweep, so no collection (and no reader of cnt) runs while it is open: the records are
// written through a cursor and the block's count published when the block is left. Never
// allocates from the GC heap (and never runs user code while it holds the lock).
class FinalizerQueueBatch {
 public:
  FinalizerQueueBatch();
  ~FinalizerQueueBatch();
  FinalizerQueueBatch(const FinalizerQueueBatch&) = delete;
  FinalizerQueueBatch& operator=(const FinalizerQueueBatch&) = delete;
  void Add(void* obj, FinalizerInvoke invoke, void* ctx) {
    if (next_ == end_) [[unlikely]]
      NextBlock();
    *next_++ = QueuedFinalizer{obj, invoke, ctx};
  }

 private:
  // Publishes the current block's count and moves to a block with room at finq's head.
  void NextBlock();
  void Publish();

  // No collection (whose marker reads the counts) while the batch is open: nested, and so
  // free, in the sweeps that open batches; it also covers a caller outside one.
  StwGuard no_collection_;
  FinBlock* block_ = nullptr;
  QueuedFinalizer* next_ = nullptr;
  QueuedFinalizer* end_ = nullptr;
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
