#pragma once
// bdwgc: the virtual dirty bits (os_dep.c: GC_dirty_init, GC_read_dirty, GC_protect_heap), on
// Linux's asynchronous userfaultfd write protection (6.7+). Go has no equivalent: its
// collector is not generational. gofin's minor collections need to know which heap pages were
// written since they were last protected, so that only the old objects on those pages are
// rescanned.
//
// The kernel does all of it: a write to a protected page is resolved in the kernel (no signal,
// no handler thread), the page is remembered as written, and PAGEMAP_SCAN reports the written
// pages. Unlike mprotect-based tracking (bdwgc's MPROTECT_VDB), writes by the kernel itself
// (read() into a heap buffer) succeed instead of failing with EFAULT, so tracking is
// transparent to the program and can be on by default.
#include <cstddef>
#include <cstdint>

namespace gofin::internal::dirty {

inline constexpr std::uintptr_t kOsPageSize = 4096;

// The kernel's struct page_region: a run [start, end) of pages, all written.
struct Region {
  std::uint64_t start;
  std::uint64_t end;
  std::uint64_t categories;
};

// Records a heap reservation (every page the heap can hand out lies in one). Called by the
// page heap under the heap lock; when tracking is on, the range is registered at once, and a
// refusal turns tracking off.
void NoteHeapRange(std::uintptr_t lo, std::size_t len);

// Opens the userfaultfd and /proc/self/pagemap and registers every noted range. False (and
// tracking stays off) when the kernel lacks the features, forbids userfaultfd, or refuses a
// registration. Caller holds the heap lock.
bool Enable();
// Whether tracking is on.
bool Enabled();
// Turns tracking off for good in this process (the child of a fork: its mappings are no
// longer registered).
void DisableAfterFork();

// The pages written since they were last protected (or never protected), as runs, into
// out[0..cap). Returns the number of runs, or -1 when they do not fit or the kernel refused
// (then the caller must treat every page as written). The world is stopped.
long ReadWritten(Region* out, std::size_t cap);
// Every noted range, as runs into out[0..cap) (for a cycle that cannot trust ReadWritten).
std::size_t HeapRanges(Region* out, std::size_t cap);
// Write-protects [lo, hi) (OS-page aligned, inside noted ranges) so that the next write to it
// is reported. False (and tracking off) on a refusal.
bool Protect(std::uintptr_t lo, std::uintptr_t hi);

}  // namespace gofin::internal::dirty
