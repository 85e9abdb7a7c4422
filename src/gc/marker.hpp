#pragma once
// Go: mgcmark.go (markroot, scanblock, scanobject, greyobject, gcDrain) and the worker side of
// mgc.go (gcBgMarkWorker). gofin marks with the world stopped, on up to GOFIN_GCWORKERS
// threads; every word is a candidate pointer (conservative), interior pointers included.
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "gc/roots.hpp"
#include "gc/work_queue.hpp"

namespace gofin::internal {

struct Span;
struct HeapArena;
class PhaseState;

// One mark worker's view: its queue and counters. The specials layer marks through it.
class MarkWorker {
 public:
  // exclusive: the only worker of its phase, so it may set mark bits without a locked
  // instruction (nothing else marks while the world is stopped).
  MarkWorker(WorkQueue& q, std::atomic<bool>& overflow, bool exclusive = false);

  // Go: scanblock. Every word of [lo, hi) that points into an allocated object greys it.
  void ScanRange(std::uintptr_t lo, std::uintptr_t hi);
  // Go: greyobject via findObject. Marks the object containing p, if any; p is an exact
  // pointer (a record's), so a boundary does not keep the object before it.
  void MarkPointer(std::uintptr_t p);
  // Marks the object at exactly p without scanning it or counting it as live (a queued
  // destructor's object: it is garbage, and what it references may die).
  void MarkObjectOnly(std::uintptr_t p);
  // Scans the words of the object at base without marking the object itself.
  void ScanObjectContents(std::uintptr_t base);
  // The same for an object with a finalizer (Go: markrootSpans: what it references lives, it
  // itself may die), skipping its pointers into itself (they do not keep it alive).
  void ScanFinalizedContents(std::uintptr_t base);
  // The span whose objects the caller is about to pass to ScanObjectContents (markrootSpans
  // walks one span at a time): saves a span lookup per object. nullptr clears it.
  void SetSpanHint(const Span* s) { hint_ = s; }
  // Go: gcDrain. Scans grey objects until none are left locally or to steal; offers work
  // to the phase's idle workers now and then.
  void Drain(const PhaseState& state);

  [[nodiscard]] std::uint64_t BytesMarked() const { return bytes_marked_; }

 private:
  // entry: a work-queue entry (an address, tagged with the size for small objects).
  inline void ScanObject(std::uintptr_t entry);
  // The bodies of MarkPointer and ScanRange, inlined into the drain loop: the mark loop is
  // bound by instructions per object (a 16-byte object is two words), and a call per word
  // costs as much as the test it makes.
  template <bool kBoundary>
  inline void MarkPointerInline(std::uintptr_t p);
  inline void MarkIndex(Span* s, std::size_t i);
  void MarkNoScanEndingAt(std::uintptr_t p);
  inline void ScanWords(std::uintptr_t lo, std::uintptr_t hi);
  void ScanWordsExceptSelf(std::uintptr_t lo, std::uintptr_t hi, std::uintptr_t self_lo,
                           std::uintptr_t self_hi);

  WorkQueue& queue_;
  std::atomic<bool>& overflow_;
  std::uint64_t bytes_marked_ = 0;
  const Span* hint_ = nullptr;
  bool exclusive_ = false;
  // The span the last marked pointer fell in: neighbouring objects point at each other (a
  // structure is mostly allocated in order), so the next pointer is often in it too and
  // needs no arena or page lookup. Spans do not change while the world is stopped.
  Span* last_span_ = nullptr;
  std::uintptr_t last_start_ = 0;
  std::uintptr_t last_bytes_ = 0;
  // The arena index as of this phase: no arena is added while the world is stopped.
  const std::atomic<HeapArena*>* arenas_ = nullptr;
  std::uintptr_t arena_lo_ = 0;
  std::uintptr_t arena_count_ = 0;
  // The arenas' address range, [heap_lo_, heap_lo_ + heap_bytes_): a word outside it is no
  // pointer into the heap.
  std::uintptr_t heap_lo_ = 0;
  std::uintptr_t heap_bytes_ = 0;
};

// Go: markrootSpans, the finalizer queue root and friends, supplied by the layers above: each
// is called once per cycle on one worker after the roots are queued.
using ExtraRootsFn = void (*)(MarkWorker& w);
void AddExtraRootsHook(ExtraRootsFn fn);
// A root job that every worker of the phase shares (Go: markrootSpans is split into one job
// per span-bitmap chunk): each worker calls fn after its root ranges, and fn claims units of
// its own choosing with next_unit.fetch_add until none are left. next_unit starts at 0 in
// every phase.
using ParallelRootsFn = void (*)(MarkWorker& w, std::atomic<std::size_t>& next_unit);
void AddParallelRootsHook(ParallelRootsFn fn);

struct MarkResult {
  std::uint64_t bytes_marked = 0;
  int workers = 0;
};

// Starts the worker threads (before any stop: thread creation may allocate).
void InitMarkWorkers(int nworkers);
void ResetMarkWorkersAfterFork();
// The mark phase; the world is stopped and roots holds every root range. max_workers caps the
// workers (a minor cycle's mark is small: waking helpers costs more than they save).
MarkResult Mark(const RootRangeList& roots, int max_workers = 256);

// Caps the memory the mark queue's buffers may take (default 256 MiB), so that a test can make
// the queue overflow and exercise the rescan; 0 restores the default. Call with no collection
// running.
void SetMarkQueueCapForTesting(std::size_t bytes);

}  // namespace gofin::internal
