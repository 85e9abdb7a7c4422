#pragma once
// A GC timeline (gofin's addition): the collector's phases as a Chrome trace-event JSON file,
// which Perfetto (ui.perfetto.dev) and chrome://tracing open. Per thread, one complete event
// per phase: "stop the world", "mark" (each mark worker's share, the collecting thread's
// included), "mark termination", "sweep" (runs of spans, by allocating threads and the
// background sweeper), "finalizers", "cleanups" and "destructors" (queue blocks run), each
// with the cycle's number (MemStats.NumGC) in args.cycle; a "heap" counter (live, goal) at
// each cycle's start and end; the threads' names. Recording costs nothing while no trace is
// being written (one test of a flag per phase).

namespace gofin::trace {

// Starts writing the timeline to path, created or truncated (GOFIN_TRACE=path does this when
// the collector initializes). False, with errno set, when the file cannot be opened; false
// (errno EBUSY) when a trace is already being written.
bool Start(const char* path);
// Flushes and closes the file; harmless when no trace is being written. The file is valid
// JSON even when the program exits without calling it (exit() closes it); a program killed
// meanwhile leaves a file that lacks only the array's closing bracket, which the viewers
// accept. The events are written every 10 ms at most, so such a file ends there.
void Stop();

}  // namespace gofin::trace
