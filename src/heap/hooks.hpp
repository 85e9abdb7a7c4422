#pragma once
// The heap layer's calls upward. The allocator must register threads, sweep spans before reuse
// and start collections, all of which belong to the gc layer (Go keeps them in one package);
// these declarations are the whole of that dependency, implemented under src/gc/.
#include <cstddef>

namespace gofin::internal {

struct Span;
struct ThreadCache;

// Registers the calling thread (Go: the first call of a new M) and returns its cache.
ThreadCache* AttachCurrentThread();

// Go: mspan.sweep. Sweeps s, whose sweepgen the caller moved to sg-1. With preserve the span
// is handed back to the caller (for allocation) instead of being filed or freed. Returns false
// if the span was freed to the page heap.
bool SweepSpan(Span* s, bool preserve);

// Go: the gcTrigger test at the end of mallocgc. Called outside any critical region.
void MaybeStartGC();

// Go: runtime.GC from the out-of-memory path: one full collection, if this thread may run one.
bool CollectForOOM();

// Implemented under src/profile/ (Go's mallocgc calls profilealloc likewise). A link-time
// call, not a registered hook: the heap profile must work in every program that allocates,
// also one that never names the profile's API (GOFIN_MEMPROFILE).
// Go: mProf_Malloc. p (its slot of size bytes) was sampled; no guard is held.
void ProfileAlloc(void* p, std::size_t size);
// Once, at the first thread's registration: reads GOFIN_MEMPROFILE (a profile written at exit)
// and readies the profile's special kind and cycle hooks.
void InitMemProfile();

}  // namespace gofin::internal
