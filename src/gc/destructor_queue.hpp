#pragma once
// C++ destructors of swept objects (gofin's addition: Go objects have none). A destructor is
// user code, and user code may take any lock the program holds around an allocation: so no
// allocation or collection ever runs one, and no stop waits for one. The sweep keeps a dead
// object that has a destructor allocated, like an object resurrected for its finalizer, and
// queues (object, destructor); a destructor thread runs the queue with no gofin lock held.
// While queued, an object is marked by every cycle but not scanned: what it references may be
// freed (API.md: a destructor must not touch other GC objects), so a list of objects with
// destructors dies in one cycle, not one node per cycle as a list of finalized objects does.
//
//   sweep:   dead object with a DtorSlot -> mark it (kept, young), slot := kDtorQueued, queue
//   mark:    every queued object is marked (MarkObjectOnly), never scanned
//   thread:  runs each destructor, clears the object's memory, moves its entry to `destroyed`
//   GC():    waits for the destructors its cycle queued, then FreeDestroyed gives their memory
//            back with the world stopped for a moment (no mark), so that GC() returns with it
//            free, as before destructors were queued
//   sweep:   otherwise the next cycle finds the object unmarked with a kDtorQueued slot, frees
//            it and clears the slot
//
// While the slot says kDtorQueued, the object counts as free for SetFinalizer (a destructor
// touching a dying neighbour). The design is Go's finalizer queue without resurrection.
#include <chrono>
#include <cstddef>
#include <cstdint>

#include "heap/span.hpp"

namespace gofin::internal {

class MarkWorker;

// Queues destructors for one span's sweep: the queue's lock is taken at the first Add and held
// to the end of the batch (the sweep runs inside a StwGuard, so no marker reads a half-written
// block), and the destructor thread is woken once.
class DestructorBatch {
 public:
  // sweepgen: the cycle of the sweep that queues.
  explicit DestructorBatch(std::uint32_t sweepgen) : sweepgen_(sweepgen) {}
  ~DestructorBatch();
  DestructorBatch(const DestructorBatch&) = delete;
  DestructorBatch& operator=(const DestructorBatch&) = delete;
  // Queues obj's destructor; false when no queue memory could be had (the caller keeps the
  // object for a later cycle).
  [[nodiscard]] bool Add(void* obj, std::size_t size, const DtorSlot& d);

 private:
  std::size_t added_ = 0;
  std::uint32_t sweepgen_;
  bool locked_ = false;
};

// Marks every queued object (with the world stopped), without scanning it.
void MarkDestructorQueueRoots(MarkWorker& w);
// Starts the destructor thread; idempotent. Never from inside a guard (thread creation takes
// libc locks a stopped thread may hold).
void StartDestructorThread();
// After fork(), in the child: the thread is gone; queued destructors wait for a new one.
void ResetDestructorQueueAfterFork();
// Returns once every destructor queued so far has run (not a cancellation point). From the
// destructor thread itself it returns at once.
void WaitForDestructors();
// The same with a timeout: false if it passed first (or on the destructor thread).
bool WaitForDestructorsFor(std::chrono::nanoseconds timeout);
// Gives back the memory of the objects whose destructors ran since the last call, with the
// world stopped briefly (no mark), unless a cycle began since the sweep that queued them (its
// sweep frees them). Returns how many objects were freed. Takes the collector's lock.
std::uint64_t FreeDestroyed();
// Destructors queued and not yet run.
std::size_t DestructorsPending();
// Destructors queued since the program started.
std::uint64_t DestructorsQueued();

}  // namespace gofin::internal
