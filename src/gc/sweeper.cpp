#include "gc/thread_registry.hpp"
#include "gc/sweeper.hpp"

#include <bit>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>

#include "gc/destructor_queue.hpp"
#include "gc/generations.hpp"
#include "heap/central.hpp"
#include "heap/heap.hpp"
#include "heap/hooks.hpp"
#include "trace/trace.hpp"

namespace gofin::internal {

namespace {

constinit std::atomic<SweepSpecialsFn> g_sweep_specials{nullptr};
constinit std::atomic<std::uint64_t> g_scavenge_goal{0};

struct Background {
  std::mutex lock;
  std::condition_variable wake;
  std::uint64_t requested = 0;
  bool started = false;
};
constinit Background* g_bg = nullptr;
Background& Bg() {
  [[maybe_unused]] static Background* b = g_bg = new Background();  // NOLINT: lives for the process
  return *g_bg;
}

// Counts set bits a word at a time (SWAR): x86-64's baseline has no popcnt instruction, and
// std::popcount would call libgcc per byte. Bits past nelems are never set.
std::size_t PopCount(const std::uint8_t* bits, std::size_t nbits) {
  std::size_t n = 0;
  const std::size_t nwords = (nbits + 63) / 64;
  for (std::size_t i = 0; i < nwords; ++i) {
    std::uint64_t v = 0;
    std::memcpy(&v, bits + i * 8, sizeof(v));
    v = v - ((v >> 1) & 0x5555555555555555ULL);
    v = (v & 0x3333333333333333ULL) + ((v >> 2) & 0x3333333333333333ULL);
    v = (v + (v >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
    n += static_cast<std::size_t>((v * 0x0101010101010101ULL) >> 56);
  }
  return n;
}

// Queues the destructors of s's dead objects (gc/destructor_queue.hpp): each stays allocated,
// marked, for one more cycle, its slot saying so (kDtorQueued). The first sweep that finds such
// an object unmarked (the queue marks it until its destructor returned) clears the slot and
// frees it.
void QueueDestructors(Span* s, std::uint32_t sg) {
  DestructorBatch batch(sg);
  const std::size_t n = s->large ? 1 : s->nelems;
  for (std::size_t i = 0; i < n; ++i) {
    DtorSlot& d = *s->DtorFor(i);
    if (d.fn == nullptr || s->IsMarked(i) || !s->IsAllocated(i)) continue;
    if (d.fn == kDtorQueued) {
      d = {};
      continue;
    }
    s->SetMarkNonAtomic(i);  // kept: queued, or (no queue memory) tried again next cycle
    if (batch.Add(reinterpret_cast<void*>(s->ObjBase(i)), s->elemsize, d)) {
      d = DtorSlot{kDtorQueued, 0};
    }
  }
}

// Ends a claimed span's sweep. release: FinishSweep (GC() and every cycle's start) waits for
// sweeps_in_flight to reach zero with an acquire load, and from then on reads the spans other
// threads swept (freeindex, the swapped bitmaps, FindObject, the next mark) without taking a
// lock or reading each span's sweepgen. A relaxed decrement would let that load see zero
// without synchronizing with the sweeper's writes (ThreadSanitizer: the background sweeper's
// SetFreeIndex and bitmap swap racing a FindObject after GC()). Every release decrement heads
// a release sequence that the later decrements continue, so the load that sees zero
// synchronizes with all of them.
void EndSweep() { g_heap.sweeps_in_flight.fetch_sub(1, std::memory_order_release); }

void SweepOneClaimed(Span* s) { SweepSpan(s, /*preserve=*/false); }

void BackgroundSweeper() {
  // It sweeps (and queues destructors) only inside guards, during which no collection runs:
  // it is never a mutator the collector must stop or scan.
  t_local.gc_internal = true;
  Background& b = Bg();
  std::uint64_t done = 0;
  for (;;) {
    {
      std::unique_lock lock(b.lock);
      b.wake.wait(lock, [&] { return b.requested != done; });
      done = b.requested;
    }
    // Go: bgsweep. One span per guard, so a collection waits for at most one span.
    const trace::SweepScope trace_scope(trace::SweepBy::kBackground);
    std::size_t cursor = 0;
    for (;;) {
      StwGuard guard;
      Span* s = NextSpanForSweep(cursor);
      if (s == nullptr) break;
      SweepOneClaimed(s);
    }
    trace::CloseSweepRun();
    // Go: bgscavenge, folded in: return idle memory beyond the goal to the OS.
    const std::uint64_t goal = g_scavenge_goal.load(std::memory_order_relaxed);
    if (goal != 0) {
      StwGuard guard;
      std::lock_guard lock(g_heap.lock);
      g_heap.pages.ScavengeTo(goal, g_heap.arenas);
    }
    // Outside every guard, before it sleeps: the timeline may be written from here.
    trace::FlushIfDue();
  }
}

}  // namespace

void SetSweepSpecialsHook(SweepSpecialsFn fn) {
  g_sweep_specials.store(fn, std::memory_order_release);
}

void SetScavengeGoal(std::uint64_t bytes) {
  g_scavenge_goal.store(bytes, std::memory_order_relaxed);
}

bool SweepSpan(Span* s, bool preserve) {
  // The timeline: this span joins the thread's run of swept spans (trace_buffer.hpp).
  trace::SpanSweepTimer trace_sweep;
  const std::uint32_t sg = g_heap.sweepgen.load(std::memory_order_relaxed);
  const bool keep_marks = SweepKeepsMarks();
  // The marks as the mark phase left them, when the specials sweep may add some: an object it
  // marks (resurrected to run its finalizer) is kept but must not become old. It is reachable
  // from the finalizer queue until its finalizer ran, and after that only a young object is
  // freed by the next cycle, minor or not, as Go frees it.
  // Objects kept for their destructors are the same: marked here, and young.
  alignas(8) std::uint8_t marked_by_mark[kBitmapBytes + 8];
  const bool has_dtors = s->large ? s->large_dtor.fn != nullptr : s->dtors != nullptr;
  const bool resurrects = s->special_count != 0 || has_dtors;
  if (resurrects && keep_marks) std::memcpy(marked_by_mark, s->mark_bits, sizeof(marked_by_mark));
  if (s->special_count != 0) {
    if (SweepSpecialsFn fn = g_sweep_specials.load(std::memory_order_acquire)) fn(s);
  }
  if (has_dtors) QueueDestructors(s, sg);
  const std::size_t sizeclass = s->spanclass.SizeClass();
  if (s->large) {
    if (s->IsMarked(0)) {
      if (!keep_marks || (resurrects && (marked_by_mark[0] & 1U) == 0)) s->mark_bits[0] = 0;
      s->sweepgen.store(sg, std::memory_order_release);
      EndSweep();
      if (!preserve) FileSweptSpan(s);
      return true;
    }
    g_heap.nfree_large.fetch_add(1, std::memory_order_relaxed);
    g_heap.bytes_free_large.fetch_add(s->elemsize, std::memory_order_relaxed);
    trace_sweep.Freed(1, s->elemsize);
    trace_sweep.SpanFreed();
    s->sweepgen.store(sg, std::memory_order_release);
    FreeSpanToHeap(s);
    EndSweep();
    return false;
  }

  // Go: the bitmap swap at the end of mspan.sweep. The mark bits become the allocation bits;
  // the old allocation bits, cleared, become the next cycle's mark bits.
  const std::size_t nalloc = PopCount(s->mark_bits, s->nelems);
  const std::size_t nfreed = s->alloc_count - nalloc;
  trace_sweep.Freed(nfreed, nfreed * s->elemsize);
  std::swap(s->alloc_bits, s->mark_bits);
  if (keep_marks) {
    // Sticky marks (gc/generations.hpp): the survivors stay marked as old objects.
    std::memcpy(s->mark_bits, s->alloc_bits, kBitmapBytes + 8);
    if (resurrects) {
      for (std::size_t i = 0; i < kBitmapBytes + 8; ++i) s->mark_bits[i] &= marked_by_mark[i];
    }
  } else {
    std::memset(s->mark_bits, 0, kBitmapBytes + 8);
  }
  s->SetFreeIndex(0);
  s->alloc_count = static_cast<std::uint32_t>(nalloc);
  s->RefillAllocCache(0);
  if (nfreed > 0) {
    s->needzero = true;
    g_heap.nfree_small[sizeclass].fetch_add(nfreed, std::memory_order_relaxed);
  }
  // release: the swept bitmaps are visible to whoever sees the new sweepgen.
  s->sweepgen.store(sg, std::memory_order_release);
  EndSweep();
  if (preserve) return true;
  if (nalloc == 0) {
    trace_sweep.SpanFreed();
    FreeSpanToHeap(s);
    return false;
  }
  FileSweptSpan(s);
  return true;
}

bool DestroyedFreer::Free(void* obj, std::uint32_t sg) {
  const auto p = reinterpret_cast<std::uintptr_t>(obj);
  Span* s = cur_ != nullptr && cur_->Contains(p) ? cur_ : g_heap.arenas.SpanOfHeap(p);
  if (s == nullptr || s->state != SpanState::kInUse || !s->Contains(p)) return false;
  if (g_heap.sweepgen.load(std::memory_order_relaxed) != sg ||
      s->sweepgen.load(std::memory_order_relaxed) != sg) {
    return false;  // a later cycle began: its sweep frees the object
  }
  const std::size_t i = s->ObjIndex(p);
  DtorSlot* d = s->DtorFor(i);
  // Within one cycle a slot is freed only by this call or a sweep, so the sentinel still names
  // the object the destructor ran for; a kept object's mark bit is clear (it stays young).
  if (s->ObjBase(i) != p || d == nullptr || d->fn != kDtorQueued || !s->IsAllocated(i) ||
      s->IsMarked(i)) {
    return false;
  }
  *d = {};
  if (s->large) {
    FinishSpan();
    Central& c = g_heap.central[s->spanclass.value];
    {
      std::lock_guard lock(c.lock);
      if (s->list != nullptr) static_cast<SpanList*>(s->list)->Remove(s);
    }
    g_heap.nfree_large.fetch_add(1, std::memory_order_relaxed);
    g_heap.bytes_free_large.fetch_add(s->elemsize, std::memory_order_relaxed);
    FreeSpanToHeap(s);
    return true;
  }
  if (s != cur_) {
    FinishSpan();
    cur_ = s;
    // Everything below freeindex is allocated, whatever its bit says (objects handed out
    // since the sweep): write that into the bits, so that freeindex may go back to 0 and the
    // freed slots be found by the next allocation from the span, as after a sweep.
    if (const std::uint32_t fi = s->freeindex; fi != 0) {
      std::memset(s->alloc_bits, 0xff, fi / 8);
      if (fi % 8 != 0) s->alloc_bits[fi / 8] |= static_cast<std::uint8_t>((1U << (fi % 8)) - 1);
      s->SetFreeIndex(0);
    }
  }
  s->alloc_bits[i / 8] &= static_cast<std::uint8_t>(~(1U << (i % 8)));
  --s->alloc_count;
  ++freed_in_cur_;
  return true;
}

// Counts the current span's freed objects and files it anew (full -> partial), or gives it
// back to the page heap once empty: once per span, not per object.
void DestroyedFreer::FinishSpan() {
  Span* s = cur_;
  if (s == nullptr) return;
  cur_ = nullptr;
  if (freed_in_cur_ == 0) return;
  s->needzero = true;
  g_heap.nfree_small[s->spanclass.SizeClass()].fetch_add(freed_in_cur_, std::memory_order_relaxed);
  freed_in_cur_ = 0;
  Central& c = g_heap.central[s->spanclass.value];
  {
    std::lock_guard lock(c.lock);
    if (s->list != nullptr) static_cast<SpanList*>(s->list)->Remove(s);
  }
  if (s->alloc_count == 0) {
    FreeSpanToHeap(s);
  } else {
    FileSweptSpan(s);
  }
}

void FinishSweep() {
  const trace::SweepScope trace_scope(trace::SweepBy::kFinish);
  std::size_t cursor = 0;
  for (;;) {
    StwGuard guard;
    Span* s = NextSpanForSweep(cursor);
    if (s == nullptr) break;
    SweepOneClaimed(s);
  }
  // acquire: pairs with EndSweep's release; every span swept by another thread is visible.
  while (g_heap.sweeps_in_flight.load(std::memory_order_acquire) != 0) sched_yield();
}

void ResetSweeperAfterFork() {
  (void)Bg();
  g_bg = new Background();  // NOLINT: the sweeper thread did not survive the fork
  g_heap.sweeps_in_flight.store(0, std::memory_order_relaxed);
}

void WakeBackgroundSweeper() {
  Background& b = Bg();
  std::lock_guard lock(b.lock);
  if (!b.started) {
    std::thread(RunGofinThread, "gofin-sweep", &BackgroundSweeper).detach();
    b.started = true;
  }
  ++b.requested;
  b.wake.notify_one();
}

}  // namespace gofin::internal
