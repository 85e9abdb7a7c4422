#pragma once
// The process's mappings, read from /proc/self/maps with system calls only (no allocation, no
// stdio lock), so that the collector can ask while the world is stopped: a thread stopped on
// a stack gofin was not told of, a data segment that may have been unmapped since it was
// listed (roots.cpp). bdwgc reads the same file for its root sets where dl_iterate_phdr is
// missing. Only the collector calls these (they share one buffer under its lock).
#include <cstdint>

namespace gofin::internal {

// Calls fn(ctx, lo, hi, readable) for each mapping in address order until fn returns false.
// False when the file cannot be read.
using MappingFn = bool (*)(void* ctx, std::uintptr_t lo, std::uintptr_t hi, bool readable);
bool ForEachMapping(MappingFn fn, void* ctx);

// The readable mapping holding addr (never merged with its neighbours: one may be a file
// mapping whose pages past the file's end fault with SIGBUS); false when addr is in none.
bool FindReadableMapping(std::uintptr_t addr, std::uintptr_t& lo, std::uintptr_t& hi);

}  // namespace gofin::internal
