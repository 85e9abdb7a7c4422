// Go: package weak's runtime half (mheap.go: getOrAddWeakHandle, getWeakHandle,
// internal_weak_runtime_registerWeakPointer, internal_weak_runtime_makeStrongFromWeak) and the
// weak-handle special's behaviour at mark and sweep.
//
// A weak pointer is one word: the address of its handle, which holds the object's exact
// address (object and offset). Go's handle is a GC object kept by the weak pointers that hold
// it; a C++ program keeps weak pointers in memory the collector does not scan (a std::map of
// them), so gofin's handle lives off the GC heap, reference counted by the weak-handle record
// on the object and by every Pointer. The record makes every Make of that address find the
// same handle, so weak pointers compare by handle; the handle never keeps the object alive.
// The sweep that finds the object dead zeroes the handle and drops the record's reference,
// and for an object with a finalizer it does so in the cycle that queues the finalizer
// (before it runs). A pointer outside the heap (a global) gets an immortal handle, one per
// address, that never goes nil.
#include <pthread.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "gc/marker.hpp"
#include "gc/preemptible_mutex.hpp"
#include "gc/thread_registry.hpp"
#include "gofin/detail/runtime.hpp"
#include "gofin/error.hpp"
#include "gofin/weak.hpp"
#include "heap/central.hpp"
#include "heap/fixalloc.hpp"
#include "heap/heap.hpp"
#include "heap/lock.hpp"
#include "heap/malloc.hpp"
#include "heap/safepoint.hpp"
#include "specials/special.hpp"

namespace gofin::internal {

namespace {

// Go: the *atomic.Uintptr of a weak handle, plus its references.
struct WeakHandle {
  std::atomic<std::uintptr_t> addr{0};
  // The record's and every Pointer's; an immortal handle starts so high it never reaches 0.
  std::atomic<std::uint32_t> refs{0};
};
constexpr std::uint32_t kImmortalRefs = 1U << 30;

constinit SpinLock g_handles_lock;  // a critical region: also taken by sweeps, in guards
constinit FixAlloc<WeakHandle> g_handles{};

WeakHandle* NewHandle(std::uintptr_t addr, std::uint32_t refs) {
  WeakHandle* h = nullptr;
  {
    const std::lock_guard lock(g_handles_lock);
    h = g_handles.Alloc();  // metadata memory; bad_alloc only when the OS refuses
  }
  h->addr.store(addr, std::memory_order_relaxed);
  h->refs.store(refs, std::memory_order_relaxed);
  return h;
}

void Release(WeakHandle* h) {
  // acq_rel: the last release sees every use of the handle before it frees it.
  if (h->refs.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  const std::lock_guard lock(g_handles_lock);
  g_handles.Free(h);
}

std::atomic<std::uintptr_t>& Slot(void* handle) { return static_cast<WeakHandle*>(handle)->addr; }

// Go: the weak-handle case of freeSpecial. release: a Value() that reads zero after this
// learns nothing more; relaxed would do, and release costs nothing on x86. Then the record's
// reference goes.
void WeakHandleDead(Special* s, void* /*p*/, std::size_t /*size*/) {
  auto* h = reinterpret_cast<WeakHandle*>(static_cast<SpecialWeakHandle*>(s)->handle);
  h->addr.store(0, std::memory_order_release);
  Release(h);
}

constinit std::atomic<bool> g_ready{false};
constinit PreemptibleMutex g_init_lock;

void InitWeakOnce() {
  std::lock_guard lock(g_init_lock);
  if (g_ready.load(std::memory_order_relaxed)) return;
  SpecialKindOps ops;
  ops.object_dead = &WeakHandleDead;
  ops.dies_with_resurrection = true;
  RegisterSpecialKind(SpecialKind::kWeakHandle, ops);
  // After fork(), in the child: the lock may be held by a thread that no longer exists.
  pthread_atfork(nullptr, nullptr, [] { std::construct_at(&g_handles_lock); });
  InitSpecials();
  g_ready.store(true, std::memory_order_release);
}

// Immortal handles (Go 1.25: immortalWeakHandles): never freed, one per address so that two
// Makes of a global compare equal.
struct Immortals {
  std::mutex lock;
  std::unordered_map<std::uintptr_t, WeakHandle*> handles;
};

Immortals& TheImmortals() {
  static auto* i = std::make_unique<Immortals>().release();  // outlives static destructors
  return *i;
}

void* ImmortalHandle(std::uintptr_t p) {
  Immortals& im = TheImmortals();
  std::lock_guard lock(im.lock);
  WeakHandle*& h = im.handles[p];
  if (h == nullptr) h = NewHandle(p, kImmortalRefs);
  return h;
}

// Takes a reference for the caller under the span's specials lock, while the record's own
// keeps the handle alive.
void CopyHandle(Special* s, void* ctx) {
  auto* h = reinterpret_cast<WeakHandle*>(static_cast<SpecialWeakHandle*>(s)->handle);
  h->refs.fetch_add(1, std::memory_order_relaxed);
  *static_cast<void**>(ctx) = h;
}

}  // namespace

// The hook mostly-concurrent marking will need (Go: the shade in makeStrongFromWeak, issue
// 69210): a pointer Value() hands out while a mark may be running must be marked, since the
// caller's stack may have been scanned already. With every mark stopping the world, no mark
// runs while a mutator does, and there is nothing to do.
inline void ShadeIfMarking(std::uintptr_t /*p*/) {}

}  // namespace gofin::internal

namespace gofin::weak::detail {

void* MakeHandle(const void* p) {
  using namespace gofin::internal;  // NOLINT(google-build-using-namespace)
  EnsureRegistered();
  const auto addr = reinterpret_cast<std::uintptr_t>(p);
  if (g_heap.arenas.SpanOfHeap(addr) == nullptr) {
    // Inside the heap's arenas but in no span in use: a freed object (a dangling pointer).
    if (g_heap.arenas.ArenaOf(addr) != nullptr) {
      throw gofin::Error("weak.Make: pointer not in allocated block");
    }
    return ImmortalHandle(addr);
  }
  if (!g_ready.load(std::memory_order_acquire)) [[unlikely]]
    InitWeakOnce();
  // Go: getOrAddWeakHandle. Look, then make one and try to add it; a racing Make may win.
  for (;;) {
    void* found = nullptr;
    if (VisitSpecial(p, SpecialKind::kWeakHandle, &CopyHandle, &found)) return found;
    WeakHandle* handle = NewHandle(addr, 2);  // the record's reference and the caller's
    auto* s = static_cast<SpecialWeakHandle*>(NewSpecial(SpecialKind::kWeakHandle));
    s->handle = reinterpret_cast<void**>(handle);
    const AddResult r = AddSpecialToAllocated(p, s);
    if (r == AddResult::kAdded) return handle;
    FreeSpecialRecord(s);
    handle->refs.store(1, std::memory_order_relaxed);
    Release(handle);
    if (r == AddResult::kAlreadySet) continue;  // a racing Make added one first
    throw gofin::Error("weak.Make: pointer not in allocated block");
  }
}

void RetainHandle(void* handle) noexcept {
  // relaxed: the caller holds a reference already (a copy of a live Pointer).
  static_cast<gofin::internal::WeakHandle*>(handle)->refs.fetch_add(1, std::memory_order_relaxed);
}

void ReleaseHandle(void* handle) noexcept {
  gofin::internal::Release(static_cast<gofin::internal::WeakHandle*>(handle));
}

void* HandleValue(void* handle) noexcept {
  using namespace gofin::internal;  // NOLINT(google-build-using-namespace)
  if (handle == nullptr) return nullptr;
  // acquire: pairs with the sweep's store.
  std::uintptr_t p = Slot(handle).load(std::memory_order_acquire);
  if (p == 0) return nullptr;
  if (g_heap.arenas.SpanOfHeap(p) == nullptr) return reinterpret_cast<void*>(p);  // immortal
  EnsureRegistered();  // the critical region below must hold off stops
  // Go: makeStrongFromWeak. The object may be dead and its span not yet swept (the handle not
  // yet cleared): sweep it first, and read the handle inside a critical region with the span
  // swept, so that no sweep or mark comes between the answer and the caller holding it.
  for (;;) {
    EnterNoPreempt();
    p = Slot(handle).load(std::memory_order_acquire);
    Span* span = p == 0 ? nullptr : g_heap.arenas.SpanOfHeap(p);
    if (span == nullptr) {
      ExitNoPreempt();
      return nullptr;  // cleared (a freed span's handles were cleared first)
    }
    if (span->sweepgen.load(std::memory_order_acquire) ==
        g_heap.sweepgen.load(std::memory_order_relaxed)) {
      ShadeIfMarking(p);
      auto* result = reinterpret_cast<void*>(p);
      ExitNoPreempt();
      return result;
    }
    ExitNoPreempt();
    EnsureSwept(span);
  }
}

}  // namespace gofin::weak::detail
