#include "specials/special.hpp"

#include <pthread.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <new>
#include <type_traits>
#include <utility>

#include "gc/marker.hpp"
#include "gc/sweeper.hpp"
#include "gc/thread_registry.hpp"
#include "heap/central.hpp"
#include "heap/fixalloc.hpp"
#include "heap/heap.hpp"
#include "heap/lock.hpp"
#include "heap/prefetch.hpp"

namespace gofin::internal {

namespace {

// Go: mheap_.speciallock and the per-kind fixallocs.
constinit SpinLock g_special_lock;
constinit FixAlloc<SpecialFinalizer> g_finalizer_alloc{};
constinit FixAlloc<SpecialCleanup> g_cleanup_alloc{};
constinit FixAlloc<SpecialWeakHandle> g_weak_alloc{};
constinit FixAlloc<SpecialProfile> g_profile_alloc{};
constinit FixAlloc<SpecialCheckFinalizer> g_check_alloc{};
constinit SpecialKindOps g_ops[kNumSpecialKinds] = {};
// Free records of each kind in chains of RecordCache::kBatch (linked through next), passed
// whole between thread caches. The chains themselves are stacked through their first record's
// storage (ChainLink), so the stack is unbounded and a push or pop is O(1) under the lock
// whatever the number of records a sweep frees.
struct ChainLink : Special {
  Special* next_chain = nullptr;
};
static_assert(sizeof(SpecialFinalizer) >= sizeof(ChainLink) &&
                  sizeof(SpecialCleanup) >= sizeof(ChainLink) &&
                  sizeof(SpecialWeakHandle) >= sizeof(ChainLink) &&
                  sizeof(SpecialProfile) >= sizeof(ChainLink) &&
                  sizeof(SpecialCheckFinalizer) >= sizeof(ChainLink),
              "a free record of every kind must have room to link chains");
struct ChainStack {
  Special* top = nullptr;

  // chain: kBatch free records linked by next (lock held). Its first record's storage is
  // reused as the link to the chain below.
  void Push(Special* chain) {
    Special* rest = chain->next;
    const SpecialKind kind = chain->kind;
    ChainLink* link = std::construct_at(static_cast<ChainLink*>(chain));
    link->next = rest;
    link->kind = kind;  // a thread exiting with part of the chain frees it by kind
    link->next_chain = top;
    top = link;
  }
  Special* Pop() {
    auto* link = static_cast<ChainLink*>(top);
    if (link != nullptr) top = link->next_chain;
    return link;
  }
};
constinit ChainStack g_chains[kNumSpecialKinds] = {};

// Storage for records of `kind`, default-constructed, from the kind's fixalloc (lock held).
Special* AllocRecordLocked(SpecialKind kind) {
  switch (kind) {
    case SpecialKind::kFinalizer:
      return g_finalizer_alloc.Alloc();
    case SpecialKind::kCleanup:
      return g_cleanup_alloc.Alloc();
    case SpecialKind::kWeakHandle:
      return g_weak_alloc.Alloc();
    case SpecialKind::kProfile:
      return g_profile_alloc.Alloc();
    case SpecialKind::kCheckFinalizer:
      return g_check_alloc.Alloc();
  }
  throw std::bad_alloc();  // not a kind: unreachable
}

void FreeRecordLocked(Special* s) {
  switch (s->kind) {
    case SpecialKind::kFinalizer:
      g_finalizer_alloc.Free(static_cast<SpecialFinalizer*>(s));
      break;
    case SpecialKind::kCleanup:
      g_cleanup_alloc.Free(static_cast<SpecialCleanup*>(s));
      break;
    case SpecialKind::kWeakHandle:
      g_weak_alloc.Free(static_cast<SpecialWeakHandle*>(s));
      break;
    case SpecialKind::kProfile:
      g_profile_alloc.Free(static_cast<SpecialProfile*>(s));
      break;
    case SpecialKind::kCheckFinalizer:
      g_check_alloc.Free(static_cast<SpecialCheckFinalizer*>(s));
      break;
  }
}

// Default-constructs a record of `kind` in storage taken from a free list.
Special* ConstructRecord(Special* storage, SpecialKind kind) {
  Special* s = nullptr;
  switch (kind) {
    case SpecialKind::kFinalizer:
      s = std::construct_at(static_cast<SpecialFinalizer*>(storage));
      break;
    case SpecialKind::kCleanup:
      s = std::construct_at(static_cast<SpecialCleanup*>(storage));
      break;
    case SpecialKind::kWeakHandle:
      s = std::construct_at(static_cast<SpecialWeakHandle*>(storage));
      break;
    case SpecialKind::kProfile:
      s = std::construct_at(static_cast<SpecialProfile*>(storage));
      break;
    case SpecialKind::kCheckFinalizer:
      s = std::construct_at(static_cast<SpecialCheckFinalizer*>(storage));
      break;
  }
  s->kind = kind;
  return s;
}

// Go takes mheap_.speciallock for every record. gofin gives each thread a few free records
// of each kind, refilled and returned as whole chains under the lock (as mcache does for
// objects), so that threads setting and removing finalizers do not all queue on one lock.
// The background sweeper frees most dead records; its cache hands them back in chains.
// Trivially destructible on purpose: a thread_local destructor is registered with a malloc
// that may fail when memory is short; a registered thread's cache is flushed by the thread
// registry's exit hook instead, and an unregistered thread bypasses the cache.
class RecordCache {
 public:
  // Whether the calling thread may use its cache: only if something flushes it at exit.
  static bool Usable() { return t_local.record != nullptr || t_local.gc_internal; }

  Special* Take(SpecialKind kind) {
    FreeList& l = lists_[static_cast<std::size_t>(kind)];
    if (l.head == nullptr) {
      if (l.full != nullptr) {
        l.head = std::exchange(l.full, nullptr);
        l.n = kBatch;
      } else {
        Refill(l, kind);
      }
    }
    Special* r = l.head;
    l.head = r->next;
    --l.n;
    // Records come back from the thread that freed them (mostly the background sweeper, on
    // another core): fetch the next one for writing while this one is used.
    if (l.head != nullptr) PrefetchForWrite(l.head);
    return ConstructRecord(r, kind);
  }

  // The list grows into a chain of exactly kBatch records as it is pushed, so handing one to
  // the shared stack never walks records (each a likely cache miss): one full chain is kept
  // back for this thread's own next Takes, and only the one before it is handed over.
  void Give(Special* s) {
    FreeList& l = lists_[static_cast<std::size_t>(s->kind)];
    s->next = l.head;
    l.head = s;
    if (++l.n < kBatch) return;
    Special* full = std::exchange(l.full, l.head);
    l.head = nullptr;
    l.n = 0;
    if (full != nullptr) PushChain(full, s->kind);
  }

  void FlushAll() {
    for (std::size_t k = 0; k < kNumSpecialKinds; ++k) {
      FreeList& l = lists_[k];
      if (l.full != nullptr) PushChain(std::exchange(l.full, nullptr), static_cast<SpecialKind>(k));
      if (l.head == nullptr) continue;
      std::lock_guard lock(g_special_lock);
      while (l.head != nullptr) {
        Special* r = l.head;
        l.head = r->next;
        FreeRecordLocked(r);
      }
      l.n = 0;
    }
  }

 private:
  static constexpr std::uint32_t kBatch = 32;
  struct FreeList {
    Special* head = nullptr;  // fewer than kBatch records, counted by n
    std::uint32_t n = 0;
    Special* full = nullptr;  // nullptr or a chain of exactly kBatch
  };

  static void PushChain(Special* chain, SpecialKind kind) {
    std::lock_guard lock(g_special_lock);
    g_chains[static_cast<std::size_t>(kind)].Push(chain);
  }

  // Takes a whole chain in O(1) under the lock; only when none is left, kBatch records from
  // the kind's fixalloc.
  static void Refill(FreeList& l, SpecialKind kind) {
    std::lock_guard lock(g_special_lock);
    if (Special* chain = g_chains[static_cast<std::size_t>(kind)].Pop()) {
      l.head = chain;
      l.n = kBatch;
      return;
    }
    for (std::uint32_t i = 0; i < kBatch; ++i) {
      Special* r = AllocRecordLocked(kind);  // may throw bad_alloc: what was taken stays
      // FlushAll frees by kind: a fresh record must say which fixalloc it came from.
      r->kind = kind;
      r->next = l.head;
      l.head = r;
      ++l.n;
    }
  }

  FreeList lists_[kNumSpecialKinds];
};
static_assert(std::is_trivially_destructible_v<RecordCache>);

constinit thread_local RecordCache t_record_cache __attribute__((tls_model("initial-exec")));

void FlushRecordCache() { t_record_cache.FlushAll(); }

// Go: spanHasSpecials / spanHasNoSpecials. Relaxed: the bit is only read with the world
// stopped, after the stop's handshake. Go clears the bit whenever a span's last record goes;
// gofin leaves it set when a record is removed (Cleanup::Stop, removing a finalizer) and lets
// the next mark clear it (MarkSpecials), so that a program that adds and removes one record
// over and over pays a load, not two locked instructions, per pair.
void SetSpanHasSpecials(Span* s, bool has) {
  HeapArena* a = g_heap.arenas.ArenaOf(s->start);
  const std::size_t pg = PageInArena(s->start);
  const auto bit = static_cast<std::uint8_t>(1U << (pg % 8));
  if (has) {
    if ((a->page_specials[pg / 8].load(std::memory_order_relaxed) & bit) == 0) {
      a->page_specials[pg / 8].fetch_or(bit, std::memory_order_relaxed);
    }
  } else {
    a->page_specials[pg / 8].fetch_and(static_cast<std::uint8_t>(~bit), std::memory_order_relaxed);
  }
}

// The per-object list heads of s, allocating the table on first use (spans lock held).
Special** HeadsFor(Span* s) {
  if (s->special_heads == nullptr) {
    if (s->large) {
      s->special_heads = &s->large_special_head;
    } else {
      std::lock_guard lock(g_heap.lock);
      s->special_heads = static_cast<Special**>(AllocSideTable(s->nelems * sizeof(void*)));
      if (s->special_heads == nullptr) throw std::bad_alloc();
    }
  }
  return s->special_heads;
}

// The per-object walks of mark and sweep touch the records in object order, and records sit
// wherever their fixalloc put them: fetch a few objects ahead.
// Sweep touches only dead objects' records (only_dead).
inline void PrefetchRecordAhead(const Span* s, std::size_t i, bool only_dead = false) {
  constexpr std::size_t kAhead = 16;
  if (i + kAhead < s->nelems) {
    const Special* x = s->special_heads[i + kAhead];
    if (x != nullptr && !(only_dead && s->IsMarked(i + kAhead))) PrefetchForWrite(x);
  }
}

// Go: markrootSpans. Visits only spans whose first page is flagged in their arena. The work
// is split into units of 64 pages (8 bytes of an arena's bitmap) that the phase's workers
// claim, so that a heap of a million finalizer-bearing objects is walked by all of them.
void MarkSpecials(MarkWorker& w, std::atomic<std::size_t>& next_unit) {
  constexpr std::size_t kUnitBytes = 8;
  constexpr std::size_t kUnitsPerArena = kPagesPerArena / 8 / kUnitBytes;
  const std::uintptr_t lo = g_heap.arenas.LoIndex();
  const std::uintptr_t hi = g_heap.arenas.HiIndex();
  const std::size_t units = hi > lo ? (hi - lo) * kUnitsPerArena : 0;
  for (;;) {
    const std::size_t u = next_unit.fetch_add(1, std::memory_order_relaxed);
    if (u >= units) break;
    const std::uintptr_t arena_base = (lo + u / kUnitsPerArena) << kArenaShift;
    HeapArena* a = g_heap.arenas.ArenaOf(arena_base);
    if (a == nullptr) continue;
    const std::size_t first_byte = (u % kUnitsPerArena) * kUnitBytes;
    for (std::size_t byte = first_byte; byte < first_byte + kUnitBytes; ++byte) {
      std::uint8_t bits = a->page_specials[byte].load(std::memory_order_relaxed);
      while (bits != 0) {
        const int b = __builtin_ctz(bits);
        bits = static_cast<std::uint8_t>(bits & (bits - 1));
        const std::size_t page = byte * 8 + static_cast<std::size_t>(b);
        Span* s = a->SpanAt(page);
        if (s == nullptr || s->state != SpanState::kInUse || s->special_count == 0 ||
            s->start != arena_base + page * kPageSize) {
          // A bit left set by a removal (SetSpanHasSpecials), or for a span since freed: the
          // world is stopped, no record can be added meanwhile.
          a->page_specials[byte].fetch_and(static_cast<std::uint8_t>(~(1U << b)),
                                           std::memory_order_relaxed);
          continue;
        }
        w.SetSpanHint(s);
        for (std::size_t i = 0; i < s->nelems; ++i) {
          PrefetchRecordAhead(s, i);
          for (Special* sp = s->special_heads[i]; sp != nullptr; sp = sp->next) {
            const SpecialKindOps& ops = g_ops[static_cast<std::size_t>(sp->kind)];
            if (ops.mark != nullptr) ops.mark(sp, s->ObjBase(i), w);
          }
        }
      }
    }
  }
  w.SetSpanHint(nullptr);
}

// Go: the specials part of mspan.sweep, with its two passes per dead object.
void SweepSpecials(Span* s) {
  // Records to hand to their kinds after the lock is dropped: one list per kind that takes a
  // span's records as one batch, and one list in (offset, kind) order for the others.
  Special* batch[kNumSpecialKinds] = {};
  Special** batch_tail[kNumSpecialKinds];
  for (std::size_t k = 0; k < kNumSpecialKinds; ++k) batch_tail[k] = &batch[k];
  Special* single = nullptr;
  Special** single_tail = &single;
  {
    std::lock_guard lock(s->specials_lock);
    for (std::size_t i = 0; i < s->nelems && s->special_count != 0; ++i) {
      PrefetchRecordAhead(s, i, /*only_dead=*/true);
      Special** link = &s->special_heads[i];
      if (*link == nullptr || s->IsMarked(i)) continue;
      // Pass 1: does the object have a finalizer (at any offset: a tiny block holds several
      // objects)? Then it lives one more cycle.
      bool resurrect = false;
      for (Special* t = *link; t != nullptr; t = t->next) {
        if (g_ops[static_cast<std::size_t>(t->kind)].resurrects) {
          s->SetMarkNonAtomic(i);
          resurrect = true;
          break;
        }
      }
      // Pass 2: queue every finalizer; when the object really dies, every other record goes
      // too.
      while (*link != nullptr) {
        Special* sp = *link;
        const auto k = static_cast<std::size_t>(sp->kind);
        if (resurrect && !g_ops[k].resurrects && !g_ops[k].dies_with_resurrection) {
          link = &sp->next;
          continue;
        }
        *link = sp->next;
        sp->next = nullptr;
        --s->special_count;
        if (g_ops[k].objects_dead != nullptr) {
          *batch_tail[k] = sp;
          batch_tail[k] = &sp->next;
        } else {
          *single_tail = sp;
          single_tail = &sp->next;
        }
      }
    }
    if (s->special_count == 0) SetSpanHasSpecials(s, false);
  }
  // Dead records are handed over in (offset, kind) order, as Go's sweep does, except that a
  // kind taking them as one batch (one lock, one wake-up per span for finalizers) gets all of
  // its records of the span at the end, still in object order, and frees them itself.
  while (single != nullptr) {
    Special* sp = single;
    single = sp->next;
    const SpecialKindOps& ops = g_ops[static_cast<std::size_t>(sp->kind)];
    if (ops.object_dead != nullptr) {
      ops.object_dead(sp, reinterpret_cast<void*>(s->start + sp->offset), s->elemsize);
    }
    FreeSpecialRecord(sp);
  }
  for (std::size_t k = 0; k < kNumSpecialKinds; ++k) {
    if (batch[k] != nullptr) g_ops[k].objects_dead(batch[k], s->start, s->elemsize);
  }
}

// The span of p, swept for this cycle, with the caller in a critical region so that no
// collection can make it unswept again before the caller is done.
Span* SweptSpanNoPreempt(std::uintptr_t addr) {
  Span* span = g_heap.arenas.SpanOfHeap(addr);
  if (span == nullptr) return nullptr;
  for (;;) {
    EnterNoPreempt();
    if (span->sweepgen.load(std::memory_order_acquire) ==
        g_heap.sweepgen.load(std::memory_order_relaxed)) {
      return span;
    }
    ExitNoPreempt();
    // Go: ensureSwept. Never splice into lists a sweep is still reading, and never attach to
    // last cycle's dead object.
    EnsureSwept(span);
  }
}

// ObjectIsFree's test, for a span held swept by the caller.
bool SlotIsFree(Span* span, std::size_t i) {
  // A destructor touching a dead neighbour: it is kept for its own destructor, queued or run.
  if (const DtorSlot* d = span->DtorFor(i); d != nullptr && d->fn == kDtorQueued) return true;
  return !span->IsAllocatedFromAnyThread(i);
}

// Holds SweptSpanNoPreempt's critical region for a scope.
class SweptSpanScope {
 public:
  explicit SweptSpanScope(std::uintptr_t addr) : span_(SweptSpanNoPreempt(addr)) {}
  ~SweptSpanScope() {
    if (span_ != nullptr) ExitNoPreempt();
  }
  SweptSpanScope(const SweptSpanScope&) = delete;
  SweptSpanScope& operator=(const SweptSpanScope&) = delete;
  [[nodiscard]] Span* get() const { return span_; }

 private:
  Span* span_;
};

}  // namespace

void RegisterSpecialKind(SpecialKind kind, const SpecialKindOps& ops) {
  std::lock_guard lock(g_special_lock);
  g_ops[static_cast<std::size_t>(kind)] = ops;
}

Special* NewSpecial(SpecialKind kind) {
  if (RecordCache::Usable()) return t_record_cache.Take(kind);
  std::lock_guard lock(g_special_lock);
  Special* s = AllocRecordLocked(kind);
  s->kind = kind;
  return s;
}

void FreeSpecialRecord(Special* s) {
  if (RecordCache::Usable()) {
    t_record_cache.Give(s);
    return;
  }
  std::lock_guard lock(g_special_lock);
  FreeRecordLocked(s);
}

AddResult AddSpecialToAllocated(const void* p, Special* s) {
  const AddResult r = AddSpecialChecked(p, s, InnerPointers::kAny);
  return r == AddResult::kNotInHeap ? AddResult::kObjectFree : r;
}

AddResult AddSpecialChecked(const void* p, Special* s, InnerPointers inner) {
  const auto addr = reinterpret_cast<std::uintptr_t>(p);
  const SweptSpanScope scope(addr);
  Span* span = scope.get();
  if (span == nullptr) return AddResult::kNotInHeap;
  const std::size_t index = span->ObjIndex(addr);
  // Go lets an inner pointer through where the pointer's type says the tiny allocator could
  // have placed the object; gofin also asks the span, so that an inner field of an ordinary
  // object (a long inside a scanned 24-byte struct) is refused as API.md says.
  if (addr != span->ObjBase(index) &&
      (inner == InnerPointers::kNone ||
       (inner == InnerPointers::kInTinyBlock && span->spanclass.value != kTinySpanClass.value))) {
    return AddResult::kNotAtStart;
  }
  if (SlotIsFree(span, index)) return AddResult::kObjectFree;
  s->offset = static_cast<std::uint32_t>(addr - span->start);
  bool added = false;
  {
    std::lock_guard lock(span->specials_lock);
    // A kind with several records per offset goes after those already there.
    const bool multiple = g_ops[static_cast<std::size_t>(s->kind)].multiple;
    Special** link = &HeadsFor(span)[span->ObjIndex(addr)];
    for (; *link != nullptr; link = &(*link)->next) {
      Special* x = *link;
      if (x->offset == s->offset && x->kind == s->kind && !multiple) break;
      if (s->offset < x->offset || (s->offset == x->offset && s->kind < x->kind)) break;
    }
    if (multiple || *link == nullptr || (*link)->offset != s->offset || (*link)->kind != s->kind) {
      s->next = *link;
      *link = s;
      if (span->special_count++ == 0) SetSpanHasSpecials(span, true);
      added = true;
    }
  }
  return added ? AddResult::kAdded : AddResult::kAlreadySet;
}

Special* RemoveSpecial(const void* p, SpecialKind kind) {
  return RemoveSpecialIf(
      p, kind, [](const Special*, const void*) { return true; }, nullptr);
}

Special* RemoveSpecialIf(const void* p, SpecialKind kind,
                         bool (*match)(const Special* s, const void* ctx), const void* ctx) {
  const auto addr = reinterpret_cast<std::uintptr_t>(p);
  const SweptSpanScope scope(addr);
  Span* span = scope.get();
  if (span == nullptr) return nullptr;
  const auto offset = static_cast<std::uint32_t>(addr - span->start);
  Special* found = nullptr;
  {
    std::lock_guard lock(span->specials_lock);
    if (span->special_count != 0) {
      for (Special** link = &span->special_heads[span->ObjIndex(addr)]; *link != nullptr;
           link = &(*link)->next) {
        Special* x = *link;
        if (x->offset == offset && x->kind == kind && match(x, ctx)) {
          *link = x->next;
          x->next = nullptr;
          --span->special_count;  // the span's bit stays: the next mark clears it
          found = x;
          break;
        }
      }
    }
  }
  return found;
}

bool VisitSpecial(const void* p, SpecialKind kind, void (*fn)(Special* s, void* ctx), void* ctx) {
  const auto addr = reinterpret_cast<std::uintptr_t>(p);
  const SweptSpanScope scope(addr);
  Span* span = scope.get();
  if (span == nullptr) return false;
  const auto offset = static_cast<std::uint32_t>(addr - span->start);
  std::lock_guard lock(span->specials_lock);
  if (span->special_count == 0) return false;
  for (Special* x = span->special_heads[span->ObjIndex(addr)]; x != nullptr; x = x->next) {
    if (x->offset == offset && x->kind == kind) {
      fn(x, ctx);
      return true;
    }
  }
  return false;
}

bool AddSpecial(const void* p, Special* s) {
  return AddSpecialToAllocated(p, s) == AddResult::kAdded;
}

bool ObjectIsFree(const void* p) {
  const auto addr = reinterpret_cast<std::uintptr_t>(p);
  const SweptSpanScope scope(addr);
  Span* span = scope.get();
  return span == nullptr || SlotIsFree(span, span->ObjIndex(addr));
}

bool HasSpecial(const void* p, SpecialKind kind) {
  const auto addr = reinterpret_cast<std::uintptr_t>(p);
  const SweptSpanScope scope(addr);
  Span* span = scope.get();
  if (span == nullptr) return false;
  const auto offset = static_cast<std::uint32_t>(addr - span->start);
  bool found = false;
  {
    std::lock_guard lock(span->specials_lock);
    if (span->special_count != 0) {
      for (Special* x = span->special_heads[span->ObjIndex(addr)]; x != nullptr; x = x->next) {
        if (x->offset == offset && x->kind == kind) found = true;
      }
    }
  }
  return found;
}

std::size_t SpecialRecordsOutstanding(SpecialKind kind) {
  std::lock_guard lock(g_special_lock);
  switch (kind) {
    case SpecialKind::kFinalizer:
      return g_finalizer_alloc.InUse();
    case SpecialKind::kCleanup:
      return g_cleanup_alloc.InUse();
    case SpecialKind::kWeakHandle:
      return g_weak_alloc.InUse();
    case SpecialKind::kProfile:
      return g_profile_alloc.InUse();
    case SpecialKind::kCheckFinalizer:
      return g_check_alloc.InUse();
  }
  return 0;
}

void ForEachSpecialStopped(void (*fn)(std::uintptr_t p, Span* s, Special* sp, void* ctx),
                           void* ctx) {
  ForEachInUseSpan([&](Span* s) {
    if (s->special_count == 0) return;
    for (std::size_t i = 0; i < s->nelems; ++i) {
      for (Special* sp = s->special_heads[i]; sp != nullptr; sp = sp->next) {
        fn(s->start + sp->offset, s, sp, ctx);
      }
    }
  });
}

void InitSpecials() {
  static std::once_flag once;
  std::call_once(once, [] {
    // After fork(), in the child: the lock may be held by a thread that no longer exists.
    pthread_atfork(nullptr, nullptr, [] { std::construct_at(&g_special_lock); });
    AddParallelRootsHook(&MarkSpecials);
    AddThreadExitHook(&FlushRecordCache);
    SetSweepSpecialsHook(&SweepSpecials);
  });
}

}  // namespace gofin::internal
