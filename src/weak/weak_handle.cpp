// Go: package weak's runtime half (mheap.go: getOrAddWeakHandle, getWeakHandle,
// internal_weak_runtime_registerWeakPointer, internal_weak_runtime_makeStrongFromWeak) and the
// weak-handle special's behaviour at mark and sweep.
//
// A weak pointer is one word: the address of its handle, an 8-byte pointer-free GC block of its
// own (never a tiny block, Go issue 76007) that holds the object's exact address (object and
// offset). A weak-handle record on the object keeps the handle alive while the object lives
// (markrootSpans marks it), so every Make of that address finds the same handle and weak
// pointers compare by handle. The handle being pointer-free, it never keeps the object alive.
// The sweep that finds the object dead zeroes the handle, and for an object with a finalizer
// it does so in the cycle that queues the finalizer (before it runs). A pointer outside the
// heap (a global) gets an immortal handle, one per address, that never goes nil.
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
#include "heap/heap.hpp"
#include "heap/malloc.hpp"
#include "heap/safepoint.hpp"
#include "specials/special.hpp"

namespace gofin::internal {

namespace {

std::atomic<std::uintptr_t>& Slot(void* handle) {
  return *static_cast<std::atomic<std::uintptr_t>*>(handle);
}

void MarkWeakHandleSpecial(Special* s, std::uintptr_t /*object_base*/, MarkWorker& w) {
  w.MarkPointer(reinterpret_cast<std::uintptr_t>(static_cast<SpecialWeakHandle*>(s)->handle));
}

// Go: the weak-handle case of freeSpecial. release: a Value() that reads zero after this
// learns nothing more; relaxed would do, and release costs nothing on x86.
void WeakHandleDead(Special* s, void* /*p*/, std::size_t /*size*/) {
  Slot(static_cast<SpecialWeakHandle*>(s)->handle).store(0, std::memory_order_release);
}

constinit std::atomic<bool> g_ready{false};
constinit PreemptibleMutex g_init_lock;

void InitWeakOnce() {
  std::lock_guard lock(g_init_lock);
  if (g_ready.load(std::memory_order_relaxed)) return;
  SpecialKindOps ops;
  ops.mark = &MarkWeakHandleSpecial;
  ops.object_dead = &WeakHandleDead;
  ops.dies_with_resurrection = true;
  RegisterSpecialKind(SpecialKind::kWeakHandle, ops);
  InitSpecials();
  g_ready.store(true, std::memory_order_release);
}

// Immortal handles (Go 1.25: immortalWeakHandles): malloc memory, never freed, one per
// address so that two Makes of a global compare equal.
struct Immortals {
  std::mutex lock;
  std::unordered_map<std::uintptr_t, std::unique_ptr<std::atomic<std::uintptr_t>>> handles;
};

Immortals& TheImmortals() {
  static auto* i = std::make_unique<Immortals>().release();  // outlives static destructors
  return *i;
}

void* ImmortalHandle(std::uintptr_t p) {
  Immortals& im = TheImmortals();
  std::lock_guard lock(im.lock);
  auto& h = im.handles[p];
  if (h == nullptr) h = std::make_unique<std::atomic<std::uintptr_t>>(p);
  return h.get();
}

void CopyHandle(Special* s, void* ctx) {
  *static_cast<void**>(ctx) = static_cast<SpecialWeakHandle*>(s)->handle;
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
    void* handle = ::gofin::detail::Malloc(
        sizeof(std::uintptr_t), ::gofin::detail::kAllocNoScan | ::gofin::detail::kAllocNoTiny,
        nullptr, 0);
    Slot(handle).store(addr, std::memory_order_relaxed);
    auto* s = static_cast<SpecialWeakHandle*>(NewSpecial(SpecialKind::kWeakHandle));
    s->handle = static_cast<void**>(handle);
    switch (AddSpecialToAllocated(p, s)) {
      case AddResult::kAdded:
        return handle;
      case AddResult::kAlreadySet:
        FreeSpecialRecord(s);
        continue;  // the handle block is garbage
      default:
        FreeSpecialRecord(s);
        throw gofin::Error("weak.Make: pointer not in allocated block");
    }
  }
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
