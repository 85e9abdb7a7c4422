// The GC timeline (gofin's addition; Go's counterpart is the execution tracer's GC events,
// runtime/trace.go, shown by `go tool trace`).
//
// GOFIN_TRACE=path.json, or gofin::trace::Start(path), writes the collector's phases to a
// Chrome trace-event JSON file, which Perfetto (ui.perfetto.dev) and chrome://tracing open:
// one complete event ("ph":"X") per phase per thread, a "heap" counter, and the threads'
// names. The events and their nesting, per cycle n (args.cycle = n, the cycle's number in
// MemStats.NumGC):
//
//   collecting thread  [sweep by=finish, cycle n-1] [stop the world ........................]
//                                                    [mark worker=0] [mark termination]
//   gofin-mark                                       [mark worker=1]
//   mutators, gofin-sweep                                             after the restart:
//                                                    [sweep by=lazy|background, cycle n] ...
//   gofin-finalizer / gofin-cleanup / gofin-dtor      [finalizers] [cleanups] [destructors]
//
// "stop the world" runs from the stop request to the restart of the other threads, so it
// contains the cycle's marks (every worker's, on its own thread) and its mark termination.
// Other stops (ReadMemStats, freeing the objects whose destructors ran) are "stop the world"
// events with another reason. A "sweep" event is a run of spans one thread swept
// (trace_buffer.hpp), not one per span. A finalizers, cleanups or destructors event is one
// queue block, or the blocks one thread ran back to back within a millisecond; its cycle is
// the latest cycle when it started, so the one that queued its entries or a later one.
// Besides args.cycle:
//
//   stop the world     reason (collection, read, collector work), kind (full, minor) and
//                      forced for a collection, stopping_ns (request to all stopped),
//                      restarting_ns, threads (registered)
//   mark               worker (0: the collecting thread), bytes_marked, rescan (a pass after
//                      the mark queue overflowed)
//   mark termination   kind, heap_live (bytes found live), heap_goal (the next goal)
//   sweep              by (lazy, background, finish), spans, spans_freed (to the page heap),
//                      objects_freed, bytes_freed, sweeping_ns (time in the spans themselves)
//   finalizers, cleanups, destructors: how many ran (and the queue blocks: blocks)
//   heap (counter)     live, goal: as each cycle starts and as it ends
//
// Times are CLOCK_MONOTONIC, in the format's microseconds with nanosecond decimals.
//
// Recording must be possible where the collector runs: with the world stopped, inside a sweep
// guard, on mark workers. There it may take no lock (a stopped thread may hold it) and call no
// malloc (a stopped thread may hold malloc's lock), and it must cost nothing when tracing is
// off. So each thread appends fixed-size binary records to a buffer of its own, mmap'd
// (trace_buffer.cpp), after one relaxed load of the "enabled" flag. Formatting happens later,
// in the writer (trace_writer.cpp), on a thread that is in no stop and no guard: every 10 ms
// at most, from the collecting thread after its cycle, the background sweeper, and the
// finalizer, cleanup and destructor threads between blocks; and at Stop() and at exit. A
// buffer that fills grows by another mmap'd chunk instead of waiting for the writer.
//
// The file is a JSON array written front to back: a trace cut short (the program killed)
// still opens in the viewers, which accept the array without its closing bracket, and Stop()
// or exit() (an atexit handler) closes it, so that it is strict JSON too. A fork's child
// writes nothing to its parent's file.
#include "trace/trace.hpp"

#include <pthread.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "gofin/trace.hpp"

namespace gofin::internal::trace {

namespace {

void AtExit() { gofin::trace::Stop(); }

void AfterForkInChild() {
  g_enabled.store(false, std::memory_order_relaxed);
  // Records the child makes before a Start of its own must not be taken for that session's.
  g_session.fetch_add(1, std::memory_order_relaxed);
  AbandonFileAfterFork();
  ResetBuffersAfterFork();
}

}  // namespace

// GOFIN_TRACE, at the collector's initialization.
void StartFromEnv(const char* path) {
  if (path == nullptr || *path == '\0') return;
  if (!gofin::trace::Start(path) && errno != EBUSY) {
    std::fprintf(stderr, "gofin: GOFIN_TRACE=%s: %s\n", path, std::strerror(errno));
  }
}

}  // namespace gofin::internal::trace

namespace gofin::trace {

bool Start(const char* path) {
  namespace t = internal::trace;
  if (path == nullptr || *path == '\0') {
    errno = ENOENT;
    return false;
  }
  t::LockWriter();
  if (t::FileOpen()) {
    t::UnlockWriter();
    errno = EBUSY;
    return false;
  }
  if (!t::OpenFile(path)) {
    const int err = errno;
    t::UnlockWriter();
    errno = err;
    return false;
  }
  // Once per process, under the lock: the exit handler that closes the array (static
  // destructors and exit() both run it), and the fork handler that keeps a child out.
  static bool handlers = false;
  if (!handlers) {
    handlers = true;
    std::atexit(&t::AtExit);
    pthread_atfork(nullptr, nullptr, &t::AfterForkInChild);
  }
  // release: a thread that records with the new session sees the writer's state behind it.
  t::g_session.store(t::FileSession(), std::memory_order_release);
  t::g_enabled.store(true, std::memory_order_release);
  t::UnlockWriter();
  return true;
}

void Stop() {
  namespace t = internal::trace;
  t::LockWriter();
  if (t::FileOpen()) {
    t::g_enabled.store(false, std::memory_order_relaxed);
    t::CloseFile();
    // Records made by threads that saw the flag just before it fell carry a session no
    // later Start will use.
    t::g_session.fetch_add(1, std::memory_order_release);
  }
  t::UnlockWriter();
}

}  // namespace gofin::trace
