#pragma once
// Collection (Go: runtime.GC, runtime.ReadMemStats, runtime/debug).
#include <cstddef>
#include <cstdint>

namespace gofin {

// A full collection. Returns once marking and sweeping are complete: every finalizer of an
// object unreachable at the call is queued and the destructors of every object it freed ran.
void GC();

// Go: runtime.MemStats, with Go's field meanings.
struct MemStats {
  std::uint64_t Alloc, TotalAlloc, Sys, Mallocs, Frees, HeapAlloc, HeapSys, HeapIdle, HeapInuse,
      HeapReleased, HeapObjects, NextGC, LastGC, PauseTotalNs, NumGC, NumForcedGC;
  // gofin's addition: how many of the NumGC cycles were minor ones (debug::SetGenerational).
  std::uint64_t NumMinorGC;
  // Circular buffers of the most recent 256 cycles: the time the world was stopped in each
  // (every stop of the cycle added up) and when each ended (Unix ns). The most recent cycle is
  // at [(NumGC + 255) % 256].
  std::uint64_t PauseNs[256];   // NOLINT(modernize-avoid-c-arrays): Go's layout
  std::uint64_t PauseEnd[256];  // NOLINT(modernize-avoid-c-arrays)
  // The fraction of the CPU time available to the program since it started that the
  // collector used (its stops, and the mark times the number of threads marking), 0..1.
  double GCCPUFraction;
  // Always 0, as in Go (pointer lookups are not counted).
  std::uint64_t Lookups;
  // Allocations per size class, as Go reports them: BySize[i] is class i (BySize[0] is
  // unused), Size its object size in bytes, Mallocs and Frees cumulative counts. Tiny
  // allocations (under 16 bytes, pointer-free) are counted in Mallocs and Frees above, not
  // here; as in Go, the larger classes (over BySize[60].Size, 18 KiB) and large objects are
  // not reported here.
  struct SizeClassStats {
    std::uint32_t Size;
    std::uint64_t Mallocs, Frees;
  } BySize[61];  // NOLINT(modernize-avoid-c-arrays)
};
MemStats ReadMemStats();

namespace debug {
// Returns the previous value; a negative value turns pacing off (only GC() and the memory
// limit collect).
int SetGCPercent(int percent);
// Returns the previous limit in bytes; a negative value only reads it.
std::int64_t SetMemoryLimit(std::int64_t limit);

// gofin's addition (Go's collector is not generational). With it on, a collection the pacer
// starts may be a minor one: objects that survived a collection are old and are not marked
// again; only the old objects on pages written since the previous collection are rescanned
// (the kernel reports the pages: userfaultfd's asynchronous write protection, Linux 6.7+).
// GC() is always a full collection, and so is every collection while the memory limit sets
// the heap goal. Unreachable old objects, with their finalizers, cleanups and weak pointers,
// wait for the next full collection, at most 16 cycles away. On by default
// (GOFIN_GENERATIONAL=0 or =off turns it off); where the kernel does not provide the tracking,
// every collection stays full. Returns the previous setting.
bool SetGenerational(bool on);
// Whether minor collections are in effect: the setting is on and the kernel tracks pages.
bool GenerationalActive();
}  // namespace debug

// gofin's addition, for minor collections (debug::SetGenerational). Declares [p, p + n) as
// memory that is written without the CPU's stores through the page tables, so that the
// kernel's written-page tracking cannot see it: io_uring fixed buffers
// (IORING_REGISTER_BUFFERS, then IORING_OP_READ_FIXED), RDMA memory regions, a device's DMA
// into pinned pages. Every minor collection rescans the GC objects on the declared pages as
// if they had been written. Plain stores, other threads, read(), process_vm_writev and
// non-fixed io_uring reads are all tracked and need nothing. Declare before the first such
// write can happen and remove after the last; declarations of the same range nest. Memory
// outside the GC heap is never tracked nor needed here (it is scanned only as a root, and
// whole). Errors: gofin::Error for a range that wraps, for more than 1024 distinct ranges,
// and for removing a range that was not declared.
void AddUntrackedWrites(const void* p, std::size_t n);
void RemoveUntrackedWrites(const void* p, std::size_t n);

// RAII for AddUntrackedWrites / RemoveUntrackedWrites, e.g. around the lifetime of an
// io_uring buffer registration.
class UntrackedWrites {
 public:
  UntrackedWrites(const void* p, std::size_t n) : p_(p), n_(n) { AddUntrackedWrites(p, n); }
  ~UntrackedWrites() {
    try {
      RemoveUntrackedWrites(p_, n_);
    } catch (...) {  // only if the program removed this declaration itself: nothing left to do
    }
  }
  UntrackedWrites(const UntrackedWrites&) = delete;
  UntrackedWrites& operator=(const UntrackedWrites&) = delete;

 private:
  const void* p_;
  std::size_t n_;
};

}  // namespace gofin
