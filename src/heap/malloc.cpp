#include "heap/malloc.hpp"

#include <cstring>
#include <mutex>
#include <new>

#include "gofin/detail/runtime.hpp"
#include "heap/heap.hpp"
#include "heap/hooks.hpp"
#include "heap/os_memory.hpp"
#include "heap/thread_cache.hpp"

namespace gofin::internal {

namespace {

std::uintptr_t AlignUp(std::uintptr_t v, std::uintptr_t a) { return (v + a - 1) & ~(a - 1); }

void SetDtor(Span* s, std::size_t idx, DtorFn dtor, std::size_t count) {
  if (dtor != nullptr) s->dtors[idx] = DtorSlot{dtor, count};
}

// The allocation slow paths end here: a collection may be due. Never from inside a guard
// (that collection would wait for the guard's own sweep).
[[gnu::noinline]] void AfterSlowPath() {
  if (t_local.guard_depth == 0 && g_heap.heap_live.load(std::memory_order_relaxed) >=
                                      g_heap.gc_trigger.load(std::memory_order_relaxed)) {
    MaybeStartGC();
  }
}

[[noreturn]] void OutOfMemory() { throw std::bad_alloc(); }

// Go: memclrNoHeapPointers. Small objects are cleared inline: a call to memset costs more
// than the clearing itself for the 16- to 64-byte objects that dominate allocation.
inline void ZeroObject(std::uintptr_t v, std::size_t size) {
  if (size <= 64) {
    auto* w = reinterpret_cast<std::uint64_t*>(v);
    for (std::size_t i = 0; i < size / 8; ++i) {
      w[i] = 0;
      asm volatile("" : : : "memory");  // keeps the loop from becoming a memset call
    }
  } else {
    std::memset(reinterpret_cast<void*>(v), 0, size);
  }
}

// Go: mcache.nextFree plus the small-object tail of mallocgc. Returns 0 when the OS refuses.
[[gnu::noinline]] std::uintptr_t SmallSlow(ThreadCache* c, SpanClass spc, DtorFn dtor,
                                           std::size_t count, std::size_t tiny_size) {
  StwGuard guard;
  if (dtor == nullptr) {
    // Classes without destructors (the tiny blocks' included) are served from runs: the next
    // run, from a new span if need be.
    std::uintptr_t v = c->TakeRun(spc);
    if (v == 0) {
      if (c->Refill(spc) == nullptr) return 0;
      v = c->TakeRun(spc);
    }
    if (tiny_size != 0 && (tiny_size < c->tiny_offset || c->tiny == 0)) {
      c->tiny = v;
      c->tiny_offset = tiny_size;
    }
    return v;
  }
  Span* s = c->alloc[spc.value];
  std::uint32_t idx = s->NextFreeIndex();
  if (idx == s->nelems) {
    s = c->Refill(spc);
    if (s == nullptr) return 0;
    idx = s->NextFreeIndex();
  }
  ++s->alloc_count;
  const std::uintptr_t v = s->ObjBase(idx);
  if (s->needzero) ZeroObject(v, s->elemsize);
  SetDtor(s, idx, dtor, count);
  (void)c->ChargeSample(v, s->elemsize);
  return v;
}

// Go: mcache.allocLarge.
[[gnu::noinline]] std::uintptr_t LargeAlloc(ThreadCache* c, std::size_t size, bool noscan,
                                            DtorFn dtor, std::size_t count) {
  if (size > (std::size_t{1} << 46)) return 0;
  const std::size_t npages = (size + kPageSize - 1) >> kPageShift;
  StwGuard guard;
  Span* s = nullptr;
  {
    std::lock_guard lock(g_heap.lock);
    s = g_heap.pages.AllocSpan(npages, g_heap.arenas);
    if (s == nullptr) return 0;
    const bool needzero = s->needzero;
    s->InitLarge(s->start, npages, SpanClass::Make(0, noscan, dtor != nullptr));
    s->needzero = needzero;
  }
  s->sweepgen.store(g_heap.sweepgen.load(std::memory_order_relaxed), std::memory_order_relaxed);
  if (s->needzero) std::memset(reinterpret_cast<void*>(s->start), 0, npages * kPageSize);
  s->SetFreeIndex(1);
  s->alloc_count = 1;
  s->large_dtor = DtorSlot{dtor, count};
  g_heap.nmalloc_large.fetch_add(1, std::memory_order_relaxed);
  g_heap.bytes_malloc_large.fetch_add(s->elemsize, std::memory_order_relaxed);
  g_heap.heap_live.fetch_add(s->elemsize, std::memory_order_relaxed);
  FileSweptSpan(s);
  (void)c->ChargeSample(s->start, s->elemsize);
  return s->start;
}

// Go: profilealloc. The slow path chose v (size bytes, its slot's size) for the heap profile;
// it is set up and no guard is held, so the profile may take its locks.
[[gnu::noinline]] void ProfileSampled(ThreadCache* c) {
  const std::uintptr_t v = c->sampled;
  c->sampled = 0;
  ProfileAlloc(reinterpret_cast<void*>(v), c->sampled_size);
}

inline __attribute__((always_inline)) void* MallocOnce(std::size_t size, unsigned flags,
                                                       DtorFn dtor, std::size_t count) {
  ThreadCache* c = t_local.cache;
  if (c == nullptr) [[unlikely]]
    c = AttachCurrentThread();
  const bool noscan = (flags & detail::kAllocNoScan) != 0;
  std::uintptr_t v = 0;
  if (size <= kMaxSmallSize) {
    if (noscan && size < kTinySize && dtor == nullptr && (flags & detail::kAllocNoTiny) == 0) {
      // Go: the tiny allocator. Several tiny noscan objects share one 16-byte block; the block
      // is freed when none of them is reachable.
      EnterNoPreempt();
      std::uintptr_t off = c->tiny_offset;
      // Go's alignment rule, on the size the caller asked for (not the pad byte).
      const std::size_t asked = (flags & detail::kAllocPadded) != 0 ? size - 1 : size;
      if ((asked & 7) == 0) {
        off = AlignUp(off, 8);
      } else if ((asked & 3) == 0) {
        off = AlignUp(off, 4);
      } else if ((asked & 1) == 0) {
        off = AlignUp(off, 2);
      }
      if (off + size <= kTinySize && c->tiny != 0) {
        v = c->tiny + off;
        c->tiny_offset = off + size;
        ++c->tiny_allocs;
        ExitNoPreempt();
        return reinterpret_cast<void*>(v);
      }
      // A new tiny block from the run of the tiny class.
      AllocRun& r = c->runs[kTinySpanClass.value];
      if (r.next < r.end) {
        v = r.Take();
        if (size < c->tiny_offset || c->tiny == 0) {
          c->tiny = v;
          c->tiny_offset = size;
        }
        ExitNoPreempt();
        return reinterpret_cast<void*>(v);
      }
      ExitNoPreempt();
      v = SmallSlow(c, kTinySpanClass, nullptr, 0, size);
    } else {
      const SpanClass spc = SpanClass::Make(SizeToClass(size), noscan, dtor != nullptr);
      EnterNoPreempt();
      if (dtor == nullptr) {
        AllocRun& r = c->runs[spc.value];
        if (r.next < r.end) {
          v = r.Take();
          ExitNoPreempt();
          return reinterpret_cast<void*>(v);
        }
      } else {
        Span* s = c->alloc[spc.value];
        v = NextFreeFast(s);
        if (v != 0) {
          if (s->needzero) ZeroObject(v, s->elemsize);
          s->dtors[s->freeindex - 1] = DtorSlot{dtor, count};
          const bool sampled = c->ChargeSample(v, s->elemsize);
          ExitNoPreempt();
          if (sampled) [[unlikely]]
            ProfileSampled(c);
          return reinterpret_cast<void*>(v);
        }
      }
      ExitNoPreempt();
      v = SmallSlow(c, spc, dtor, count, 0);
    }
  } else {
    v = LargeAlloc(c, size, noscan, dtor, count);
  }
  if (v != 0) {
    if (c->sampled != 0) [[unlikely]]
      ProfileSampled(c);
    AfterSlowPath();
  }
  return reinterpret_cast<void*>(v);
}

}  // namespace

std::size_t AlignedAllocSize(std::size_t size, std::size_t align) {
  if (size <= kMaxSmallSize) {
    for (std::size_t c = SizeToClass(size); c < kNumSizeClasses; ++c) {
      if (kClassToSize[c] % align == 0) return kClassToSize[c];
    }
  }
  return size <= kMaxSmallSize ? kMaxSmallSize + 1 : size;
}

ObjectRef FindObject(const void* p) {
  const auto addr = reinterpret_cast<std::uintptr_t>(p);
  Span* s = g_heap.arenas.SpanOfHeap(addr);
  if (s == nullptr) return {};
  const std::size_t i = s->ObjIndex(addr);
  if (!s->IsAllocated(i)) return {};
  return ObjectRef{s, i, s->ObjBase(i)};
}

}  // namespace gofin::internal

namespace gofin::detail {

namespace {
// Go throws "out of memory"; a C++ library owes its caller std::bad_alloc, after one
// collection has had the chance to give memory back.
[[gnu::noinline]] void* RetryAfterOOM(std::size_t size, unsigned flags, DtorFn dtor,
                                      std::size_t count) {
  void* p = nullptr;
  if (internal::CollectForOOM()) p = internal::MallocOnce(size, flags, dtor, count);
  if (p == nullptr) internal::OutOfMemory();
  return p;
}
}  // namespace

namespace {
// Everything but the two fast paths below: first use by a thread, size 0, tiny and small
// objects whose cached span or tiny block is used up, destructors, large objects, and the
// retry after running out of memory.
[[gnu::noinline]] void* MallocSlowPath(std::size_t size, unsigned flags, DtorFn dtor,
                                       std::size_t count) {
  if (size == 0) size = 1;
  // A request larger than the machine's memory and swap together can never be backed: the
  // kernel would hand out the address space and the OOM killer would end the program at the
  // first touch of it. malloc refuses such sizes; so does gofin, at once.
  if (size > internal::os::PhysicalAndSwapBytes()) [[unlikely]]
    internal::OutOfMemory();
  void* p = internal::MallocOnce(size, flags, dtor, count);
  if (p == nullptr) [[unlikely]]
    return RetryAfterOOM(size, flags, dtor, count);
  return p;
}
// The slow path entered from inside the fast path's no-preemption region.
[[gnu::noinline]] void* LeaveFastPath(std::size_t size, unsigned flags, DtorFn dtor,
                                      std::size_t count) {
  internal::ExitNoPreempt();
  return MallocSlowPath(size, flags, dtor, count);
}

[[gnu::noinline]] void* ParkThenReturn(void* p) {
  internal::ParkAtSafepoint();
  return p;
}

// ExitNoPreempt for a fast path about to return p: the rare stop at the safe point is a
// tail call, so the fast path keeps p in no callee-saved register.
inline void* ExitNoPreemptReturning(void* p) {
  using internal::t_local;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  if (--t_local.nosafepoint == 0 && t_local.preempt_pending != 0) [[unlikely]]
    return ParkThenReturn(p);
  return p;
}

}  // namespace

// Go: mallocgc's common cases, kept free of calls (the slow path is a tail call) so that the
// compiler saves no registers and builds no frame for them: a tiny object that fits the
// current tiny block, and a small object without a destructor from the thread's cached span.
void* Malloc(std::size_t size, unsigned flags, DtorFn dtor, std::size_t count) {
  using internal::t_local;
  internal::ThreadCache* c = t_local.cache;
  if (c == nullptr || size - 1 >= internal::kMaxSmallSize || dtor != nullptr) [[unlikely]]
    return MallocSlowPath(size, flags, dtor, count);
  const bool noscan = (flags & kAllocNoScan) != 0;
  if (noscan && size < internal::kTinySize && (flags & kAllocNoTiny) == 0) {
    // Only the unpadded tiny case, with its alignment rule, is inlined here.
    if ((flags & kAllocPadded) != 0) return MallocSlowPath(size, flags, dtor, count);
    // The tiny block is read inside the region: a collection drops it (FlushAllCaches).
    internal::EnterNoPreempt();
    std::uintptr_t off = c->tiny_offset;
    if ((size & 7) == 0) {
      off = (off + 7) & ~std::uintptr_t{7};
    } else if ((size & 3) == 0) {
      off = (off + 3) & ~std::uintptr_t{3};
    } else if ((size & 1) == 0) {
      off = (off + 1) & ~std::uintptr_t{1};
    }
    if (off + size <= internal::kTinySize && c->tiny != 0) {
      const std::uintptr_t v = c->tiny + off;
      c->tiny_offset = off + size;
      ++c->tiny_allocs;
      return ExitNoPreemptReturning(reinterpret_cast<void*>(v));
    }
    // A new tiny block from the tiny class's run (cleared when it was taken).
    internal::AllocRun& r = c->runs[internal::kTinySpanClass.value];
    if (r.next >= r.end) [[unlikely]]
      return LeaveFastPath(size, flags, dtor, count);
    const std::uintptr_t v = r.Take();
    if (size < c->tiny_offset || c->tiny == 0) {
      c->tiny = v;
      c->tiny_offset = size;
    }
    return ExitNoPreemptReturning(reinterpret_cast<void*>(v));
  }
  const internal::SpanClass spc =
      internal::SpanClass::Make(internal::SizeToClass(size), noscan, /*dtor=*/false);
  internal::EnterNoPreempt();
  internal::AllocRun& r = c->runs[spc.value];
  if (r.next >= r.end) [[unlikely]]
    return LeaveFastPath(size, flags, dtor, count);
  return ExitNoPreemptReturning(reinterpret_cast<void*>(r.Take()));
}

void* MallocAligned(std::size_t size, std::size_t align, unsigned flags, DtorFn dtor,
                    std::size_t count) {
  if (align < 16) return Malloc(size, flags, dtor, count);
  if (align > internal::kPageSize) throw std::bad_alloc();
  return Malloc(internal::AlignedAllocSize(size == 0 ? 1 : size, align), flags | kAllocNoTiny, dtor,
                count);
}

void CancelDtor(void* p) noexcept {
  internal::NoPreempt np;
  const internal::ObjectRef ref = internal::FindObject(p);
  if (ref.span == nullptr) return;
  if (internal::DtorSlot* d = ref.span->DtorFor(ref.index)) *d = {};
}

}  // namespace gofin::detail
