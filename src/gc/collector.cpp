#include "gc/collector.hpp"

#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>

#include "gc/destructor_queue.hpp"
#include "gc/generations.hpp"
#include "gc/marker.hpp"
#include "gc/memory_map.hpp"
#include "gc/pacer.hpp"
#include "gc/preemptible_mutex.hpp"
#include "gc/roots.hpp"
#include "gc/stop_the_world.hpp"
#include "gc/sweeper.hpp"
#include "gc/thread_registry.hpp"
#include "gofin/gc.hpp"
#include "gofin/testing.hpp"
#include "heap/heap.hpp"
#include "heap/hooks.hpp"
#include "heap/options.hpp"
#include "specials/check_finalizers.hpp"
#include "trace/trace.hpp"

// The stack walks below read other threads' frames, which the sanitizers would flag.
#define GOFIN_COLLECTOR_NO_SANITIZE __attribute__((no_sanitize("address", "thread")))

namespace gofin::internal {

namespace {

constinit GcConfig g_config{};
constinit std::atomic<std::uint64_t> g_num_gc{0};
constinit std::atomic<std::uint64_t> g_num_forced{0};
constinit std::atomic<std::uint64_t> g_pause_total{0};
constinit std::atomic<std::uint64_t> g_last_gc{0};
constinit std::atomic<std::uint64_t> g_gc_cpu_ns{0};
// Written by the cycle (under GcLock) and read by ReadMemStats (under GcLock too, but also
// without it from inside a guard): relaxed atomics.
constinit std::array<std::atomic<std::uint64_t>, 256> g_pause_ns{};
constinit std::array<std::atomic<std::uint64_t>, 256> g_pause_end{};

// AddCycleHooks: filled at initialization (release), read by every cycle (acquire).
constexpr std::size_t kMaxCycleHooks = 4;
struct CycleHookSlot {
  std::atomic<void (*)()> mark_done{nullptr};
  std::atomic<void (*)()> world_restarted{nullptr};
  std::atomic<void (*)()> sweep_done{nullptr};
};
constinit std::array<CycleHookSlot, kMaxCycleHooks> g_cycle_hooks{};
constinit std::atomic<std::size_t> g_num_cycle_hooks{0};

template <std::atomic<void (*)()> CycleHookSlot::*kMoment>
void RunCycleHooks() {
  const std::size_t n = g_num_cycle_hooks.load(std::memory_order_acquire);
  for (std::size_t i = 0; i < n; ++i) {
    if (void (*fn)() = (g_cycle_hooks[i].*kMoment).load(std::memory_order_acquire)) fn();
  }
}

PreemptibleMutex& GcLock() {
  static auto* m = new PreemptibleMutex();  // NOLINT: lives for the process
  return *m;
}

std::chrono::steady_clock::time_point StartTime() {
  static const auto t = std::chrono::steady_clock::now();
  return t;
}

RootRangeList& Roots() {
  static RootRangeList* r = new RootRangeList();  // NOLINT: lives for the process
  return *r;
}

std::uint64_t NowNs() {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                        std::chrono::steady_clock::now() - StartTime())
                                        .count());
}

void FlushAllCaches() {
  std::lock_guard lock(g_heap.lock);
  for (ThreadCache* c = g_heap.caches; c != nullptr; c = c->next) c->ReleaseAll();
}

// The x86-64 red zone: a signal's interrupted code may use 128 bytes below its sp.
constexpr std::uintptr_t kRedZone = 128;
// How far a stack gofin was not told of is scanned from the stack pointer up: the default
// thread stack's size (a coroutine library should use gofin::SetCurrentStack instead).
constexpr std::uintptr_t kUnknownStackLimit = std::uintptr_t{8} << 20;

// The lowest word in [from, to) that points into [lo, hi), or 0. The signal frame a handler
// on the alternate stack was entered with holds the interrupted stack pointer, so this bounds
// from below the part of the interrupted stack that is still live.
GOFIN_COLLECTOR_NO_SANITIZE std::uintptr_t LowestWordIn(std::uintptr_t from, std::uintptr_t to,
                                                        std::uintptr_t lo, std::uintptr_t hi) {
  std::uintptr_t low = 0;
  for (auto p = (from + 7) & ~std::uintptr_t{7}; p + 8 <= to; p += 8) {
    const std::uintptr_t w = *reinterpret_cast<const std::uintptr_t*>(p);
    if (w >= lo && w < hi && (low == 0 || w < low)) low = w;
  }
  return low;
}

// The lowest address of the readable mapping that holds the top of [lo, hi): the part of a
// thread's own stack that exists (a main thread's stack grows on demand below it).
std::uintptr_t MappedLow(std::uintptr_t lo, std::uintptr_t hi) {
  std::uintptr_t mlo = 0;
  std::uintptr_t mhi = 0;
  if (!FindReadableMapping(hi - 1, mlo, mhi)) return hi;
  return std::max(lo, mlo);
}

// A thread's stacks, stopped at sp (the lowest live address: red zone or spilled registers
// included). Its own stack is always scanned, from sp when it runs there; otherwise from
// where it left it (gofin::SetCurrentStack), from the interrupted stack pointer that its
// signal frame holds (a handler on the alternate signal stack), or whole (a stack gofin was
// not told of: the switch left no trace gofin can read). And the stack it is on: the
// alternate signal stack or the current segment from sp up, or an unknown stack from sp to
// the end of its mapping.
void AddStackRoots(RootRangeList& roots, const ThreadRecord* r, std::uintptr_t sp) {
  const std::uintptr_t lo = r->stack_lo;
  const std::uintptr_t hi = r->stack_hi;
  if (sp >= lo && sp < hi) {
    roots.Add(sp, hi);
    return;
  }
  std::uintptr_t own_from = r->resume_sp != 0 ? std::max(lo, r->resume_sp - kRedZone) : 0;
  const bool in_segment = r->segment_hi != 0 && sp >= r->segment_lo && sp < r->segment_hi;
  if (in_segment) {
    roots.Add(sp, r->segment_hi);
  } else if (r->altstack_hi != 0) {
    const std::uintptr_t alt_from = std::max(sp, r->altstack_lo);
    roots.Add(alt_from, r->altstack_hi);
    if (const std::uintptr_t low = LowestWordIn(alt_from, r->altstack_hi, lo, hi); low != 0) {
      const std::uintptr_t from = std::max(low > kRedZone ? low - kRedZone : 0, MappedLow(lo, hi));
      own_from = own_from == 0 ? from : std::min(own_from, from);
    } else if (r->segment_hi == 0) {
      own_from = 0;  // no trace of where it left its own stack
    }
    if (r->segment_hi != 0) {
      // The handler may have interrupted the segment's code: the segment from that point.
      const std::uintptr_t seg =
          LowestWordIn(alt_from, r->altstack_hi, r->segment_lo, r->segment_hi);
      roots.Add(seg > r->segment_lo + kRedZone ? seg - kRedZone : r->segment_lo, r->segment_hi);
    }
  } else {
    std::uintptr_t mlo = 0;
    std::uintptr_t mhi = 0;
    if (FindReadableMapping(sp, mlo, mhi)) roots.Add(sp, std::min(mhi, sp + kUnknownStackLimit));
  }
  if (own_from == 0) own_from = MappedLow(lo, hi);
  roots.Add(own_from, hi);
  if (r->resume_sp != 0) {
    const auto regs = reinterpret_cast<std::uintptr_t>(&r->resume_regs[0]);
    roots.Add(regs, regs + sizeof(r->resume_regs));
  }
}

void AddThreadRoots(RootRangeList& roots, std::uintptr_t self_sp, bool scan_self) {
  ThreadRecord* self = CurrentThreadRecord();
  for (ThreadRecord* r = RegistryHead(); r != nullptr; r = r->next) {
    if (r == self && !scan_self) continue;
    if (r == self) {
      // The collector's own registers are on its stack (spilled); the record's copies are
      // from an earlier stop and stale.
      NoteStack(r, self_sp);
      AddStackRoots(roots, r, self_sp);
      continue;
    }
    const std::uintptr_t sp = r->stopped_sp.load(std::memory_order_acquire);
    if (sp == 0) continue;
    AddStackRoots(roots, r, sp);
    const auto regs = reinterpret_cast<std::uintptr_t>(&r->regs[0]);
    roots.Add(regs, regs + sizeof(r->regs));
    const auto vregs = reinterpret_cast<std::uintptr_t>(&r->vector_regs[0]);
    roots.Add(vregs, vregs + sizeof(r->vector_regs));
  }
}

// dlclose waits while a collection holds its list of data segments (roots.hpp).
class DlcloseHold {
 public:
  DlcloseHold() : consistent_(HoldDlclose()) {}
  ~DlcloseHold() { ReleaseDlclose(); }
  DlcloseHold(const DlcloseHold&) = delete;
  DlcloseHold& operator=(const DlcloseHold&) = delete;
  [[nodiscard]] bool Consistent() const { return consistent_; }

 private:
  bool consistent_;
};

}  // namespace

// The low end of the stack segment holding sp, or sp itself when gofin does not know it.
std::uintptr_t CurrentStackLow(std::uintptr_t sp) {
  const ThreadRecord* r = CurrentThreadRecord();
  if (r == nullptr) return sp;
  if (sp >= r->stack_lo && sp < r->stack_hi) return r->stack_lo;
  if (r->segment_hi != 0 && sp >= r->segment_lo && sp < r->segment_hi) return r->segment_lo;
  std::uintptr_t lo = 0;
  std::uintptr_t hi = 0;
  if (OnAlternateSignalStack(lo, hi) && sp >= lo && sp < hi) return lo;
  return sp;
}

namespace {

struct CycleArgs {
  bool forced = false;
  bool scan_own_stack = true;
  CycleKind kind = CycleKind::kPaced;
  bool was_minor = false;  // out
};

// Go: gcStart + gcMarkDone + gcMarkTermination, run on the spilled stack of the thread that
// triggered the cycle.
void RunCycle(void* arg, std::uintptr_t sp) {
  auto& cycle = *static_cast<CycleArgs*>(arg);
  const bool forced = cycle.forced;
  const std::uint64_t t0 = NowNs();
  // Before any sweep of this cycle can queue a destructor; after fork() it starts anew here.
  StartDestructorThread();
  FinishSweep();
  const std::uint64_t heap_before = g_heap.heap_live.load(std::memory_order_relaxed);
  RootRangeList& roots = Roots();
  roots.Clear();
  const DlcloseHold dl_hold;
  CollectDataSegments(roots);
  // Room for every thread's stack and registers and every user root range, with slack for
  // threads that register before the stop: nothing is allocated while the world is stopped.
  roots.Reserve(2 * RegisteredThreadCount() + 4096);
  LockUserRoots();
  // The timeline's stop runs from the request to the restart; the heap as the cycle found it.
  const std::uint64_t trace_stop = trace::Begin();
  if (trace_stop != 0) trace::HeapCounter(trace_stop, heap_before, ThePacer().Goal());
  // Go's pause includes the time to stop the threads, as WithWorldStopped's does.
  const std::uint64_t t_stop = NowNs();
  StopTheWorld();
  const std::uint64_t trace_stopped = trace::Begin();
  // Before the mark: the workers' events, and the sweep and queues after the restart, carry
  // the number this cycle will have in NumGC.
  trace::SetCycle(g_num_gc.load(std::memory_order_relaxed) + 1);
  const std::uint64_t t1 = NowNs();
  if (!dl_hold.Consistent()) DropUnmappedDataSegments(roots);
  FlushAllCaches();
  const bool minor = BeginCycle(cycle.kind);
  cycle.was_minor = minor;
  AddThreadRoots(roots, sp, cycle.scan_own_stack);
  CollectUserRoots(roots);
  const MarkResult mark = Mark(roots, minor ? 1 : 256);
  const std::uint64_t trace_marked = trace::Begin();
  const CycleLive cycle_live = EndCycle(minor, mark.bytes_marked);
  RunCycleHooks<&CycleHookSlot::mark_done>();
  if (CheckFinalizersEnabled()) [[unlikely]]
    CheckFinalizersStopped();
  const std::uint64_t live = cycle_live.live;
  const std::uint64_t t2 = NowNs();
  std::uint64_t non_heap = 0;
  {
    std::lock_guard lock(g_heap.lock);
    non_heap = g_heap.pages.MetadataBytes();
  }
  ThePacer().EndCycle(live, cycle_live.goal_basis, non_heap);
  // release: a sweeper that reads the new sweepgen sees this cycle's mark bits.
  g_heap.sweepgen.fetch_add(2, std::memory_order_release);
  const std::uint64_t n = g_num_gc.fetch_add(1, std::memory_order_relaxed) + 1;
  if (forced) g_num_forced.fetch_add(1, std::memory_order_relaxed);
  const std::uint64_t trace_restart = trace::Begin();
  StartTheWorld();
  if (trace_stop != 0) {
    const std::uint64_t restarted = trace::Now();
    trace::MarkTermination(trace_marked, trace_restart, n, live, ThePacer().Goal(), minor);
    trace::StopTheWorld(trace::StopReason::kCollection, n, trace_stop, trace_stopped, trace_restart,
                        restarted, RegisteredThreadCount(), minor, forced);
    trace::HeapCounter(restarted, g_heap.heap_live.load(std::memory_order_relaxed),
                       ThePacer().Goal());
  }
  UnlockUserRoots();
  const std::uint64_t t3 = NowNs();
  // After t3: what the hooks do (the heap profile's flush may wait for a reader) is not part
  // of the pause.
  RunCycleHooks<&CycleHookSlot::world_restarted>();
  if (CheckFinalizersEnabled()) [[unlikely]]
    ReportCheckFinalizers();
  const std::uint64_t pause = t3 - t_stop;
  g_pause_total.fetch_add(pause, std::memory_order_relaxed);
  const auto end_unix =
      static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                     std::chrono::system_clock::now().time_since_epoch())
                                     .count());
  g_last_gc.store(end_unix, std::memory_order_relaxed);
  // Go: memstats.pause_ns[(numgc+255)%256] is the cycle just ended (numgc already counts it).
  g_pause_ns[(n + 255) % 256].store(pause, std::memory_order_relaxed);
  g_pause_end[(n + 255) % 256].store(end_unix, std::memory_order_relaxed);
  g_gc_cpu_ns.fetch_add(
      (t1 - t0) + (t2 - t1) * static_cast<std::uint64_t>(mark.workers) + (t3 - t2),
      std::memory_order_relaxed);
  const std::uint64_t goal = ThePacer().Goal();
  SetScavengeGoal(goal + goal / 10 + (std::uint64_t{4} << 20));
  WakeBackgroundSweeper();
  if (g_config.gctrace) {
    // Go's gctrace line (runtime/extern.go documents the fields). gofin's mark runs with the
    // world stopped, so the first and last phases are the stop and the restart.
    const double ms = 1e6;
    const std::uint64_t elapsed = t3 == 0 ? 1 : t3;
    const unsigned ncpu = std::max(1U, std::thread::hardware_concurrency());
    const auto pct = static_cast<unsigned>(100.0 * static_cast<double>(g_gc_cpu_ns.load()) /
                                           (static_cast<double>(elapsed) * ncpu));
    std::fprintf(
        stderr,
        "gc %llu @%.3fs %u%%: %.3f+%.3f+%.3f ms clock, %.3f+%.3f/%.3f/0+%.3f ms cpu, "
        "%llu->%llu->%llu MB, %llu MB goal, 0 MB stacks, 0 MB globals, %d P%s\n",
        static_cast<unsigned long long>(n), static_cast<double>(t3) / 1e9, pct,
        static_cast<double>(t1 - t0) / ms, static_cast<double>(t2 - t1) / ms,
        static_cast<double>(t3 - t2) / ms, static_cast<double>(t1 - t0) / ms,
        static_cast<double>(t2 - t1) / ms,
        static_cast<double>((t2 - t1) * static_cast<std::uint64_t>(mark.workers - 1)) / ms,
        static_cast<double>(t3 - t2) / ms, static_cast<unsigned long long>(heap_before >> 20),
        static_cast<unsigned long long>(live >> 20), static_cast<unsigned long long>(live >> 20),
        static_cast<unsigned long long>(goal >> 20), mark.workers,
        minor ? " (minor)" : (forced ? " (forced)" : ""));
  }
}

// bdwgc: GC_atfork_*. Go supports no fork without exec; gofin's child gets a usable heap
// when the other threads were not inside gofin at the fork: only the forking thread survives,
// so every lock is re-made, every other thread's record and cache dropped, and the helper
// threads (mark workers, sweeper, finalizer thread) start afresh when next needed.
void AfterForkInChild() {
  ResetHeapLocksAfterFork();
  ResetRegistryAfterFork();
  ResetUserRootsAfterFork();
  ResetMarkWorkersAfterFork();
  ResetSweeperAfterFork();
  ResetGenerationsAfterFork();
  ResetDestructorQueueAfterFork();
  std::construct_at(&GcLock());
}

// Returns whether the cycle was a minor one.
bool Collect(bool forced, bool scan_own_stack = true, CycleKind kind = CycleKind::kPaced) {
  InitMarkWorkers(g_config.workers);  // again after a fork
  CycleArgs args{forced, scan_own_stack,
                 forced && kind == CycleKind::kPaced ? CycleKind::kFull : kind};
  gofin_spill_registers_and_call(&args, &RunCycle);
  // The timeline's records of this cycle to the file, now that no stop is under way.
  trace::FlushIfDue();
  return args.was_minor;
}

// A collection started from inside a guarded sweep would wait for that sweep.
bool MayCollectHere() { return t_local.guard_depth == 0; }

}  // namespace

const GcConfig& Config() { return g_config; }

void EnsureCollectorInitialized() {
  static std::once_flag once;
  std::call_once(once, [] {
    (void)StartTime();
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int workers = ncpu > 0 ? static_cast<int>(ncpu) : 1;
    if (const auto w = EnvInteger("GOFIN_GCWORKERS", 1, 256)) workers = static_cast<int>(*w);
    g_config.workers = workers;
    g_config.gctrace = EnvDebugKey("GOFIN_DEBUG", "gctrace", 0, 2).value_or(0) != 0;
    ThePacer().InitFromEnv();
    InitCheckFinalizers();
    InitStopTheWorld();
    InitMarkWorkers(workers);
    InitGenerations();
    AddExtraRootsHook(&MarkDestructorQueueRoots);
    pthread_atfork(nullptr, nullptr, &AfterForkInChild);
    // The timeline: an exiting thread's buffer goes back to the writer; GOFIN_TRACE starts it.
    AddThreadExitHook(&trace::OnThreadExit);
    trace::StartFromEnv(EnvPath("GOFIN_TRACE").c_str());
  });
}

CycleCounters Counters() {
  return CycleCounters{g_num_gc.load(), g_num_forced.load(), g_pause_total.load(),
                       g_last_gc.load()};
}

void AddCycleHooks(const CycleHooks& hooks) {
  static constinit std::mutex registering;  // layers may initialize on several threads
  std::lock_guard lock(registering);
  const std::size_t i = g_num_cycle_hooks.load(std::memory_order_relaxed);
  if (i == kMaxCycleHooks) std::abort();  // a fixed set of layers registers
  g_cycle_hooks[i].mark_done.store(hooks.mark_done, std::memory_order_relaxed);
  g_cycle_hooks[i].world_restarted.store(hooks.world_restarted, std::memory_order_relaxed);
  g_cycle_hooks[i].sweep_done.store(hooks.sweep_done, std::memory_order_relaxed);
  g_num_cycle_hooks.store(i + 1, std::memory_order_release);
}

void CycleSweepDone() { RunCycleHooks<&CycleHookSlot::sweep_done>(); }

void CopyPauses(std::uint64_t (&pause_ns)[256], std::uint64_t (&pause_end)[256]) {  // NOLINT
  for (std::size_t i = 0; i < 256; ++i) {
    pause_ns[i] = g_pause_ns[i].load(std::memory_order_relaxed);
    pause_end[i] = g_pause_end[i].load(std::memory_order_relaxed);
  }
}

double GCCPUFraction() {
  const auto elapsed = static_cast<double>(NowNs());
  const unsigned ncpu = std::max(1U, std::thread::hardware_concurrency());
  if (elapsed <= 0) return 0;
  const double f =
      static_cast<double>(g_gc_cpu_ns.load(std::memory_order_relaxed)) / (elapsed * ncpu);
  return std::min(f, 1.0);
}

void MaybeStartGC() {
  if (!MayCollectHere()) return;
  std::unique_lock lock(GcLock(), std::try_to_lock);
  if (!lock.owns_lock()) return;  // a collection is under way: it resets the trigger
  if (g_heap.heap_live.load(std::memory_order_relaxed) <
      g_heap.gc_trigger.load(std::memory_order_relaxed)) {
    return;
  }
  Collect(false);
}

bool CollectForOOM() {
  if (!MayCollectHere()) return false;
  RegisterThread();
  {
    std::lock_guard lock(GcLock());
    Collect(true);
    FinishSweep();
  }
  // Memory of objects whose destructors already ran; an allocation never waits for the
  // destructor thread (its destructors may need a lock this thread holds).
  FreeDestroyed();
  return true;
}

void WithWorldStopped(void (*fn)(void*), void* arg, StopKind kind) {
  EnsureCollectorInitialized();
  RegisterThread();
  if (!MayCollectHere()) {
    // Inside a guard (a stop would wait for it): the counters as they are, without the stop
    // and flush that make them agree exactly.
    fn(arg);
    return;
  }
  std::lock_guard lock(GcLock());
  const std::uint64_t t0 = NowNs();
  const std::uint64_t trace_stop = trace::Begin();
  StopTheWorld();
  const std::uint64_t trace_stopped = trace::Begin();
  FlushAllCaches();
  fn(arg);
  const std::uint64_t trace_restart = trace::Begin();
  StartTheWorld();
  if (trace_stop != 0) {
    trace::StopTheWorld(kind == StopKind::kCollectorWork ? trace::StopReason::kCollectorWork
                                                         : trace::StopReason::kRead,
                        g_num_gc.load(std::memory_order_relaxed), trace_stop, trace_stopped,
                        trace_restart, trace::Now(), RegisteredThreadCount(), false, false);
  }
  if (kind == StopKind::kCollectorWork) {
    // The collector's own stop after its cycle (freeing destroyed objects): part of the most
    // recent cycle's pause, as Go adds up every stop of a cycle.
    const std::uint64_t pause = NowNs() - t0;
    g_pause_total.fetch_add(pause, std::memory_order_relaxed);
    const std::uint64_t n = g_num_gc.load(std::memory_order_relaxed);
    if (n != 0) g_pause_ns[(n + 255) % 256].fetch_add(pause, std::memory_order_relaxed);
  }
}

}  // namespace gofin::internal

namespace gofin {

namespace {

// bdwgc: GC_clear_stack. The collector's own frames (this call's and the ones below it) are
// scanned as the collecting thread's stack, and their unwritten slots and padding still hold
// whatever the caller's earlier, deeper calls left there: often the address of the object the
// caller allocated last, which then survives a collection it should not. Zeroing the dead stack
// below the caller first means those frames are built on zeros. Inlined into GC() and cleared
// by assembly from the stack pointer down, so that no slot is left between GC()'s frame and
// the cleared bytes (an aligned array local left up to 63 bytes of padding above it, where an
// unoptimised build's collector frames then found a stale copy). Bounded by the room left in
// the stack segment the thread runs on (its own stack, its SetCurrentStack segment, its
// alternate signal stack), so a small stack is never overrun; on a stack gofin was not told
// of, nothing is cleared.
[[gnu::always_inline]] inline void ClearDeadStack() {
  constexpr std::size_t kClearBytes = std::size_t{8} * 1024;
  constexpr std::size_t kKeepFree = std::size_t{32} * 1024;  // what the collection may need below
  const auto sp = reinterpret_cast<std::uintptr_t>(__builtin_frame_address(0));
  if (sp < internal::CurrentStackLow(sp) + kClearBytes + kKeepFree) return;
  internal::gofin_clear_stack(kClearBytes);
}

[[gnu::noinline]] bool ForcedCollection(bool scan_own_stack, internal::CycleKind kind) {
  internal::RegisterThread();
  // Inside a guard a collection would wait for itself: do nothing.
  if (!internal::MayCollectHere()) return false;
  internal::EnsureCollectorInitialized();
  bool minor = false;
  {
    std::lock_guard lock(internal::GcLock());
    minor = internal::Collect(true, scan_own_stack, kind);
    internal::FinishSweep();
    internal::CycleSweepDone();
  }
  // API.md: GC() returns after the destructors its cycle caused. They run on the destructor
  // thread (gc/destructor_queue.hpp); nothing of gofin's is held while this thread waits.
  // Their objects' memory is given back before GC() returns, without another mark.
  internal::WaitForDestructors();
  internal::FreeDestroyed();
  return minor;
}
}  // namespace

void GC() {
  internal::RegisterThread();
  ClearDeadStack();
  ForcedCollection(true, internal::CycleKind::kFull);
}

void testing::GC(StackState state) {
  internal::RegisterThread();
  ClearDeadStack();
  ForcedCollection(state == StackState::kMayContainHeapPointers, internal::CycleKind::kFull);
}

bool testing::MinorGC(StackState state) {
  internal::RegisterThread();
  ClearDeadStack();
  return ForcedCollection(state == StackState::kMayContainHeapPointers,
                          internal::CycleKind::kMinorIfPossible);
}

bool debug::SetGenerational(bool on) {
  internal::RegisterThread();
  internal::EnsureCollectorInitialized();
  std::lock_guard lock(internal::GcLock());
  return internal::SetGenerationalSetting(on);
}

bool debug::GenerationalActive() {
  internal::EnsureCollectorInitialized();
  return internal::GenerationalInEffect();
}

}  // namespace gofin
