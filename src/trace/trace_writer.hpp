#pragma once
// The GC timeline's file (trace.cpp has the design): the records of every thread's buffer as
// Chrome trace-event JSON, in the JSON Array Format, which Perfetto and chrome://tracing load
// even without its closing bracket, so a file cut short after any flush still opens. Stop and
// exit close it properly, for strict JSON readers.
#include <cstdint>

#include "trace/trace_buffer.hpp"

namespace gofin::internal::trace {

// The writer's lock, held by whoever writes the file (Start, Stop, a flush). A flag waited
// for in nanosleep, not a pthread mutex: a holder may be a mutator that the collector stops
// mid-write, and a thread blocked in pthread_mutex_lock under ThreadSanitizer never takes
// the stop signal. Never taken with the world stopped or inside a sweep guard.
bool TryLockWriter();
void LockWriter();
void UnlockWriter();

// With the writer's lock held:
// Whether a trace is being written (by this process: a fork's child has none).
bool FileOpen();
// Creates or truncates path and writes the array's start; the session it writes for is
// g_session + 1, which the caller publishes. False with errno set when path cannot be opened.
bool OpenFile(const char* path);
std::uint32_t FileSession();
// Writes what the buffers hold so far to the file.
void WriteBuffered();
// Writes everything, the runs still open included, closes the array and the file.
void CloseFile();
// After fork(), in the child: the file belongs to the parent; forget it without writing.
void AbandonFileAfterFork();

// Writes the buffers to the file if the last flush is 10 ms old. Called by threads between
// phases, outside any stop and sweep guard (the collecting thread after a cycle, the
// background sweeper between wake-ups, the finalizer, cleanup and destructor threads between
// blocks); it never waits: when another thread holds the lock, that thread is writing anyway.
void FlushIfDueSlow();
inline void FlushIfDue() {
  if (Enabled()) [[unlikely]]
    FlushIfDueSlow();
}

}  // namespace gofin::internal::trace
