#pragma once
// Software prefetches for gofin's own metadata walks.
namespace gofin::internal {

// Fetches the cache line at p in a state that may be written. GCC turns
// __builtin_prefetch(p, 1) into a plain read prefetch unless the target has PRFCHW
// (-mprfchw, not in x86-64's baseline), and a line fetched for reading that another core last
// wrote must then be fetched a second time, with that core's copy invalidated, before the
// write retires: in a record recycled from the sweeper's core that second trip is what a
// locked instruction after the write waits for. x86 CPUs without PREFETCHW execute it as a
// no-op hint.
inline void PrefetchForWrite(const void* p) {
#if defined(__x86_64__)
  asm volatile("prefetchw %0" : : "m"(*static_cast<const char*>(p)));
#else
  __builtin_prefetch(p, 1);
#endif
}

}  // namespace gofin::internal
