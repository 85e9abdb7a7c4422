#pragma once
// Go: the memory profile of runtime/mprof.go. Sampled allocations (heap/sampling.hpp) are
// counted in buckets keyed by (stack, size); each sampled object carries a profile special
// naming its bucket, and the sweep that frees the object counts the free there.
//
// Go's three-cycle bookkeeping, so that a profile is "as of the most recently completed
// collection" and never shows allocations the collector has not yet had a chance to free:
// an allocation made while cycle C runs is counted in future[(C+2)%3], a free by the sweep of
// cycle C in future[(C+1)%3]. Mark termination advances C (world stopped); right after the
// restart, future[C%3] is flushed into the published counts; and when GC() has finished its
// sweep, future[(C+1)%3] is flushed too, so after GC() returns the profile holds that
// collection's frees and every allocation made before it.
#include <cstdint>
#include <vector>

#include "profile/pprof_writer.hpp"

namespace gofin::internal::profile {

// Go: runtime.MemProfile(p, inuseZero=true): every bucket's published counts.
std::vector<MemRecord> ReadMemProfile();

}  // namespace gofin::internal::profile
