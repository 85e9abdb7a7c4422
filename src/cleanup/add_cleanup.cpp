// Go: AddCleanup's and Cleanup.Stop's runtime half (mcleanup.go: AddCleanup, addCleanup,
// Cleanup.Stop) and the cleanup special's behaviour at mark and sweep.
#include <pthread.h>

#include <atomic>
#include <cstring>
#include <mutex>

#include "cleanup/cleanup_queue.hpp"
#include "gc/marker.hpp"
#include "gc/preemptible_mutex.hpp"
#include "gc/roots.hpp"
#include "gc/thread_registry.hpp"
#include "gofin/cleanup.hpp"
#include "heap/heap.hpp"
#include "specials/special.hpp"

namespace gofin::internal {

namespace {

// Go: markrootSpans for specialCleanup: the box (callable and argument) lives while the
// cleanup is set; the object does not (no resurrection).
void MarkCleanupSpecial(Special* s, std::uintptr_t /*object_base*/, MarkWorker& w) {
  w.MarkPointer(reinterpret_cast<std::uintptr_t>(static_cast<SpecialCleanup*>(s)->box));
}

// Go: the cleanup case of freeSpecial: every cleanup of a span's dead objects, one batch.
void CleanupsReady(Special* list, std::uintptr_t /*span_start*/, std::size_t /*size*/) {
  CleanupBatch batch;
  while (list != nullptr) {
    auto* c = static_cast<SpecialCleanup*>(list);
    list = list->next;
    (void)batch.Add(c->box);
    FreeSpecialRecord(c);
  }
}

constinit std::atomic<bool> g_ready{false};
// See set_finalizer.cpp: a waiter must stay stoppable, which std::call_once is not under TSan.
constinit PreemptibleMutex g_init_lock;
// Go: mheap_.cleanupID.
constinit std::atomic<std::uint64_t> g_next_id{1};
// Each thread takes ids in blocks: they need only be unique, and one locked instruction per
// AddCleanup on a shared counter was a tenth of AddCleanup + Stop's time.
constexpr std::uint64_t kIdBlock = 1024;
constinit thread_local std::uint64_t t_next_id __attribute__((tls_model("initial-exec"))) = 0;
constinit thread_local std::uint64_t t_id_end __attribute__((tls_model("initial-exec"))) = 0;

std::uint64_t NextCleanupId() {
  if (t_next_id == t_id_end) [[unlikely]] {
    t_next_id = g_next_id.fetch_add(kIdBlock, std::memory_order_relaxed);
    t_id_end = t_next_id + kIdBlock;
  }
  return t_next_id++;
}

void InitCleanupsOnce() {
  std::lock_guard lock(g_init_lock);
  if (g_ready.load(std::memory_order_relaxed)) return;
  SpecialKindOps ops;
  ops.mark = &MarkCleanupSpecial;
  ops.objects_dead = &CleanupsReady;
  ops.multiple = true;
  RegisterSpecialKind(SpecialKind::kCleanup, ops);
  AddExtraRootsHook(&MarkCleanupQueueRoots);
  pthread_atfork(nullptr, nullptr, &ResetCleanupQueueAfterFork);
  InitSpecials();
  g_ready.store(true, std::memory_order_release);
}

void InitCleanups() {
  if (!g_ready.load(std::memory_order_acquire)) [[unlikely]]
    InitCleanupsOnce();
}

// Addresses below 2^47 become non-canonical ones with the top bits set, which no scan takes
// for a heap pointer; the same XOR gives them back.
constexpr std::uintptr_t kHideMask = ~std::uintptr_t{0} << 48;

bool IdMatches(const Special* s, const void* ctx) {
  return static_cast<const SpecialCleanup*>(s)->id == *static_cast<const std::uint64_t*>(ctx);
}

}  // namespace

}  // namespace gofin::internal

namespace gofin::detail {

CleanupTarget CheckCleanupTarget(const void* ptr, const void* arg_ptr, const void* fn_bytes,
                                 std::size_t fn_size) {
  using namespace internal;  // NOLINT(google-build-using-namespace)
  EnsureRegistered();
  // The span's layout only: whether the slot holds an object is asked by AttachCleanup with
  // the span swept (a background sweep may be freeing neighbours meanwhile).
  const auto p = reinterpret_cast<std::uintptr_t>(ptr);
  const Span* span = g_heap.arenas.SpanOfHeap(p);
  if (span == nullptr) {
    if (InDataSegment(ptr)) return CleanupTarget::kGlobal;
    throw Error("runtime.AddCleanup: ptr not in allocated block");
  }
  const std::uintptr_t base = span->ObjBase(span->ObjIndex(p));
  const std::uintptr_t end = base + span->elemsize;
  // Go 1.25: an argument pointing into ptr's object keeps it alive forever, unless both are
  // parts of one tiny block.
  const auto a = reinterpret_cast<std::uintptr_t>(arg_ptr);
  if (a >= base && a < end && span->spanclass.value != kTinySpanClass.value) {
    throw Error("runtime.AddCleanup: ptr is within arg, cleanup will never run");
  }
  // Go 1.25 scans the closure's pointer words; gofin reads every word of the callable's own
  // storage (its captures), conservatively.
  const auto* bytes = static_cast<const unsigned char*>(fn_bytes);
  for (std::size_t off = 0; off + sizeof(std::uintptr_t) <= fn_size;
       off += sizeof(std::uintptr_t)) {
    std::uintptr_t w = 0;
    std::memcpy(&w, bytes + off, sizeof(w));
    if (w >= base && w < end) {
      throw Error("runtime.AddCleanup: cleanup function closes over ptr, cleanup will never run");
    }
  }
  return CleanupTarget::kHeap;
}

std::uint64_t AttachCleanup(const void* ptr, void* box) {
  using namespace internal;  // NOLINT(google-build-using-namespace)
  InitCleanups();
  StartCleanupThreads();
  auto* s = static_cast<SpecialCleanup*>(NewSpecial(SpecialKind::kCleanup));
  s->box = box;
  s->id = NextCleanupId();
  const std::uint64_t id = s->id;
  const AddResult r = AddSpecialToAllocated(ptr, s);
  if (r != AddResult::kAdded) {
    FreeSpecialRecord(s);
    throw Error("runtime.AddCleanup: ptr not in allocated block");
  }
  return id;
}

void StopCleanup(std::uint64_t id, std::uintptr_t hidden) noexcept {
  using namespace internal;  // NOLINT(google-build-using-namespace)
  const auto* ptr = reinterpret_cast<const void*>(hidden ^ kHideMask);
  EnsureRegistered();
  // RemoveSpecialIf finds no span (and does nothing) for an object whose span was freed.
  // Go: Cleanup.Stop ensures the span is swept, then looks for the record by id: a cleanup
  // already queued (or run) has no record left, and Stop does nothing.
  if (Special* s = RemoveSpecialIf(ptr, SpecialKind::kCleanup, &IdMatches, &id)) {
    FreeSpecialRecord(s);
  }
}

std::uintptr_t HideAddress(const void* p) noexcept {
  return reinterpret_cast<std::uintptr_t>(p) ^ internal::kHideMask;
}

}  // namespace gofin::detail

namespace gofin {

CleanupStats ReadCleanupStats() {
  return CleanupStats{internal::CleanupsQueued(), internal::CleanupsExecuted()};
}

}  // namespace gofin
