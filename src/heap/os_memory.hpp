#pragma once
// Go: mem_linux.go (sysReserve, sysMap, sysUnused, sysFree). The only place gofin talks to
// the kernel about memory.
#include <cstddef>

namespace gofin::internal::os {

// Reserves address space (PROT_NONE) of `size` bytes aligned to `align`, preferring `hint`.
// Returns nullptr when the kernel refuses.
void* Reserve(std::size_t size, std::size_t align, void* hint);
// Makes reserved memory readable and writable. Fresh pages read as zero.
bool Commit(void* addr, std::size_t size);
// Returns the physical pages; the range stays mapped and reads as zero afterwards.
void Release(void* addr, std::size_t size);
// Plain anonymous read-write memory for gofin's own metadata (never scanned, never freed).
void* MapMetadata(std::size_t size);
// The same, with every page made resident up front (MAP_POPULATE): for memory that is carved
// front to back and fully used (fixalloc chunks), one system call instead of a page fault per
// 4 KiB, which in a VM costs a trap each (a sweep queueing a million finalizers takes ~6000
// queue-block pages at once).
void* MapMetadataPopulated(std::size_t size);
void Unmap(void* addr, std::size_t size);
// The machine's memory and swap together (sysinfo), read once: more than this can never be
// backed.
std::size_t PhysicalAndSwapBytes();

}  // namespace gofin::internal::os
