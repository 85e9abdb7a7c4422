#pragma once
// Heap profiles (Go: runtime.MemProfileRate, runtime/pprof.WriteHeapProfile).
#include <iosfwd>

namespace gofin {

// Go: runtime.MemProfileRate. On average one allocation is sampled per `bytes` allocated
// (exponentially distributed sample points); 0 turns sampling off, 1 samples every
// allocation (every tiny block); the default is 512 KiB (GOFIN_MEMPROFILERATE sets it at
// startup). Returns the previous rate. Set it as early as possible: objects allocated before
// are sampled at the old rate. A negative value only reads it.
int SetMemProfileRate(int bytes);

namespace pprof {
// Go: runtime/pprof.WriteHeapProfile. Writes the heap profile, gzipped profile.proto, as of
// the most recently completed collection (after GC() returns, with that collection's frees):
// sample types alloc_objects, alloc_space, inuse_objects, inuse_space, scaled for sampling as
// Go scales them; functions named (demangled) in the profile; mappings with file names and
// build IDs. `go tool pprof` reads it. GOFIN_MEMPROFILE=path writes one when the program
// exits (as of the last collection, as always).
void WriteHeapProfile(std::ostream& out);
}  // namespace pprof

}  // namespace gofin
