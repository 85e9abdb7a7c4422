#include "trace/trace_buffer.hpp"

#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstddef>
#include <cstring>
#include <new>
#include <type_traits>

namespace gofin::internal::trace {

constinit std::atomic<bool> g_enabled{false};
constinit std::atomic<std::uint32_t> g_session{0};
constinit std::atomic<std::uint64_t> g_cycle{0};
constinit thread_local ThreadBuffer* t_buffer = nullptr;
constinit thread_local SweepBy t_sweep_by = SweepBy::kLazy;

namespace {

// A run of spans joins the open run when it starts this soon after the run's last span...
constexpr std::uint64_t kRunGapNs = 50'000;
// ...and this soon after the run's first span: a busy lazy sweeper still gets an event per
// millisecond, so the viewer shows when it swept, not one bar over its whole burst. The same
// window bounds a BatchRun's events.
constexpr std::uint64_t kRunWindowNs = 1'000'000;

// One mmap'd piece of a thread's buffer. Only its owner appends (count, release); only the
// writer reads (count, acquire) and, once the owner has moved to the next chunk, unmaps it.
struct Chunk {
  static constexpr std::size_t kBytes = std::size_t{64} << 10;
  static_assert(std::is_trivially_default_constructible_v<Record>,
                "constructing a chunk must not write its records");
  std::atomic<std::uint32_t> count{0};
  std::atomic<Chunk*> next{nullptr};
  static constexpr std::size_t kRecords = (kBytes - 64) / sizeof(Record);
  // Left unwritten on purpose (mmap gave zeros): only the owner fills them, one at a time.
  alignas(64) Record records[kRecords];  // NOLINT(cppcoreguidelines-pro-type-member-init)
};
static_assert(sizeof(Chunk) <= Chunk::kBytes);

// The open sweep run, read by the writer at Stop while its owner may be extending it: every
// field is an atomic, and seq is a sequence lock, odd while the owner writes, so the writer
// keeps a consistent copy or none. The owner stores fields with release and the writer loads
// them with acquire (plain moves on x86-64), which orders them against seq without fences
// (ThreadSanitizer does not model fences).
struct OpenRun {
  std::atomic<std::uint64_t> seq{0};
  std::atomic<std::uint64_t> start{0};  // 0: no open run
  std::atomic<std::uint64_t> end{0};
  std::atomic<std::uint64_t> cycle{0};
  std::atomic<std::uint64_t> session_by{0};  // session << 8 | SweepBy
  std::atomic<std::uint64_t> spans{0};
  std::atomic<std::uint64_t> spans_freed{0};
  std::atomic<std::uint64_t> objects{0};
  std::atomic<std::uint64_t> bytes{0};
  std::atomic<std::uint64_t> busy{0};
};

enum BufferState : std::uint32_t { kFree, kClaiming, kOwned, kOrphaned };

}  // namespace

// One per thread that ever recorded, never unmapped: the writer may read one whose thread
// has exited, and a later thread takes it over once drained.
struct ThreadBuffer {
  // Owner's side.
  Chunk* cur = nullptr;
  OpenRun run;
  // Identity, written by the claiming thread before it publishes kOwned (release).
  std::atomic<std::uint32_t> state{kFree};
  std::uint32_t claims = 0;  // how many threads owned it: a new owner needs a new name event
  int tid = 0;
  char name[16] = {};
  ThreadBuffer* next = nullptr;  // the list of all buffers, set before the buffer is pushed
  // Writer's side (under its lock).
  Chunk* read_chunk = nullptr;
  std::uint32_t read_index = 0;
  std::uint32_t named_session = 0;
  std::uint32_t named_claims = 0;
};

namespace {

constinit std::atomic<ThreadBuffer*> g_buffers{nullptr};
constinit std::atomic<std::uint64_t> g_dropped{0};

// Anonymous memory straight from the kernel: safe with the world stopped (no lock a stopped
// thread could hold) and never scanned by the collector (not a data segment, not a stack).
void* MapZeroed(std::size_t bytes) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? nullptr : p;
}

Chunk* NewChunk() {
  void* p = MapZeroed(Chunk::kBytes);
  return p == nullptr ? nullptr : new (p) Chunk();
}

void SetIdentity(ThreadBuffer* b) {
  b->tid = static_cast<int>(syscall(SYS_gettid));
  // The kernel's name for the calling thread, without a file read: gofin's threads set theirs
  // ("gofin-mark", "gofin-sweep", ...) before they first record.
  std::memset(b->name, 0, sizeof(b->name));
  (void)prctl(PR_GET_NAME, b->name, 0, 0, 0);
  b->name[sizeof(b->name) - 1] = '\0';
  ++b->claims;
}

// The calling thread's buffer: a drained one left by an exited thread, or a new one.
ThreadBuffer* Claim() {
  for (ThreadBuffer* b = g_buffers.load(std::memory_order_acquire); b != nullptr; b = b->next) {
    std::uint32_t expected = kFree;
    if (b->state.compare_exchange_strong(expected, kClaiming, std::memory_order_acquire)) {
      SetIdentity(b);
      b->state.store(kOwned, std::memory_order_release);
      t_buffer = b;
      return b;
    }
  }
  void* mem = MapZeroed(sizeof(ThreadBuffer));
  Chunk* chunk = NewChunk();
  if (mem == nullptr || chunk == nullptr) {
    if (mem != nullptr) munmap(mem, sizeof(ThreadBuffer));
    if (chunk != nullptr) munmap(chunk, Chunk::kBytes);
    return nullptr;
  }
  auto* b = new (mem) ThreadBuffer();
  b->cur = chunk;
  b->read_chunk = chunk;
  SetIdentity(b);
  b->state.store(kOwned, std::memory_order_relaxed);
  // release: the writer that finds the buffer in the list sees it initialized.
  ThreadBuffer* head = g_buffers.load(std::memory_order_relaxed);
  do {
    b->next = head;
  } while (!g_buffers.compare_exchange_weak(head, b, std::memory_order_release,
                                            std::memory_order_relaxed));
  t_buffer = b;
  return b;
}

ThreadBuffer* Mine() {
  ThreadBuffer* b = t_buffer;
  return b != nullptr ? b : Claim();
}

void AppendTo(ThreadBuffer* b, const Record& r) {
  Chunk* c = b->cur;
  std::uint32_t n = c->count.load(std::memory_order_relaxed);
  if (n == Chunk::kRecords) {
    // A new chunk rather than a flush: the thread may be inside a stop or a sweep, where
    // waiting for the writer could wait for a stopped thread. The writer frees full chunks.
    Chunk* fresh = NewChunk();
    if (fresh == nullptr) {
      g_dropped.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    // release: the writer that follows next sees the fresh chunk's zeroed count.
    c->next.store(fresh, std::memory_order_release);
    b->cur = c = fresh;
    n = 0;
  }
  c->records[n] = r;
  // release: the writer that sees the count sees the record.
  c->count.store(n + 1, std::memory_order_release);
}

std::uint32_t Session() {
  // acquire: pairs with Start's release, which published the session's state first.
  return g_session.load(std::memory_order_acquire);
}

void Append(Record r) {
  ThreadBuffer* b = Mine();
  if (b == nullptr) {
    g_dropped.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  r.session = Session();
  AppendTo(b, r);
}

// Appends every other phase of this thread: its open sweep run first, so that the run,
// which ended earlier, does not straddle the new event's boundaries in the viewer.
void AppendPhase(const Record& r) {
  CloseSweepRun();
  Append(r);
}

// The owner's writes to its open run, inside the sequence lock.
class RunWrite {
 public:
  explicit RunWrite(OpenRun& run) : run_(run), seq_(run.seq.load(std::memory_order_relaxed)) {
    // The fields' release stores keep this store before them.
    run_.seq.store(seq_ + 1, std::memory_order_relaxed);
  }
  ~RunWrite() { run_.seq.store(seq_ + 2, std::memory_order_release); }
  RunWrite(const RunWrite&) = delete;
  RunWrite& operator=(const RunWrite&) = delete;

 private:
  OpenRun& run_;
  std::uint64_t seq_;
};

Record RunRecord(const OpenRun& run) {
  Record r{};
  r.event = Event::kSweep;
  const std::uint64_t session_by = run.session_by.load(std::memory_order_acquire);
  r.sub = static_cast<std::uint8_t>(session_by & 0xff);
  r.session = static_cast<std::uint32_t>(session_by >> 8);
  r.start = run.start.load(std::memory_order_acquire);
  r.end = run.end.load(std::memory_order_acquire);
  r.cycle = run.cycle.load(std::memory_order_acquire);
  r.arg[0] = run.spans.load(std::memory_order_acquire);
  r.arg[1] = run.spans_freed.load(std::memory_order_acquire);
  r.arg[2] = run.objects.load(std::memory_order_acquire);
  r.arg[3] = run.bytes.load(std::memory_order_acquire);
  r.arg[4] = run.busy.load(std::memory_order_acquire);
  return r;
}

// Appends the owner's open run and closes it. Closed first: a Stop between the two loses the
// run rather than writing it twice.
void CloseRun(ThreadBuffer* b) {
  OpenRun& run = b->run;
  if (run.start.load(std::memory_order_relaxed) == 0) return;
  const Record r = RunRecord(run);
  {
    const RunWrite w(run);
    run.start.store(0, std::memory_order_release);
  }
  AppendTo(b, r);
}

}  // namespace

std::uint64_t BeginSlow() {
  CloseSweepRun();
  return Now();
}

void StopTheWorld(StopReason why, std::uint64_t cycle, std::uint64_t requested,
                  std::uint64_t stopped, std::uint64_t restarting, std::uint64_t restarted,
                  std::uint64_t threads, bool minor, bool forced) {
  Record r{};
  r.event = Event::kStopTheWorld;
  r.sub = static_cast<std::uint8_t>(why);
  r.start = requested;
  r.end = restarted;
  r.cycle = cycle;
  r.arg[0] = stopped - requested;
  r.arg[1] = restarted - restarting;
  r.arg[2] = threads;
  r.arg[3] = minor ? 1 : 0;
  r.arg[4] = forced ? 1 : 0;
  AppendPhase(r);
}

void Mark(std::uint64_t start, std::uint64_t end, int worker, std::uint64_t bytes_marked,
          bool rescan) {
  Record r{};
  r.event = Event::kMark;
  r.start = start;
  r.end = end;
  r.cycle = CurrentCycle();
  r.arg[0] = static_cast<std::uint64_t>(worker);
  r.arg[1] = bytes_marked;
  r.arg[2] = rescan ? 1 : 0;
  AppendPhase(r);
}

void MarkTermination(std::uint64_t start, std::uint64_t end, std::uint64_t cycle,
                     std::uint64_t heap_live, std::uint64_t heap_goal, bool minor) {
  Record r{};
  r.event = Event::kMarkTermination;
  r.start = start;
  r.end = end;
  r.cycle = cycle;
  r.arg[0] = heap_live;
  r.arg[1] = heap_goal;
  r.arg[2] = minor ? 1 : 0;
  AppendPhase(r);
}

void Batch(Event what, const BatchStart& begun, std::uint64_t count, std::uint64_t blocks) {
  Record r{};
  r.event = what;
  r.start = begun.start;
  r.end = Now();
  r.cycle = begun.cycle;
  r.arg[0] = count;
  r.arg[1] = blocks;
  AppendPhase(r);
}

void BatchRun::BlockRanSlow(std::uint64_t count) {
  count_ += count;
  ++blocks_;
  if (Now() - begun_.start < kRunWindowNs) return;
  Batch(what_, begun_, count_, blocks_);
  count_ = 0;
  blocks_ = 0;
  begun_ = BeginBatch();  // 0 if tracing stopped meanwhile: the rest of the run is not recorded
}

void HeapCounter(std::uint64_t at, std::uint64_t heap_live, std::uint64_t heap_goal) {
  Record r{};
  r.event = Event::kHeapCounter;
  r.start = at;
  r.end = at;
  r.cycle = CurrentCycle();
  r.arg[0] = heap_live;
  r.arg[1] = heap_goal;
  Append(r);
}

void SpanSwept(std::uint64_t start, std::uint64_t end, std::uint64_t objects_freed,
               std::uint64_t bytes_freed, bool span_freed) {
  ThreadBuffer* b = Mine();
  if (b == nullptr) {
    g_dropped.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  OpenRun& run = b->run;
  const std::uint64_t cycle = CurrentCycle();
  const std::uint64_t session_by =
      (std::uint64_t{Session()} << 8) | static_cast<std::uint64_t>(t_sweep_by);
  const std::uint64_t run_start = run.start.load(std::memory_order_relaxed);
  if (run_start != 0) {
    if (run.cycle.load(std::memory_order_relaxed) == cycle &&
        run.session_by.load(std::memory_order_relaxed) == session_by &&
        start - run.end.load(std::memory_order_relaxed) <= kRunGapNs &&
        start - run_start <= kRunWindowNs) {
      const RunWrite w(run);
      // Only the owner writes: a load and a store, not a read-modify-write.
      const auto add = [](std::atomic<std::uint64_t>& field, std::uint64_t v) {
        field.store(field.load(std::memory_order_relaxed) + v, std::memory_order_release);
      };
      run.end.store(end, std::memory_order_release);
      add(run.spans, 1);
      add(run.spans_freed, span_freed ? 1 : 0);
      add(run.objects, objects_freed);
      add(run.bytes, bytes_freed);
      add(run.busy, end - start);
      return;
    }
    CloseRun(b);
  }
  const RunWrite w(run);
  run.start.store(start, std::memory_order_release);
  run.end.store(end, std::memory_order_release);
  run.cycle.store(cycle, std::memory_order_release);
  run.session_by.store(session_by, std::memory_order_release);
  run.spans.store(1, std::memory_order_release);
  run.spans_freed.store(span_freed ? 1 : 0, std::memory_order_release);
  run.objects.store(objects_freed, std::memory_order_release);
  run.bytes.store(bytes_freed, std::memory_order_release);
  run.busy.store(end - start, std::memory_order_release);
}

void CloseSweepRunSlow() { CloseRun(t_buffer); }

void OnThreadExit() {
  ThreadBuffer* b = t_buffer;
  if (b == nullptr) return;
  CloseRun(b);
  t_buffer = nullptr;
  // release: the writer that sees kOrphaned sees every record appended before.
  b->state.store(kOrphaned, std::memory_order_release);
}

void DrainBuffers(std::uint32_t session, bool final, RecordSink sink) {
  for (ThreadBuffer* b = g_buffers.load(std::memory_order_acquire); b != nullptr; b = b->next) {
    // acquire: pairs with the claim's release, so the identity below is the owner's.
    const std::uint32_t state = b->state.load(std::memory_order_acquire);
    if (state != kOwned && state != kOrphaned) continue;
    ThreadInfo info{b->tid, b->name, false};
    const auto put = [&](const Record& r) {
      if (r.session != session) return;  // made before Start or after Stop: not this file's
      // A phase whose start or end was taken while tracing was off (a Stop from a thread the
      // collector does not stop, in the middle of a cycle) has no time to show.
      if ((r.start & kTimeTag) == 0 || (r.end & kTimeTag) == 0) return;
      info.name_new = b->named_session != session || b->named_claims != b->claims;
      b->named_session = session;
      b->named_claims = b->claims;
      sink(info, r);
    };
    Chunk* c = b->read_chunk;
    std::uint32_t i = b->read_index;
    for (;;) {
      const std::uint32_t n = c->count.load(std::memory_order_acquire);
      for (; i < n; ++i) put(c->records[i]);
      if (n != Chunk::kRecords) break;
      Chunk* next = c->next.load(std::memory_order_acquire);
      if (next == nullptr) break;
      // The owner linked next before it first wrote there: it never touches c again.
      munmap(c, Chunk::kBytes);
      c = next;
      i = 0;
    }
    b->read_chunk = c;
    b->read_index = i;
    if (final) {
      // The runs still open: a consistent copy, or nothing if the owner is writing it now.
      const OpenRun& run = b->run;
      for (int attempt = 0; attempt < 8; ++attempt) {
        const std::uint64_t seq = run.seq.load(std::memory_order_acquire);
        if ((seq & 1) != 0) continue;
        const Record r = RunRecord(run);  // acquire loads: the load below stays after them
        if (run.seq.load(std::memory_order_relaxed) != seq) continue;
        if (r.start != 0) put(r);
        break;
      }
    }
    // An exited thread's buffer, drained, goes to the next thread that records. release:
    // its claimer sees the reader's position as left here.
    if (state == kOrphaned) b->state.store(kFree, std::memory_order_release);
  }
}

std::uint64_t DroppedRecords() { return g_dropped.load(std::memory_order_relaxed); }

void ResetBuffersAfterFork() {
  // Only the forking thread exists in the child: the others' buffers are drained and reused
  // like those of exited threads (the child's own session drops their records).
  for (ThreadBuffer* b = g_buffers.load(std::memory_order_relaxed); b != nullptr; b = b->next) {
    if (b == t_buffer) continue;
    b->run.start.store(0, std::memory_order_relaxed);
    if (b->state.load(std::memory_order_relaxed) == kOwned) {
      b->state.store(kOrphaned, std::memory_order_relaxed);
    }
  }
}

}  // namespace gofin::internal::trace
