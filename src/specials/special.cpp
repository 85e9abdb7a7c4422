#include "specials/special.hpp"

#include <atomic>
#include <mutex>

#include "gc/marker.hpp"
#include "gc/sweeper.hpp"
#include "heap/central.hpp"
#include "heap/fixalloc.hpp"
#include "heap/heap.hpp"
#include "heap/lock.hpp"

namespace gofin::internal {

namespace {

// Go: mheap_.speciallock and the per-kind fixallocs.
constinit SpinLock g_special_lock;
constinit FixAlloc<SpecialFinalizer> g_finalizer_alloc{};
constinit FixAlloc<SpecialCleanup> g_cleanup_alloc{};
constinit FixAlloc<SpecialWeakHandle> g_weak_alloc{};
constinit FixAlloc<SpecialProfile> g_profile_alloc{};
constinit SpecialKindOps g_ops[kNumSpecialKinds] = {};

// Go: spanHasSpecials / spanHasNoSpecials. Relaxed: the bit is only read with the world
// stopped, after the stop's handshake.
void SetSpanHasSpecials(Span* s, bool has) {
  HeapArena* a = g_heap.arenas.ArenaOf(s->start);
  const std::size_t pg = PageInArena(s->start);
  const auto bit = static_cast<std::uint8_t>(1U << (pg % 8));
  if (has) {
    a->page_specials[pg / 8].fetch_or(bit, std::memory_order_relaxed);
  } else {
    a->page_specials[pg / 8].fetch_and(static_cast<std::uint8_t>(~bit), std::memory_order_relaxed);
  }
}

// Go: markrootSpans. Visits only spans whose first page is flagged in their arena.
void MarkSpecials(MarkWorker& w) {
  const std::uintptr_t lo = g_heap.arenas.LoIndex();
  const std::uintptr_t hi = g_heap.arenas.HiIndex();
  for (std::uintptr_t ai = lo; ai < hi; ++ai) {
    HeapArena* a = g_heap.arenas.ArenaOf(ai << kArenaShift);
    if (a == nullptr) continue;
    for (std::size_t byte = 0; byte < kPagesPerArena / 8; ++byte) {
      std::uint8_t bits = a->page_specials[byte].load(std::memory_order_relaxed);
      while (bits != 0) {
        const int b = __builtin_ctz(bits);
        bits = static_cast<std::uint8_t>(bits & (bits - 1));
        Span* s = a->spans[byte * 8 + static_cast<std::size_t>(b)];
        if (s == nullptr || s->state != SpanState::kInUse) continue;
        for (Special* sp = s->specials; sp != nullptr; sp = sp->next) {
          const SpecialKindOps& ops = g_ops[static_cast<std::size_t>(sp->kind)];
          if (ops.mark == nullptr) continue;
          const std::size_t idx = s->large ? 0 : sp->offset / s->elemsize;
          ops.mark(sp, s->ObjBase(idx), w);
        }
      }
    }
  }
}

// Go: the specials part of mspan.sweep, with its two passes per dead object.
void SweepSpecials(Span* s) {
  Special* dead = nullptr;  // records to hand to their kinds after the lock is dropped
  Special** dead_tail = &dead;
  {
    std::lock_guard lock(s->specials_lock);
    const std::size_t size = s->elemsize;
    Special** link = &s->specials;
    while (*link != nullptr) {
      const std::size_t idx = s->large ? 0 : (*link)->offset / size;
      if (s->IsMarked(idx)) {
        link = &(*link)->next;
        continue;
      }
      const std::uintptr_t end_offset = (idx + 1) * size;
      // Pass 1: does the object have a finalizer? Then it lives one more cycle.
      bool resurrect = false;
      for (Special* t = *link; t != nullptr && t->offset < end_offset; t = t->next) {
        if (g_ops[static_cast<std::size_t>(t->kind)].resurrects) {
          s->SetMarkNonAtomic(idx);
          resurrect = true;
          break;
        }
      }
      // Pass 2: queue every finalizer (all offsets of a tiny block); when the object really
      // dies, every other record goes too.
      while (*link != nullptr && (*link)->offset < end_offset) {
        Special* sp = *link;
        if (!resurrect || g_ops[static_cast<std::size_t>(sp->kind)].resurrects) {
          *link = sp->next;
          sp->next = nullptr;
          *dead_tail = sp;
          dead_tail = &sp->next;
        } else {
          link = &sp->next;
        }
      }
    }
    if (s->specials == nullptr) SetSpanHasSpecials(s, false);
  }
  while (dead != nullptr) {
    Special* sp = dead;
    dead = sp->next;
    const SpecialKindOps& ops = g_ops[static_cast<std::size_t>(sp->kind)];
    if (ops.object_dead != nullptr) {
      ops.object_dead(sp, reinterpret_cast<void*>(s->start + sp->offset), s->elemsize);
    }
    FreeSpecialRecord(sp);
  }
}

}  // namespace

void RegisterSpecialKind(SpecialKind kind, const SpecialKindOps& ops) {
  std::lock_guard lock(g_special_lock);
  g_ops[static_cast<std::size_t>(kind)] = ops;
}

Special* NewSpecial(SpecialKind kind) {
  std::lock_guard lock(g_special_lock);
  Special* s = nullptr;
  switch (kind) {
    case SpecialKind::kFinalizer: s = g_finalizer_alloc.Alloc(); break;
    case SpecialKind::kCleanup: s = g_cleanup_alloc.Alloc(); break;
    case SpecialKind::kWeakHandle: s = g_weak_alloc.Alloc(); break;
    case SpecialKind::kProfile: s = g_profile_alloc.Alloc(); break;
  }
  s->kind = kind;
  return s;
}

void FreeSpecialRecord(Special* s) {
  std::lock_guard lock(g_special_lock);
  switch (s->kind) {
    case SpecialKind::kFinalizer: g_finalizer_alloc.Free(static_cast<SpecialFinalizer*>(s)); break;
    case SpecialKind::kCleanup: g_cleanup_alloc.Free(static_cast<SpecialCleanup*>(s)); break;
    case SpecialKind::kWeakHandle: g_weak_alloc.Free(static_cast<SpecialWeakHandle*>(s)); break;
    case SpecialKind::kProfile: g_profile_alloc.Free(static_cast<SpecialProfile*>(s)); break;
  }
}

bool AddSpecial(const void* p, Special* s) {
  // No collection between the sweep check and the splice.
  StwGuard guard;
  const auto addr = reinterpret_cast<std::uintptr_t>(p);
  Span* span = g_heap.arenas.SpanOfHeap(addr);
  // Go: ensureSwept. The sweep of a span walks its specials: never splice into a list an
  // unfinished sweep is still reading, and never attach to last cycle's dead object.
  EnsureSwept(span);
  s->offset = static_cast<std::uint32_t>(addr - span->start);
  std::lock_guard lock(span->specials_lock);
  Special** link = &span->specials;
  for (; *link != nullptr; link = &(*link)->next) {
    Special* x = *link;
    if (x->offset == s->offset && x->kind == s->kind) return false;
    if (s->offset < x->offset || (s->offset == x->offset && s->kind < x->kind)) break;
  }
  s->next = *link;
  *link = s;
  SetSpanHasSpecials(span, true);
  return true;
}

Special* RemoveSpecial(const void* p, SpecialKind kind) {
  StwGuard guard;
  const auto addr = reinterpret_cast<std::uintptr_t>(p);
  Span* span = g_heap.arenas.SpanOfHeap(addr);
  if (span == nullptr) return nullptr;
  EnsureSwept(span);
  const auto offset = static_cast<std::uint32_t>(addr - span->start);
  std::lock_guard lock(span->specials_lock);
  for (Special** link = &span->specials; *link != nullptr; link = &(*link)->next) {
    Special* x = *link;
    if (x->offset == offset && x->kind == kind) {
      *link = x->next;
      x->next = nullptr;
      if (span->specials == nullptr) SetSpanHasSpecials(span, false);
      return x;
    }
  }
  return nullptr;
}

bool HasSpecial(const void* p, SpecialKind kind) {
  const auto addr = reinterpret_cast<std::uintptr_t>(p);
  Span* span = g_heap.arenas.SpanOfHeap(addr);
  if (span == nullptr) return false;
  const auto offset = static_cast<std::uint32_t>(addr - span->start);
  std::lock_guard lock(span->specials_lock);
  for (Special* x = span->specials; x != nullptr; x = x->next) {
    if (x->offset == offset && x->kind == kind) return true;
  }
  return false;
}

void InitSpecials() {
  static std::once_flag once;
  std::call_once(once, [] {
    AddExtraRootsHook(&MarkSpecials);
    SetSweepSpecialsHook(&SweepSpecials);
  });
}

}  // namespace gofin::internal
