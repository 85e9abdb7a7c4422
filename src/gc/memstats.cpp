// Go: ReadMemStats (mstats.go). Read with the world stopped and every cache flushed, so the
// counters agree with each other.
#include <iterator>
#include <mutex>

#include "gc/collector.hpp"
#include "gc/generations.hpp"
#include "gc/pacer.hpp"
#include "gofin/gc.hpp"
#include "heap/heap.hpp"

namespace gofin {

MemStats ReadMemStats() {
  MemStats m{};
  internal::WithWorldStopped(
      [](void* arg) {
        using namespace internal;  // NOLINT(google-build-using-namespace)
        auto& out = *static_cast<MemStats*>(arg);
        std::uint64_t nmalloc = 0;
        std::uint64_t nfree = 0;
        std::uint64_t total = 0;
        std::uint64_t freed = 0;
        for (std::size_t c = 1; c < kNumSizeClasses; ++c) {
          const std::uint64_t a = g_heap.nmalloc_small[c].load(std::memory_order_relaxed);
          const std::uint64_t f = g_heap.nfree_small[c].load(std::memory_order_relaxed);
          nmalloc += a;
          nfree += f;
          total += a * kClassToSize[c];
          freed += f * kClassToSize[c];
        }
        nmalloc += g_heap.nmalloc_large.load(std::memory_order_relaxed);
        nfree += g_heap.nfree_large.load(std::memory_order_relaxed);
        total += g_heap.bytes_malloc_large.load(std::memory_order_relaxed);
        freed += g_heap.bytes_free_large.load(std::memory_order_relaxed);
        // Go counts tiny allocations as both mallocs and frees: the blocks that hold them
        // are the heap objects.
        const std::uint64_t tiny = g_heap.tiny_allocs.load(std::memory_order_relaxed);
        out.Mallocs = nmalloc + tiny;
        out.Frees = nfree + tiny;
        out.TotalAlloc = total;
        out.HeapAlloc = total - freed;
        out.Alloc = out.HeapAlloc;
        out.HeapObjects = nmalloc - nfree;
        std::lock_guard lock(g_heap.lock);
        out.HeapSys = g_heap.pages.SysBytes();
        out.HeapInuse = g_heap.pages.InuseBytes();
        out.HeapIdle = out.HeapSys - out.HeapInuse;
        out.HeapReleased = g_heap.pages.ReleasedBytes();
        out.Sys = out.HeapSys + g_heap.pages.MetadataBytes();
        out.NextGC = ThePacer().Goal();
        const CycleCounters cc = Counters();
        out.LastGC = cc.last_gc_unix_ns;
        out.PauseTotalNs = cc.pause_total_ns;
        out.NumGC = cc.num_gc;
        out.NumForcedGC = cc.num_forced_gc;
        out.NumMinorGC = MinorCycles();
        CopyPauses(out.PauseNs, out.PauseEnd);
        out.GCCPUFraction = GCCPUFraction();
        out.Lookups = 0;
        for (std::size_t c = 0; c < std::size(out.BySize) && c < kNumSizeClasses; ++c) {
          out.BySize[c].Size = kClassToSize[c];
          out.BySize[c].Mallocs = g_heap.nmalloc_small[c].load(std::memory_order_relaxed);
          out.BySize[c].Frees = g_heap.nfree_small[c].load(std::memory_order_relaxed);
        }
      },
      &m);
  return m;
}

}  // namespace gofin
