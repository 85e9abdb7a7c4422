#pragma once
// Memory written behind the written-page tracking's back (gofin's addition; Go's collector has
// no minor cycles and so no such tracking). The kernel's tracking (heap/dirty_pages.hpp) sees
// every store of a CPU through the page tables, and every copy the kernel makes into user
// memory through them (read(), process_vm_writev). It does not see writes through pages
// pinned for a device or for the kernel's own direct access: io_uring's fixed buffers
// (IORING_OP_READ_FIXED into a registered buffer), RDMA memory regions, a device's DMA.
// gofin cannot tell which pages a program pinned, so the program declares them
// (gofin::AddUntrackedWrites) and gofin never trusts the tracking for them: every minor cycle
// rescans the old objects on the declared pages as if they had been written. A full cycle
// scans everything anyway. Mostly-concurrent marking will need the same rescan at mark
// termination.
//
// The table is fixed storage read with the world stopped; it is changed only inside a
// critical region, so no stopped thread is ever half-way through a change. It holds page
// numbers, not addresses: a table of heap addresses in the data segment would be a root.
#include <cstddef>
#include <cstdint>

#include "heap/dirty_pages.hpp"

namespace gofin::internal {

// Appends the declared ranges that may hold heap pages to out[n, cap), OS-page aligned, and
// returns the new count, or -1 when they do not fit. The world is stopped.
long AppendUntrackedRanges(dirty::Region* out, std::size_t n, std::size_t cap);

}  // namespace gofin::internal
