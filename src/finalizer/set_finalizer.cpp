// Go: SetFinalizer's runtime half (mfinal.go: SetFinalizer, addfinalizer, removefinalizer).
#include <atomic>
#include <cstdio>
#include <exception>
#include <mutex>
#include <utility>

#include "finalizer/finalizer_queue.hpp"
#include "gc/marker.hpp"
#include "gc/preemptible_mutex.hpp"
#include "gc/roots.hpp"
#include "gc/thread_registry.hpp"
#include "gofin/finalizer.hpp"
#include "gofin/testing.hpp"
#include "heap/heap.hpp"
#include "specials/special.hpp"

namespace gofin::internal {

namespace {

// By value: the handler type (FinalizerErrorHandler) takes it so.
void DefaultFinalizerErrorHandler(std::exception_ptr e) {
  try {
    std::rethrow_exception(std::move(e));
  } catch (const std::exception& ex) {
    std::fprintf(stderr, "gofin: panic in finalizer: %s\n", ex.what());
  } catch (...) {
    std::fprintf(stderr, "gofin: panic in finalizer: (non-std exception)\n");
  }
  std::fflush(stderr);
  std::terminate();
}

constinit std::atomic<FinalizerErrorHandler> g_error_handler{&DefaultFinalizerErrorHandler};

void MarkFinalizerSpecial(Special* s, std::uintptr_t object_base, MarkWorker& w) {
  // Go: markrootSpans. What the object references lives; the object itself may die, and its
  // pointers into itself do not keep it (C++ objects point into themselves all the time).
  w.ScanFinalizedContents(object_base);
  w.MarkPointer(reinterpret_cast<std::uintptr_t>(static_cast<SpecialFinalizer*>(s)->ctx));
}

// Go: queuefinalizer, for every finalizer a span's sweep found ready: one lock, one wake-up.
void FinalizersReady(Special* list, std::uintptr_t span_start, std::size_t /*size*/) {
  FinalizerQueueBatch batch;
  while (list != nullptr) {
    auto* f = static_cast<SpecialFinalizer*>(list);
    list = list->next;
    batch.Add(reinterpret_cast<void*>(span_start + f->offset), f->invoke, f->ctx);
    FreeSpecialRecord(f);
  }
}

constinit std::atomic<bool> g_finalizers_ready{false};

// Not std::call_once: a registered thread waiting in pthread_once while the collector has
// stopped the thread running the initialization cannot itself be stopped under
// ThreadSanitizer (TSan's once-wait takes no signal), and the collection waits forever.
// PreemptibleMutex waits in nanosleep, where the stop signal is delivered.
constinit PreemptibleMutex g_init_lock;

void InitFinalizersOnce() {
  std::lock_guard lock(g_init_lock);
  if (g_finalizers_ready.load(std::memory_order_relaxed)) return;
  SpecialKindOps ops;
  ops.mark = &MarkFinalizerSpecial;
  ops.objects_dead = &FinalizersReady;
  ops.resurrects = true;
  RegisterSpecialKind(SpecialKind::kFinalizer, ops);
  AddExtraRootsHook(&MarkFinalizerQueueRoots);
  InitSpecials();
  g_finalizers_ready.store(true, std::memory_order_release);
}

// Go: createfing, called once a finalizer is really set: a SetFinalizer on a global (a no-op)
// or one that fails starts no thread.
constinit std::atomic<bool> g_fing_started{false};

void StartFinalizerThreadOnce() {
  std::lock_guard lock(g_init_lock);
  if (g_fing_started.load(std::memory_order_relaxed)) return;
  CreateFinalizerThread();
  g_fing_started.store(true, std::memory_order_release);
}

// call_once costs a pthread_once per SetFinalizer; after the first, one acquire load.
void InitFinalizers() {
  if (!g_finalizers_ready.load(std::memory_order_acquire)) [[unlikely]]
    InitFinalizersOnce();
}

}  // namespace

}  // namespace gofin::internal

namespace gofin::detail {

FinalizerTarget CheckFinalizerTarget(const void* obj, bool inner_ok) {
  using namespace internal;  // NOLINT(google-build-using-namespace)
  EnsureRegistered();
  if (obj == nullptr) throw Error("runtime.SetFinalizer: first argument is nil");
  const auto p = reinterpret_cast<std::uintptr_t>(obj);
  Span* s = g_heap.arenas.SpanOfHeap(p);
  if (s == nullptr) {
    if (InDataSegment(obj)) return FinalizerTarget::kGlobal;
    throw Error("runtime.SetFinalizer: pointer not in allocated block");
  }
  // An inner pointer only inside a tiny block (see AddSpecialChecked).
  if (p != s->ObjBase(s->ObjIndex(p)) &&
      (!inner_ok || s->spanclass.value != kTinySpanClass.value)) {
    throw Error("runtime.SetFinalizer: pointer not at beginning of allocated block");
  }
  return FinalizerTarget::kHeap;
}

namespace {
// Attaches a finalizer record after the target checks that inner_ok asks for (none when the
// caller made them already). Go checks the block first; one span lookup answers everything.
FinalizerTarget AttachFinalizer(const void* obj, bool check, bool inner_ok, FinalizerInvoke invoke,
                                void* ctx) {
  using namespace internal;  // NOLINT(google-build-using-namespace)
  EnsureRegistered();
  InitFinalizers();
  auto* s = static_cast<SpecialFinalizer*>(NewSpecial(SpecialKind::kFinalizer));
  s->invoke = invoke;
  s->ctx = ctx;
  const AddResult r =
      check
          ? AddSpecialChecked(obj, s, inner_ok ? InnerPointers::kInTinyBlock : InnerPointers::kNone)
          : AddSpecialToAllocated(obj, s);
  if (r == AddResult::kAdded) [[likely]] {
    if (!g_fing_started.load(std::memory_order_acquire)) [[unlikely]]
      StartFinalizerThreadOnce();
    KeepAlive(ctx);
    return FinalizerTarget::kHeap;
  }
  FreeSpecialRecord(s);
  switch (r) {
    case AddResult::kNotInHeap:
      if (InDataSegment(obj)) return FinalizerTarget::kGlobal;
      throw Error("runtime.SetFinalizer: pointer not in allocated block");
    case AddResult::kNotAtStart:
      throw Error("runtime.SetFinalizer: pointer not at beginning of allocated block");
    case AddResult::kObjectFree:
      throw Error("runtime.SetFinalizer: pointer not in allocated block");
    case AddResult::kAlreadySet:
      throw Error("runtime.SetFinalizer: finalizer already set");
    case AddResult::kAdded:
      break;
  }
  return FinalizerTarget::kHeap;
}
}  // namespace

void AddFinalizer(const void* obj, FinalizerInvoke invoke, void* ctx) {
  AttachFinalizer(obj, /*check=*/false, /*inner_ok=*/true, invoke, ctx);
}

FinalizerTarget AddFinalizerChecked(const void* obj, bool inner_ok, FinalizerInvoke invoke,
                                    void* ctx) {
  if (obj == nullptr) throw Error("runtime.SetFinalizer: first argument is nil");
  return AttachFinalizer(obj, /*check=*/true, inner_ok, invoke, ctx);
}

void RemoveFinalizer(const void* obj) {
  using namespace internal;  // NOLINT(google-build-using-namespace)
  EnsureRegistered();
  if (Special* s = RemoveSpecial(obj, SpecialKind::kFinalizer)) FreeSpecialRecord(s);
}

void ReportFinalizerException(std::exception_ptr e) noexcept {
  internal::g_error_handler.load(std::memory_order_acquire)(std::move(e));
}

}  // namespace gofin::detail

namespace gofin {

FinalizerErrorHandler SetFinalizerErrorHandler(FinalizerErrorHandler handler) {
  if (handler == nullptr) handler = &internal::DefaultFinalizerErrorHandler;
  return internal::g_error_handler.exchange(handler, std::memory_order_acq_rel);
}

FinalizerStats ReadFinalizerStats() {
  const internal::FinalizerCounters c = internal::ReadFinalizerCounters();
  return FinalizerStats{c.queued, c.executed};
}

namespace testing {
bool BlockUntilEmptyFinalizerQueue(std::chrono::nanoseconds timeout) {
  return internal::BlockUntilEmptyFinalizerQueue(timeout);
}
}  // namespace testing

}  // namespace gofin
