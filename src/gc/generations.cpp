#include "gc/generations.hpp"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "gc/marker.hpp"
#include "gc/pacer.hpp"
#include "gc/untracked_writes.hpp"
#include "heap/dirty_pages.hpp"
#include "heap/heap.hpp"
#include "heap/options.hpp"
#include "heap/os_memory.hpp"

namespace gofin::internal {

namespace {

using dirty::kOsPageSize;

// At most this many minor cycles in a row, so that a major one comes at least every 16 cycles
// and an unreachable old object's finalizer, cleanups and weak pointers wait a bounded number
// of cycles (bdwgc: GC_full_freq, 19).
constexpr std::uint32_t kMaxMinorCycles = 15;
// Old objects may outgrow the last major cycle's live heap by this fraction (and by at least
// kMinOldGrowth) before a major cycle frees the dead ones: what was promoted and then dropped
// would otherwise raise the heap goal cycle after cycle.
constexpr std::uint64_t kOldGrowthDivisor = 4;
constexpr std::uint64_t kMinOldGrowth = std::uint64_t{1} << 20;
// A minor cycle's rescan of written pages is shared among the mark workers in pieces of this
// size.
constexpr std::uintptr_t kChunkBytes = 16 * kOsPageSize;
// Room for the written runs and their pieces (virtual: only what a cycle uses is resident).
// A cycle whose written pages do not fit is a major one.
constexpr std::size_t kMaxRegions = std::size_t{1} << 14;
constexpr std::size_t kMaxChunks = std::size_t{1} << 16;

struct Chunk {
  std::uintptr_t lo;
  std::uintptr_t hi;
};

// Written by the collector with the world stopped (BeginCycle, EndCycle, the setting under the
// collector's lock); read by mark workers during the phase it sets up.
struct State {
  // debug::SetGenerational / GOFIN_GENERATIONAL. Relaxed atomic: written under the
  // collector's lock, read by it and by debug::GenerationalActive from any thread.
  std::atomic<bool> setting{true};
  bool marks_sticky = false;  // the mark bits hold the previous cycle's survivors
  bool minor = false;         // this cycle's kind, for the mark workers' hook
  std::uint32_t minors_since_major = 0;
  std::uint64_t live_after_major = 0;
  std::uint64_t old_bytes = 0;  // the old objects' bytes as this cycle began
  dirty::Region* regions = nullptr;
  std::size_t nregions = 0;
  // regions[0, nprotect) are the written ones, protected again at the cycle's end; the rest
  // are declared untracked (gc/untracked_writes.hpp), rescanned whether written or not.
  std::size_t nprotect = 0;
  Chunk* chunks = nullptr;
  std::size_t nchunks = 0;
};
constinit State g_gen{};
// Relaxed: set with the world stopped, before the sweep generation's release that every
// sweeper acquires.
constinit std::atomic<bool> g_sweep_keeps_marks{false};
constinit std::atomic<std::uint64_t> g_minor_cycles{0};

bool MapBuffers() {
  if (g_gen.regions != nullptr) return true;
  void* r = os::MapMetadata(kMaxRegions * sizeof(dirty::Region));
  void* c = r == nullptr ? nullptr : os::MapMetadata(kMaxChunks * sizeof(Chunk));
  if (c == nullptr) {
    if (r != nullptr) os::Unmap(r, kMaxRegions * sizeof(dirty::Region));
    return false;
  }
  g_gen.regions = static_cast<dirty::Region*>(r);
  g_gen.chunks = static_cast<Chunk*>(c);
  return true;
}

bool TurnTrackingOn() {
  if (!MapBuffers()) return false;
  std::lock_guard lock(g_heap.lock);
  return dirty::Enable();
}

// The in-use span covering heap page address p, with its page range, or nullptr; free runs
// are skipped whole (their first page's record says how long they are).
// A page inside a free run may still name a dead record with a stale range; only a live
// record's range is trusted.
Span* SpanCovering(std::uintptr_t p, std::uintptr_t& span_hi) {
  Span* s = g_heap.arenas.SpanOf(p);
  if (s == nullptr || s->state == SpanState::kDead || p < s->start ||
      p >= s->start + s->npages * kPageSize) {
    span_hi = (p & ~(std::uintptr_t{kPageSize} - 1)) + kPageSize;
    return nullptr;
  }
  span_hi = s->start + s->npages * kPageSize;
  return s->state == SpanState::kInUse ? s : nullptr;
}

// Calls fn(span, lo, hi) for each in-use span with pointers overlapping [lo, hi), with the
// overlap.
template <typename Fn>
void ForEachScanSpanIn(std::uintptr_t lo, std::uintptr_t hi, Fn&& fn) {
  for (std::uintptr_t p = lo; p < hi;) {
    std::uintptr_t span_hi = 0;
    Span* s = SpanCovering(p, span_hi);
    const std::uintptr_t end = std::min(hi, span_hi);
    if (s != nullptr && !s->spanclass.NoScan()) fn(s, p, end);
    p = end;
  }
}

// Word wi of s's mark bits. Relaxed atomic: other mark workers set bits in it (a word at a
// time, see Span::TryMark) while a minor cycle's rescan reads it.
std::uint64_t MarkWord(const Span* s, std::size_t wi) {
  using Word [[gnu::may_alias]] = std::uint64_t;
  const auto* word = reinterpret_cast<const Word*>(s->mark_bits) + wi;
  return __atomic_load_n(word, __ATOMIC_RELAXED);
}

// Whether any object of s overlapping [lo, hi) is marked.
bool AnyMarkedIn(const Span* s, std::uintptr_t lo, std::uintptr_t hi) {
  lo = std::max(lo, s->start);
  hi = std::min(hi, s->limit);
  if (lo >= hi) return false;
  if (s->large) return s->IsMarked(0);
  const std::size_t first = s->ObjIndex(lo);
  const std::size_t last = s->ObjIndex(hi - 1);
  for (std::size_t w = first / 64; w <= last / 64; ++w) {
    std::uint64_t bits = MarkWord(s, w);
    if (w == first / 64) bits &= ~std::uint64_t{0} << (first % 64);
    if (w == last / 64 && last % 64 != 63) bits &= (std::uint64_t{1} << (last % 64 + 1)) - 1;
    if (bits != 0) return true;
  }
  return false;
}

// The mark workers' share of a minor cycle: every old object's words on a written page.
// Marked objects are old ones or young ones this cycle already reached (scanning those again
// is harmless); unmarked ones are young and are scanned only if something reaches them.
void ScanWrittenPages(MarkWorker& w, std::atomic<std::size_t>& next_unit) {
  if (!g_gen.minor) return;
  for (;;) {
    const std::size_t u = next_unit.fetch_add(1, std::memory_order_relaxed);
    if (u >= g_gen.nchunks) return;
    const Chunk c = g_gen.chunks[u];
    ForEachScanSpanIn(c.lo, c.hi, [&](Span* s, std::uintptr_t lo, std::uintptr_t hi) {
      lo = std::max(lo, s->start);
      hi = std::min(hi, s->limit);
      if (lo >= hi) return;
      if (s->large) {
        if (s->IsMarked(0)) w.ScanRange(lo, hi);
        return;
      }
      // A word of mark bits at a time: most of a written page is young (unmarked) objects.
      const std::size_t first = s->ObjIndex(lo);
      const std::size_t last = s->ObjIndex(hi - 1);
      for (std::size_t wi = first / 64; wi <= last / 64; ++wi) {
        std::uint64_t bits = MarkWord(s, wi);
        if (wi == first / 64) bits &= ~std::uint64_t{0} << (first % 64);
        if (wi == last / 64 && last % 64 != 63) bits &= (std::uint64_t{1} << (last % 64 + 1)) - 1;
        while (bits != 0) {
          const std::size_t i = wi * 64 + static_cast<std::size_t>(std::countr_zero(bits));
          bits &= bits - 1;
          const std::uintptr_t base = s->ObjBase(i);
          w.ScanRange(std::max(lo, base), std::min(hi, base + s->elemsize));
        }
      }
    });
  }
}

void ClearAllMarks() {
  ForEachInUseSpan([](Span* s) { std::memset(s->mark_bits, 0, kBitmapBytes + 8); });
}

// Splits the written runs into the workers' pieces. False when they do not fit.
bool MakeChunks() {
  std::size_t n = 0;
  for (std::size_t r = 0; r < g_gen.nregions; ++r) {
    for (std::uintptr_t p = g_gen.regions[r].start; p < g_gen.regions[r].end; p += kChunkBytes) {
      if (n == kMaxChunks) return false;
      g_gen.chunks[n++] = Chunk{p, std::min<std::uintptr_t>(p + kChunkBytes, g_gen.regions[r].end)};
    }
  }
  g_gen.nchunks = n;
  return true;
}

// Write-protects the pages of [lo, hi) that hold part of a marked object with pointers, in
// runs.
void ProtectOldPages(std::uintptr_t lo, std::uintptr_t hi) {
  std::uintptr_t run_lo = 0;
  std::uintptr_t run_hi = 0;
  const auto flush = [&] {
    if (run_hi > run_lo) dirty::Protect(run_lo, run_hi);
    run_lo = run_hi = 0;
  };
  for (std::uintptr_t p = lo; p < hi;) {
    std::uintptr_t span_hi = 0;
    const Span* s = SpanCovering(p, span_hi);
    const std::uintptr_t end = std::min(hi, span_hi);
    if (s == nullptr || s->spanclass.NoScan()) {
      flush();
      p = end;
      continue;
    }
    for (std::uintptr_t pg = p; pg < end; pg += kOsPageSize) {
      if (AnyMarkedIn(s, pg, pg + kOsPageSize)) {
        if (run_hi != pg) {
          flush();
          run_lo = pg;
        }
        run_hi = pg + kOsPageSize;
      } else {
        flush();
      }
    }
    p = end;
  }
  flush();
}

}  // namespace

void InitGenerations() {
  if (const std::optional<bool> g = EnvBool("GOFIN_GENERATIONAL")) {
    g_gen.setting.store(*g, std::memory_order_relaxed);
  }
  AddParallelRootsHook(&ScanWrittenPages);
  if (g_gen.setting.load(std::memory_order_relaxed)) TurnTrackingOn();
}

bool BeginCycle(CycleKind kind) {
  State& g = g_gen;
  g.minor = false;
  g.nregions = 0;
  g.nprotect = 0;
  g.nchunks = 0;
  // The previous cycle's live heap: every object it found is old now (objects a sweep
  // resurrected for their finalizers are not counted; they are few and small).
  g.old_bytes = g_heap.heap_marked.load(std::memory_order_relaxed);
  const bool tracking = g.setting.load(std::memory_order_relaxed) && dirty::Enabled();
  if (tracking) {
    long n = dirty::ReadWritten(g.regions, kMaxRegions);
    if (n >= 0) {
      g.nregions = static_cast<std::size_t>(n);
    } else {
      // Every page counts as written: the end of the cycle protects all the old ones.
      g.nregions = dirty::HeapRanges(g.regions, kMaxRegions);
    }
    g.nprotect = g.nregions;
    if (n >= 0) {
      // Pages the tracking cannot see count as written, every cycle; too many: a full one.
      n = AppendUntrackedRanges(g.regions, g.nregions, kMaxRegions);
      if (n >= 0) g.nregions = static_cast<std::size_t>(n);
    }
    const std::uint64_t allowed =
        g.live_after_major + std::max(g.live_after_major / kOldGrowthDivisor, kMinOldGrowth);
    // Under a binding memory limit every cycle is full: dead old objects are memory the
    // limit needs back (Go's collector, which has no minor cycles, would free them).
    const bool policy = kind == CycleKind::kMinorIfPossible ||
                        (kind == CycleKind::kPaced && g.minors_since_major < kMaxMinorCycles &&
                         g.old_bytes <= allowed && !ThePacer().LimitBound());
    g.minor = n >= 0 && g.marks_sticky && policy && MakeChunks();
  }
  if (!g.minor && g.marks_sticky) ClearAllMarks();
  return g.minor;
}

CycleLive EndCycle(bool minor, std::uint64_t bytes_marked) {
  State& g = g_gen;
  const bool keep = g.setting.load(std::memory_order_relaxed) && dirty::Enabled();
  if (keep) {
    for (std::size_t r = 0; r < g.nprotect; ++r) {
      ProtectOldPages(g.regions[r].start, g.regions[r].end);
    }
  }
  // Protect may have turned tracking off (a refusal): then nothing may stay sticky.
  const bool sticky = keep && dirty::Enabled();
  g_sweep_keeps_marks.store(sticky, std::memory_order_relaxed);
  g.marks_sticky = sticky;
  g.minor = false;
  if (minor) {
    ++g.minors_since_major;
    g_minor_cycles.fetch_add(1, std::memory_order_relaxed);
    return CycleLive{g.old_bytes + bytes_marked, g.live_after_major};
  }
  g.minors_since_major = 0;
  g.live_after_major = bytes_marked;
  return CycleLive{bytes_marked, bytes_marked};
}

bool SweepKeepsMarks() { return g_sweep_keeps_marks.load(std::memory_order_relaxed); }

bool SetGenerationalSetting(bool on) {
  if (on && !dirty::Enabled()) TurnTrackingOn();
  return g_gen.setting.exchange(on, std::memory_order_relaxed);
}

bool GenerationalInEffect() {
  return g_gen.setting.load(std::memory_order_relaxed) && dirty::Enabled();
}

std::uint64_t MinorCycles() { return g_minor_cycles.load(std::memory_order_relaxed); }

void ResetGenerationsAfterFork() { dirty::DisableAfterFork(); }

}  // namespace gofin::internal
