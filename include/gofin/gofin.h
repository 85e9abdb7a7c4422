/* gofin's C API (C11): Go's garbage-collected heap, finalizers, cleanups and weak pointers for
 * C programs and language runtimes written in C. The same library as the C++ API: link with
 * `pkg-config --libs gofin` or CMake's gofin::gofin (the C++ runtime comes along).
 *
 * Memory from gofin_malloc is freed by the collector once nothing points to it. Pointers are
 * found conservatively: in thread stacks and registers, in the data and bss of the program
 * and its shared libraries, in ranges added with gofin_add_roots, and in scanned GC blocks.
 * Memory from malloc() is not scanned: a GC pointer kept only there does not keep its object
 * alive (add the range with gofin_add_roots).
 *
 * Errors never unwind: no C++ exception crosses this boundary. A misused call returns its
 * error value (documented per function) and leaves Go's message in gofin_last_error(). */
#ifndef GOFIN_GOFIN_H
#define GOFIN_GOFIN_H

#if !defined(__cplusplus) && (!defined(__STDC_VERSION__) || __STDC_VERSION__ < 201112L)
#error "gofin.h needs C11 or later (-std=c11)"
#endif

/* A C header: C's headers and typedefs, also when C++ includes it. */
/* NOLINTBEGIN(modernize-deprecated-headers,modernize-use-using) */
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#define GOFIN_NOEXCEPT noexcept
#else
#define GOFIN_NOEXCEPT
#endif

/** @defgroup c_api C API
 * gofin for C programs (`#include <gofin/gofin.h>`).
 * @{ */

/* ---- Allocation (Go: new, mallocgc) ---------------------------------------------------- */

/** Allocates `bytes` of zeroed memory that the collector scans for pointers. NULL when out of
 * memory (gofin_last_error() says so); a zero-byte request returns a valid non-NULL pointer. */
void* gofin_malloc(size_t bytes) GOFIN_NOEXCEPT;
/** Like gofin_malloc, for memory that never holds GC pointers (strings, numbers, pixels): the
 * collector never scans it, so it cannot keep anything alive by accident and costs less to
 * collect. */
void* gofin_malloc_noscan(size_t bytes) GOFIN_NOEXCEPT;
/** Extension (bdwgc: GC_REALLOC). A new block of `bytes` holding the first
 * min(old size, bytes) bytes of `p` (the rest zeroed), scanned like `p` was; `p` itself is
 * left to the collector. gofin_realloc(NULL, n) is gofin_malloc(n). NULL when out of memory
 * or when `p` is not the start of a live GC block (gofin_last_error() says which). */
void* gofin_realloc(void* p, size_t bytes) GOFIN_NOEXCEPT;
/** Extension (Go: runtime.KeepAlive). `p` stays reachable until this call, so its finalizer
 * or cleanups cannot run before it. */
void gofin_keep_alive(const void* p) GOFIN_NOEXCEPT;

/* ---- Collection (Go: runtime.GC, runtime/debug) ---------------------------------------- */

/** A full collection; returns once marking and sweeping are complete and every finalizer of
 * an object unreachable at the call is queued. */
void gofin_gc(void) GOFIN_NOEXCEPT;
/** Go: debug.SetGCPercent. Returns the previous value; a negative value turns pacing off. */
int gofin_set_gc_percent(int percent) GOFIN_NOEXCEPT;
/** Extension (Go: debug.SetMemoryLimit). Returns the previous limit in bytes; a negative
 * value only reads it. */
int64_t gofin_set_memory_limit(int64_t limit) GOFIN_NOEXCEPT;

/** A subset of Go's runtime.MemStats, with Go's meanings. */
typedef struct gofin_memstats {
  uint64_t alloc;          /**< bytes of allocated heap objects (= heap_alloc) */
  uint64_t total_alloc;    /**< cumulative bytes allocated (never decreases) */
  uint64_t sys;            /**< bytes obtained from the OS */
  uint64_t mallocs;        /**< cumulative count of objects allocated */
  uint64_t frees;          /**< cumulative count of objects freed */
  uint64_t heap_alloc;     /**< bytes of allocated heap objects */
  uint64_t heap_sys;       /**< bytes of heap memory obtained from the OS */
  uint64_t heap_objects;   /**< objects allocated and not yet freed */
  uint64_t next_gc;        /**< the heap size at which the next collection starts */
  uint64_t num_gc;         /**< completed collections */
  uint64_t pause_total_ns; /**< cumulative time the world was stopped, in nanoseconds */
} gofin_memstats;
/** Fills `*out` (Go: runtime.ReadMemStats). */
void gofin_read_memstats(gofin_memstats* out) GOFIN_NOEXCEPT;

/* ---- Finalizers (Go: runtime.SetFinalizer) --------------------------------------------- */

/** A finalizer: fn(obj, data), run on the finalizer thread. */
typedef void (*gofin_finalizer_fn)(void* obj, void* data);
/** Go: runtime.SetFinalizer. Once a collection finds `obj` unreachable, `fn(obj, data)` runs
 * on the finalizer thread; `obj` stays alive until then and may be resurrected. `data` is
 * kept alive while the finalizer is set if it points into the GC heap (it must not point to
 * `obj`, or `obj` is never collected). `obj` must be the start of a block from gofin_malloc
 * (or a global, where this does nothing: a global never becomes unreachable). fn NULL
 * removes the finalizer. Returns 0, or -1 on misuse (`runtime.SetFinalizer: finalizer
 * already set`, `... pointer not in allocated block`, ...). */
int gofin_set_finalizer(void* obj, gofin_finalizer_fn fn, void* data) GOFIN_NOEXCEPT;
/** Removes obj's finalizer: 0, or -1 on misuse (obj not the start of a GC block). */
int gofin_remove_finalizer(void* obj) GOFIN_NOEXCEPT;

/* ---- Cleanups (Go 1.24+: runtime.AddCleanup) ------------------------------------------- */

/** The id of one cleanup; 0 when gofin_add_cleanup failed. */
typedef uint64_t gofin_cleanup;
/** Go: runtime.AddCleanup. Some time after `obj` is unreachable it is freed, and fn(arg)
 * runs on a cleanup thread (concurrently with other cleanups). Any number per object, at any
 * address inside it; no resurrection. `arg` is kept alive while the cleanup is pending; if
 * `obj` is reachable from `arg`, it is never freed. Returns the cleanup's id, or 0 on misuse
 * (`runtime.AddCleanup: ptr is nil`, `... ptr is equal to arg, cleanup will never run`,
 * `... ptr is within arg, ...`, `... ptr not in allocated block`, `... cleanup is nil`). For
 * a global (never unreachable) it returns a valid id that nothing will run. */
gofin_cleanup gofin_add_cleanup(void* obj, void (*fn)(void* arg), void* arg) GOFIN_NOEXCEPT;
/** Go: Cleanup.Stop. Cancels the cleanup unless it was already queued or ran; harmless on 0,
 * twice, or after the cleanup ran. */
void gofin_cleanup_stop(gofin_cleanup c) GOFIN_NOEXCEPT;

/* ---- Weak pointers (Go 1.24+: package weak) -------------------------------------------- */

/** A weak pointer's handle: 0 for NULL; two handles of the same object (and offset) are
 * equal. A handle is not a GC pointer and keeps nothing alive: keep it anywhere. */
typedef uintptr_t gofin_weak;
/** Go: weak.Make. 0 for NULL, and 0 on misuse (`weak.Make: pointer not in allocated block`,
 * for a pointer to a freed block). Each call takes a reference to the handle, which
 * gofin_weak_release gives back; a handle never released costs 16 bytes after its object
 * died. A global's handle never goes nil. */
gofin_weak gofin_weak_make(void* obj) GOFIN_NOEXCEPT;
/** Go: weak.Pointer.Value. The object, or NULL once a collection found it unreachable (for
 * an object with a finalizer: from the cycle that queued the finalizer, even if the
 * finalizer resurrects it). NULL for 0. */
void* gofin_weak_value(gofin_weak w) GOFIN_NOEXCEPT;
/** Extension: gives back the reference one gofin_weak_make took; the handle must not be used
 * after its last release. Harmless on 0. */
void gofin_weak_release(gofin_weak w) GOFIN_NOEXCEPT;

/* ---- Roots and threads ----------------------------------------------------------------- */

/** bdwgc: GC_add_roots. Scans [begin, end) conservatively at every collection until
 * removed; for GC pointers kept in malloc() memory or in mappings gofin does not know. */
void gofin_add_roots(const void* begin, const void* end) GOFIN_NOEXCEPT;
/** Removes a range added with gofin_add_roots (the same begin and end). */
void gofin_remove_roots(const void* begin, const void* end) GOFIN_NOEXCEPT;
/** Optional: a thread registers on its first call into gofin. Register first a thread that
 * holds GC pointers before its first call. */
void gofin_register_thread(void) GOFIN_NOEXCEPT;
/** A registered thread that goes on running without gofin calls gofin_unregister_thread; a
 * thread that exits is unregistered by itself. */
void gofin_unregister_thread(void) GOFIN_NOEXCEPT;
/** Extension (bdwgc: GC_set_stackbottom), for coroutines and fibers: the calling thread now
 * runs on the stack segment [lo, hi) (hi: its highest address), or on its own stack again
 * when both are NULL. Call it on the stack being left, just before switching. */
void gofin_set_current_stack(void* lo, void* hi) GOFIN_NOEXCEPT;

/* ---- Test support ---------------------------------------------------------------------- */

/** 1 when the finalizer queue drained (and no finalizer is running) within timeout_ns,
 * else 0. */
int gofin_wait_finalizers(int64_t timeout_ns) GOFIN_NOEXCEPT;
/** 1 when the cleanup queue drained (and no cleanup is running) within timeout_ns, else 0. */
int gofin_wait_cleanups(int64_t timeout_ns) GOFIN_NOEXCEPT;

/* ---- Errors ---------------------------------------------------------------------------- */

/** This thread's last misuse message (Go's text, e.g. `runtime.SetFinalizer: finalizer
 * already set`), "" when none yet. Like errno, a successful call leaves it alone: read it
 * when a call returned its error value. The string stays valid until the thread's next
 * misuse. */
const char* gofin_last_error(void) GOFIN_NOEXCEPT;

/* ---- Where a registration came from (GOFIN_DEBUG=checkfinalizers) ---------------------- */

/** gofin_set_finalizer and gofin_add_cleanup with the caller's file and line, which
 * GOFIN_DEBUG=checkfinalizers=1 reports for a finalizer or cleanup that can never run. The
 * macros below make every call pass them; define GOFIN_NO_LOCATION_MACROS to call the plain
 * functions (or write `(gofin_set_finalizer)(...)`). */
int gofin_set_finalizer_at(void* obj, gofin_finalizer_fn fn, void* data, const char* file,
                           int line) GOFIN_NOEXCEPT;
gofin_cleanup gofin_add_cleanup_at(void* obj, void (*fn)(void* arg), void* arg, const char* file,
                                   int line) GOFIN_NOEXCEPT;
#ifndef GOFIN_NO_LOCATION_MACROS
#define gofin_set_finalizer(obj, fn, data) \
  gofin_set_finalizer_at((obj), (fn), (data), __FILE__, __LINE__)
#define gofin_add_cleanup(obj, fn, arg) gofin_add_cleanup_at((obj), (fn), (arg), __FILE__, __LINE__)
#endif

/** @} */

#ifdef __cplusplus
}  // extern "C"
#endif
#undef GOFIN_NOEXCEPT
/* NOLINTEND(modernize-deprecated-headers,modernize-use-using) */

#endif /* GOFIN_GOFIN_H */
