// gofin's C API (include/gofin/gofin.h): a thin layer over the C++ API for C programs and
// language runtimes.
//
// Two rules shape every function here. No C++ exception may cross into C: each entry point
// catches everything and turns it into its error value, with the message in a thread-local
// buffer that gofin_last_error() returns (errno-like: set by a misuse, left alone by a
// success). And what C passes as a plain void* must keep the same guarantees as the C++
// templates give typed pointers: a finalizer's data pointer lives in a scanned box (so it is
// kept alive), a cleanup's argument likewise, and a weak handle is the same reference-counted
// handle a weak::Pointer holds.
//
// A C cleanup is one 64-bit id, where C++'s Cleanup also holds its object's (hidden)
// address, which Stop needs to find the span. A side table maps each pending C cleanup's id to
// that address; an entry leaves when the cleanup runs or is stopped, so the table holds only
// pending cleanups.
// The plain functions are defined here, not the file:line macros.
#define GOFIN_NO_LOCATION_MACROS
#include <chrono>
#include <cstring>
#include <exception>
#include <mutex>
#include <new>
#include <string>
#include <unordered_map>

#include "gc/preemptible_mutex.hpp"
#include "gofin/gofin.h"
#include "gofin/gofin.hpp"
#include "heap/heap.hpp"
#include "heap/malloc.hpp"
#include "heap/safepoint.hpp"

namespace gofin::internal {
namespace {

thread_local std::string t_last_error;

void SetError(const char* message) noexcept {
  try {
    t_last_error = message;
  } catch (...) {
    t_last_error.clear();  // no memory for the message: at least no stale one
  }
}

// Runs f, turning any exception into `fallback` and a message.
template <class R, class F>
R Guard(R fallback, F&& f) noexcept {
  try {
    return f();
  } catch (const std::bad_alloc&) {
    SetError("gofin: out of memory");
  } catch (const std::exception& e) {
    SetError(e.what());
  } catch (...) {
    SetError("gofin: unknown error");
  }
  return fallback;
}

// The id gofin_add_cleanup returns for a global, which never becomes unreachable: valid, and
// nothing ever runs or stops it. Real ids count up from 1 and never reach it.
constexpr gofin_cleanup kGlobalCleanup = ~gofin_cleanup{0};

// Pending C cleanups: id -> the object's hidden address (detail::HideAddress), for Stop.
class CleanupTable {
 public:
  void Put(std::uint64_t id, std::uintptr_t hidden) {
    std::lock_guard lock(mu_);
    map_.emplace(id, hidden);
  }
  // The entry's hidden address, removed; 0 when there is none (stopped, or ran).
  std::uintptr_t Take(std::uint64_t id) noexcept {
    std::lock_guard lock(mu_);
    auto it = map_.find(id);
    if (it == map_.end()) return 0;
    const std::uintptr_t hidden = it->second;
    map_.erase(it);
    return hidden;
  }

 private:
  // Never held while user code runs; preemptible, so that a thread waiting for it (a cleanup
  // thread in Invoke) stays stoppable while the holder is parked for a collection.
  PreemptibleMutex mu_;
  std::unordered_map<std::uint64_t, std::uintptr_t> map_;
};

CleanupTable& Cleanups() {
  // Constructed at the first gofin_add_cleanup (outside any stop) and never destroyed, so
  // that cleanup threads running at exit find it.
  static auto* table = ::new CleanupTable();  // NOLINT(cppcoreguidelines-owning-memory)
  return *table;
}

// The cleanup's box: scanned, so arg stays alive while the cleanup is pending. invoke first,
// as detail::CleanupBox lays it out for the cleanup queue.
struct CCleanupBox {
  void (*invoke)(void* box);
  void (*fn)(void* arg);
  void* arg;
  std::uint64_t id;

  static void Invoke(void* box) {
    auto* b = static_cast<CCleanupBox*>(box);
    (void)Cleanups().Take(b->id);
    b->fn(b->arg);
  }
};

// A finalizer's fn and data, moved by SetFinalizer into a scanned box.
struct CFinalizer {
  gofin_finalizer_fn fn;
  void* data;
  void operator()(void* obj) const { fn(obj, data); }
};

int SetCFinalizer(void* obj, gofin_finalizer_fn fn, void* data, const SourceLocation& where) {
  return Guard(-1, [&] {
    if (fn == nullptr) {
      SetFinalizer(obj, nullptr);
    } else {
      SetFinalizer(obj, CFinalizer{fn, data}, where);
    }
    return 0;
  });
}

gofin_cleanup AddCCleanup(void* obj, void (*fn)(void*), void* arg, const SourceLocation& where) {
  return Guard(gofin_cleanup{0}, [&]() -> gofin_cleanup {
    // Go's checks in Go's order (as gofin::AddCleanup makes them).
    if (obj == nullptr) throw Error("runtime.AddCleanup: ptr is nil");
    if (arg == obj) throw Error("runtime.AddCleanup: ptr is equal to arg, cleanup will never run");
    if (fn == nullptr) throw Error("runtime.AddCleanup: cleanup is nil");
    if (detail::CheckCleanupTarget(obj, arg, nullptr, 0) == detail::CleanupTarget::kGlobal) {
      return kGlobalCleanup;
    }
    CleanupTable& table = Cleanups();
    auto* box = static_cast<CCleanupBox*>(
        detail::AllocateFor<CCleanupBox>(sizeof(CCleanupBox), 1, detail::kAllocNoTiny));
    box->invoke = &CCleanupBox::Invoke;
    box->fn = fn;
    box->arg = arg;
    // The entry goes in before the cleanup can run (a collection needs obj unreachable, and
    // obj is in this frame until AttachCleanup returns), so Invoke always finds it.
    const std::uint64_t id = detail::AttachCleanup(obj, box);
    box->id = id;
    try {
      table.Put(id, detail::HideAddress(obj));
    } catch (...) {
      detail::StopCleanup(id, detail::HideAddress(obj));
      throw;
    }
    KeepAlive(box);
    KeepAlive(obj);
    if (detail::CheckFinalizersOn()) [[unlikely]]
      detail::NoteRegistration(obj, id, where, typeid(void));
    return id;
  });
}

}  // namespace
}  // namespace gofin::internal

using gofin::internal::Guard;
using gofin::internal::SetError;

extern "C" {

void* gofin_malloc(size_t bytes) noexcept {
  return Guard<void*>(nullptr, [&] { return gofin::Alloc(bytes); });
}

void* gofin_malloc_noscan(size_t bytes) noexcept {
  // Never a tiny block shared with other small allocations: gofin_realloc needs each block to
  // start at its own slot (bdwgc's GC_MALLOC_ATOMIC does not combine either).
  return Guard<void*>(nullptr, [&] {
    if (bytes == SIZE_MAX) throw std::bad_alloc();
    return gofin::detail::Malloc(
        bytes + 1,
        gofin::detail::kAllocNoScan | gofin::detail::kAllocPadded | gofin::detail::kAllocNoTiny,
        nullptr, 0);
  });
}

void* gofin_realloc(void* p, size_t bytes) noexcept {
  if (p == nullptr) return gofin_malloc(bytes);
  bool noscan = false;
  std::size_t old_size = 0;
  {
    // No collection while the block is looked at (FindObject's alloc bit is exact).
    const gofin::internal::NoPreempt np;
    const gofin::internal::ObjectRef ref = gofin::internal::FindObject(p);
    if (ref.span == nullptr || ref.base != reinterpret_cast<std::uintptr_t>(p)) {
      SetError("gofin_realloc: pointer not at beginning of allocated block");
      return nullptr;
    }
    noscan = ref.span->spanclass.NoScan();
    old_size = ref.span->elemsize;
  }
  void* q = noscan ? gofin_malloc_noscan(bytes) : gofin_malloc(bytes);
  if (q == nullptr) return nullptr;
  // The old block is at least old_size long and the new one at least bytes: copying the
  // smaller is in bounds of both. p is live (the caller holds it), so its bytes are intact.
  std::memcpy(q, p, old_size < bytes ? old_size : bytes);
  gofin::KeepAlive(p);
  return q;
}

void gofin_keep_alive(const void* p) noexcept { gofin::KeepAlive(p); }

void gofin_gc(void) noexcept {
  (void)Guard(0, [] {
    gofin::GC();
    return 0;
  });
}

int gofin_set_gc_percent(int percent) noexcept {
  return Guard(0, [&] { return gofin::debug::SetGCPercent(percent); });
}

int64_t gofin_set_memory_limit(int64_t limit) noexcept {
  return Guard<int64_t>(-1, [&] { return gofin::debug::SetMemoryLimit(limit); });
}

void gofin_read_memstats(gofin_memstats* out) noexcept {
  if (out == nullptr) {
    SetError("gofin_read_memstats: out is nil");
    return;
  }
  (void)Guard(0, [&] {
    const gofin::MemStats m = gofin::ReadMemStats();
    *out = gofin_memstats{m.Alloc,   m.TotalAlloc,  m.Sys,    m.Mallocs, m.Frees,       m.HeapAlloc,
                          m.HeapSys, m.HeapObjects, m.NextGC, m.NumGC,   m.PauseTotalNs};
    return 0;
  });
}

int gofin_set_finalizer(void* obj, gofin_finalizer_fn fn, void* data) noexcept {
  return gofin::internal::SetCFinalizer(obj, fn, data, gofin::SourceLocation{});
}

int gofin_set_finalizer_at(void* obj, gofin_finalizer_fn fn, void* data, const char* file,
                           int line) noexcept {
  return gofin::internal::SetCFinalizer(
      obj, fn, data, gofin::SourceLocation{file, "", static_cast<unsigned>(line)});
}

int gofin_remove_finalizer(void* obj) noexcept {
  return gofin_set_finalizer(obj, nullptr, nullptr);
}

gofin_cleanup gofin_add_cleanup(void* obj, void (*fn)(void* arg), void* arg) noexcept {
  return gofin::internal::AddCCleanup(obj, fn, arg, gofin::SourceLocation{});
}

gofin_cleanup gofin_add_cleanup_at(void* obj, void (*fn)(void* arg), void* arg, const char* file,
                                   int line) noexcept {
  return gofin::internal::AddCCleanup(obj, fn, arg,
                                      gofin::SourceLocation{file, "", static_cast<unsigned>(line)});
}

void gofin_cleanup_stop(gofin_cleanup c) noexcept {
  if (c == 0 || c == gofin::internal::kGlobalCleanup) return;
  const std::uintptr_t hidden = gofin::internal::Cleanups().Take(c);
  if (hidden != 0) gofin::detail::StopCleanup(c, hidden);
}

gofin_weak gofin_weak_make(void* obj) noexcept {
  if (obj == nullptr) return 0;
  return Guard<gofin_weak>(
      0, [&] { return reinterpret_cast<gofin_weak>(gofin::weak::detail::MakeHandle(obj)); });
}

void* gofin_weak_value(gofin_weak w) noexcept {
  return gofin::weak::detail::HandleValue(reinterpret_cast<void*>(w));  // NOLINT
}

void gofin_weak_release(gofin_weak w) noexcept {
  if (w != 0) gofin::weak::detail::ReleaseHandle(reinterpret_cast<void*>(w));  // NOLINT
}

void gofin_add_roots(const void* begin, const void* end) noexcept {
  (void)Guard(0, [&] {
    gofin::AddRoots(begin, end);
    return 0;
  });
}

void gofin_remove_roots(const void* begin, const void* end) noexcept {
  (void)Guard(0, [&] {
    gofin::RemoveRoots(begin, end);
    return 0;
  });
}

void gofin_register_thread(void) noexcept {
  (void)Guard(0, [] { return gofin::detail::RegisterCurrentThread() ? 1 : 0; });
}

void gofin_unregister_thread(void) noexcept {
  (void)Guard(0, [] {
    gofin::detail::UnregisterCurrentThread();
    return 0;
  });
}

void gofin_set_current_stack(void* lo, void* hi) noexcept { gofin::SetCurrentStack(lo, hi); }

int gofin_wait_finalizers(int64_t timeout_ns) noexcept {
  return Guard(0, [&] {
    return gofin::testing::BlockUntilEmptyFinalizerQueue(std::chrono::nanoseconds(timeout_ns)) ? 1
                                                                                               : 0;
  });
}

int gofin_wait_cleanups(int64_t timeout_ns) noexcept {
  return Guard(0, [&] {
    return gofin::testing::BlockUntilEmptyCleanupQueue(std::chrono::nanoseconds(timeout_ns)) ? 1
                                                                                             : 0;
  });
}

const char* gofin_last_error(void) noexcept { return gofin::internal::t_last_error.c_str(); }

}  // extern "C"
