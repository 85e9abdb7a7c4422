#pragma once
// The GC timeline's recording side (trace.cpp has the design; trace_writer.hpp turns the records
// into the JSON file). The collector, the sweepers and the finalizer, cleanup and destructor
// threads call the functions below at the edges of each phase. Each call is guarded by
// Enabled(), one relaxed load of a flag that is false unless a trace is being written, so a
// program that never traces pays one predictable branch per call site and nothing else.
//
// When on, a phase becomes a fixed-size Record appended to the calling thread's own buffer:
// no lock, no allocation from the GC heap or malloc (the buffers are mmap'd), so the
// collector may record with the world stopped, and mark workers while they mark.
#include <atomic>
#include <cstdint>
#include <ctime>

namespace gofin::internal::trace {

// The timeline's phases, one JSON name each (trace_writer.cpp's table).
enum class Event : std::uint8_t {
  kStopTheWorld,     // "stop the world": from the stop request to the threads restarted
  kMark,             // "mark": one mark worker's share of one mark phase
  kMarkTermination,  // "mark termination": after the mark, until the restart is requested
  kSweep,            // "sweep": a run of spans one thread swept
  kFinalizers,       // "finalizers": one queue block run by the finalizer thread
  kCleanups,         // "cleanups": one block's cleanups run by one cleanup thread
  kDestructors,      // "destructors": one queue block run by the destructor thread
  kHeapCounter,      // "heap": the heap live and heap goal counters
};

// Why the world was stopped (a stop-the-world record's sub field).
enum class StopReason : std::uint8_t { kCollection, kRead, kCollectorWork };
// Who swept a run of spans (a sweep record's sub field): an allocating thread before reusing a
// span (lazy), the background sweeper, or a thread finishing the sweep (GC(), a cycle's start).
enum class SweepBy : std::uint8_t { kLazy, kBackground, kFinish };

// One event as recorded. Integers only: the writer knows from the event what each means, so
// recording never formats text, and a record holds no pointer (the buffers are not scanned,
// but copies pass through scanned stacks). Trivial, without member initializers: a buffer's
// fresh chunk is zeroed by the kernel and must not be written (made resident) before use;
// a record is built as `Record r{}`.
struct Record {
  Event event;
  std::uint8_t sub;       // StopReason, SweepBy
  std::uint32_t session;  // the Start() the record belongs to (trace.cpp)
  std::uint64_t start;    // Now() values
  std::uint64_t end;
  std::uint64_t cycle;  // args.cycle
  std::uint64_t arg[5];
};

// Set by Start and Stop. Relaxed: a record that misses the switch is either not made or
// made for a session that has ended, which the writer drops.
extern constinit std::atomic<bool> g_enabled;
// The current session; a record carries the one it was made in.
extern constinit std::atomic<std::uint32_t> g_session;
// The cycle the timeline attributes work to: set by the collector, with the world stopped,
// to the number its cycle will have in MemStats.NumGC. The sweep and the queues after it
// belong to that cycle until the next one.
extern constinit std::atomic<std::uint64_t> g_cycle;

inline bool Enabled() { return g_enabled.load(std::memory_order_relaxed); }

// Bit 63 of every timestamp: gofin scans stacks conservatively, and a nanosecond count since
// boot is, for a second or so at certain uptimes, a number in the heap's address range (the
// arenas lie at Go's hints, 0xc000000000 and up); with the bit set no timestamp left in a
// frame can keep an object alive. It also makes 0 mean "not tracing".
inline constexpr std::uint64_t kTimeTag = std::uint64_t{1} << 63;

// CLOCK_MONOTONIC in nanoseconds, tagged: the clock Chrome's own traces use, so that a gofin
// timeline lines up with other traces of the same boot taken on it.
inline std::uint64_t Now() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (static_cast<std::uint64_t>(ts.tv_sec) * 1000000000U +
          static_cast<std::uint64_t>(ts.tv_nsec)) |
         kTimeTag;
}

// The start of a phase: 0 when not tracing, else Now(). It first closes the thread's open
// sweep run (below), so that the run ends before this phase begins and the thread's events
// nest in the viewer.
std::uint64_t BeginSlow();
inline std::uint64_t Begin() {
  if (!Enabled()) [[likely]]
    return 0;
  return BeginSlow();
}

inline void SetCycle(std::uint64_t n) { g_cycle.store(n, std::memory_order_relaxed); }
inline std::uint64_t CurrentCycle() { return g_cycle.load(std::memory_order_relaxed); }

// The start of a block of finalizers, cleanups or destructors: its time (0 when not tracing)
// and the cycle as it starts. The cycle first: a stop between the two then only makes the
// start later, so a block never names a cycle whose stop began after the block did.
struct BatchStart {
  std::uint64_t cycle = 0;
  std::uint64_t start = 0;
};
inline BatchStart BeginBatch() {
  if (!Enabled()) [[likely]]
    return {};
  const std::uint64_t cycle = CurrentCycle();
  return {cycle, BeginSlow()};
}

// The records, each for the calling thread and the current session. They never block and
// never allocate outside their mmap'd buffers; safe with the world stopped. The times are
// Begin()/Now() values.
void StopTheWorld(StopReason why, std::uint64_t cycle, std::uint64_t requested,
                  std::uint64_t stopped, std::uint64_t restarting, std::uint64_t restarted,
                  std::uint64_t threads, bool minor, bool forced);
void Mark(std::uint64_t start, std::uint64_t end, int worker, std::uint64_t bytes_marked,
          bool rescan);
void MarkTermination(std::uint64_t start, std::uint64_t end, std::uint64_t cycle,
                     std::uint64_t heap_live, std::uint64_t heap_goal, bool minor);
// Blocks of finalizers, cleanups or destructors run (count of them in `blocks` queue blocks),
// ending now.
void Batch(Event what, const BatchStart& begun, std::uint64_t count, std::uint64_t blocks = 1);
void HeapCounter(std::uint64_t at, std::uint64_t heap_live, std::uint64_t heap_goal);

// The queue blocks one thread runs in one go (the finalizer thread's and the destructor
// thread's chains): one event per block, except that blocks finishing within 1 ms of the
// event's start join it. A slow block keeps an event of its own; a burst of fast ones (a
// program freeing millions of objects with destructors: 101 per block, a microsecond each)
// makes one event per millisecond, not one per block, so the file stays small.
class BatchRun {
 public:
  explicit BatchRun(Event what) : what_(what), begun_(BeginBatch()) {}
  ~BatchRun() { End(); }
  BatchRun(const BatchRun&) = delete;
  BatchRun& operator=(const BatchRun&) = delete;
  // Whether the run is being recorded (the caller counts the block's entries only then).
  [[nodiscard]] bool Active() const { return begun_.start != 0; }
  // After each block, with the number of entries it ran.
  void BlockRan(std::uint64_t count) {
    if (begun_.start != 0) [[unlikely]]
      BlockRanSlow(count);
  }
  // Records what the run has not recorded yet.
  void End() {
    if (begun_.start != 0 && blocks_ != 0) [[unlikely]]
      Batch(what_, begun_, count_, blocks_);
    begun_ = {};
  }

 private:
  void BlockRanSlow(std::uint64_t count);
  Event what_;
  BatchStart begun_;
  std::uint64_t count_ = 0;
  std::uint64_t blocks_ = 0;
};

// Sweeping is recorded per run of spans, not per span (a span takes microseconds; one event
// each would make the file as large as the heap is in spans): a thread's consecutive spans
// join one open run while they belong to the same cycle and sweeper kind, start within 50 us
// of the previous span's end and within 1 ms of the run's start. The run is appended when
// the next span does not join it, when the thread begins another phase, when a finishing or
// background sweep ends (CloseSweepRun), or at thread exit; a run still open at Stop is
// written from the thread's buffer by the writer.
void SpanSwept(std::uint64_t start, std::uint64_t end, std::uint64_t objects_freed,
               std::uint64_t bytes_freed, bool span_freed);
void CloseSweepRunSlow();

// Times one span's sweep (heap hooks' SweepSpan): one Enabled() test on entry when off.
class SpanSweepTimer {
 public:
  SpanSweepTimer() : start_(Enabled() ? Now() : 0) {}
  ~SpanSweepTimer() {
    if (start_ != 0) [[unlikely]]
      SpanSwept(start_, Now(), objects_, bytes_, span_freed_);
  }
  SpanSweepTimer(const SpanSweepTimer&) = delete;
  SpanSweepTimer& operator=(const SpanSweepTimer&) = delete;
  void Freed(std::uint64_t objects, std::uint64_t bytes) {
    objects_ = objects;
    bytes_ = bytes;
  }
  void SpanFreed() { span_freed_ = true; }

 private:
  std::uint64_t start_;
  std::uint64_t objects_ = 0;
  std::uint64_t bytes_ = 0;
  bool span_freed_ = false;
};

struct ThreadBuffer;
// The calling thread's buffer, or nullptr if it never recorded (initial-exec TLS: readable
// from anywhere without a call into the dynamic linker, which may allocate).
extern constinit thread_local ThreadBuffer* t_buffer __attribute__((tls_model("initial-exec")));
extern constinit thread_local SweepBy t_sweep_by __attribute__((tls_model("initial-exec")));

// Appends the calling thread's open sweep run, if it has one.
inline void CloseSweepRun() {
  if (t_buffer != nullptr) [[unlikely]]
    CloseSweepRunSlow();
}

// Marks the spans the calling thread sweeps in its scope as a background or finishing sweep,
// and closes the run at its end (the run must not stay open across the thread's sleep).
class SweepScope {
 public:
  explicit SweepScope(SweepBy by) : previous_(t_sweep_by) { t_sweep_by = by; }
  ~SweepScope() {
    CloseSweepRun();
    t_sweep_by = previous_;
  }
  SweepScope(const SweepScope&) = delete;
  SweepScope& operator=(const SweepScope&) = delete;

 private:
  SweepBy previous_;
};

// A registered thread's exit (gc's thread-exit hook): its open run is appended and its buffer
// left to the writer, which drains it and hands it to the next thread that records.
void OnThreadExit();

// ---- The writer's side (trace_writer.cpp), always under the writer's lock. ----

// What the writer gets for each record: the thread it came from.
struct ThreadInfo {
  int tid = 0;
  const char* name = nullptr;  // the thread's name (comm) when it first recorded
  bool name_new = false;       // the first record of this thread in this session
};
using RecordSink = void (*)(const ThreadInfo& thread, const Record& r);
// Hands every record of session not handed out yet to sink, oldest first per thread, and
// gives consumed memory back. final: also the runs still open (Stop).
void DrainBuffers(std::uint32_t session, bool final, RecordSink sink);
// Records lost because the kernel refused a buffer's memory.
std::uint64_t DroppedRecords();
// After fork(), in the child: every other thread's buffer is orphaned.
void ResetBuffersAfterFork();

}  // namespace gofin::internal::trace
