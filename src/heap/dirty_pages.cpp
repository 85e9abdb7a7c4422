#include "heap/dirty_pages.hpp"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>

namespace gofin::internal::dirty {

namespace {

// Linux 6.7's additions, absent from older kernel headers (the values are ABI).
constexpr std::uint64_t kFeatureWpUnpopulated = std::uint64_t{1} << 13;
constexpr std::uint64_t kFeatureWpAsync = std::uint64_t{1} << 15;
constexpr int kUserModeOnly = 1;  // UFFD_USER_MODE_ONLY: all an unprivileged process may ask
constexpr std::uint64_t kPageIsWritten = std::uint64_t{1} << 1;
constexpr std::uint64_t kScanCheckWpAsync = std::uint64_t{1} << 1;

// The kernel's struct pm_scan_arg.
struct PmScanArg {
  std::uint64_t size;
  std::uint64_t flags;
  std::uint64_t start;
  std::uint64_t end;
  std::uint64_t walk_end;
  std::uint64_t vec;
  std::uint64_t vec_len;
  std::uint64_t max_pages;
  std::uint64_t category_inverted;
  std::uint64_t category_mask;
  std::uint64_t category_anyof_mask;
  std::uint64_t return_mask;
};
constexpr unsigned long kPagemapScan = _IOWR('f', 16, PmScanArg);  // NOLINT: the kernel's macro
static_assert(sizeof(Region) == 24, "Region must match the kernel's struct page_region");

// Heap reservations, merged when adjacent (the page heap asks for the next arena first).
constexpr std::size_t kMaxRanges = 256;
struct Range {
  std::uintptr_t lo;
  std::uintptr_t hi;
};
struct State {
  Range ranges[kMaxRanges] = {};
  std::size_t nranges = 0;
  bool overflowed = false;  // more reservations than slots: tracking cannot be enabled
  int uffd = -1;
  int pagemap = -1;
};
constinit State g_state{};
// Relaxed: written under the heap lock or with the world stopped, read by the collector with
// the world stopped.
constinit std::atomic<bool> g_enabled{false};

bool Register(std::uintptr_t lo, std::uintptr_t hi) {
  uffdio_register reg{};
  reg.range.start = lo;
  reg.range.len = hi - lo;
  reg.mode = UFFDIO_REGISTER_MODE_WP;
  return ioctl(g_state.uffd, UFFDIO_REGISTER, &reg) == 0;
}

void TurnOff() { g_enabled.store(false, std::memory_order_relaxed); }

}  // namespace

void NoteHeapRange(std::uintptr_t lo, std::size_t len) {
  const std::uintptr_t hi = lo + len;
  State& st = g_state;
  if (st.nranges > 0 && st.ranges[st.nranges - 1].hi == lo) {
    st.ranges[st.nranges - 1].hi = hi;
  } else if (st.nranges < kMaxRanges) {
    st.ranges[st.nranges++] = Range{lo, hi};
  } else {
    st.overflowed = true;
    TurnOff();
    return;
  }
  if (Enabled() && !Register(lo, hi)) TurnOff();
}

bool Enable() {
  State& st = g_state;
  if (Enabled()) return true;
  if (st.overflowed) return false;
  if (st.uffd < 0) {
    // A privileged process may handle kernel-mode faults too; the asynchronous mode resolves
    // them in the kernel either way, so the unprivileged flag is the fallback.
    int fd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
    if (fd < 0)
      fd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | kUserModeOnly));
    if (fd < 0) return false;
    uffdio_api api{};
    api.api = UFFD_API;
    api.features = kFeatureWpAsync | kFeatureWpUnpopulated;
    if (ioctl(fd, UFFDIO_API, &api) != 0 || (api.features & kFeatureWpAsync) == 0) {
      close(fd);
      return false;
    }
    const int pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (pm < 0) {
      close(fd);
      return false;
    }
    st.uffd = fd;
    st.pagemap = pm;
  }
  for (std::size_t i = 0; i < st.nranges; ++i) {
    if (!Register(st.ranges[i].lo, st.ranges[i].hi)) return false;
  }
  g_enabled.store(true, std::memory_order_relaxed);
  return true;
}

bool Enabled() { return g_enabled.load(std::memory_order_relaxed); }

void DisableAfterFork() { TurnOff(); }

long ReadWritten(Region* out, std::size_t cap) {
  if (!Enabled()) return -1;
  const State& st = g_state;
  std::size_t n = 0;
  for (std::size_t i = 0; i < st.nranges; ++i) {
    std::uint64_t start = st.ranges[i].lo;
    const std::uint64_t end = st.ranges[i].hi;
    while (start < end) {
      if (n == cap) return -1;
      PmScanArg arg{};
      arg.size = sizeof(arg);
      arg.flags = kScanCheckWpAsync;
      arg.start = start;
      arg.end = end;
      arg.vec = reinterpret_cast<std::uintptr_t>(out + n);
      arg.vec_len = cap - n;
      arg.category_mask = kPageIsWritten;
      arg.return_mask = kPageIsWritten;
      const long got = ioctl(st.pagemap, kPagemapScan, &arg);
      if (got < 0) {
        TurnOff();
        return -1;
      }
      n += static_cast<std::size_t>(got);
      if (arg.walk_end <= start) {  // no progress: never expected, but never loop on it
        TurnOff();
        return -1;
      }
      start = arg.walk_end;
    }
  }
  return static_cast<long>(n);
}

std::size_t HeapRanges(Region* out, std::size_t cap) {
  const State& st = g_state;
  std::size_t n = 0;
  for (; n < st.nranges && n < cap; ++n) out[n] = Region{st.ranges[n].lo, st.ranges[n].hi, 0};
  return n;
}

bool Protect(std::uintptr_t lo, std::uintptr_t hi) {
  if (!Enabled()) return false;
  uffdio_writeprotect wp{};
  wp.range.start = lo;
  wp.range.len = hi - lo;
  wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
  if (ioctl(g_state.uffd, UFFDIO_WRITEPROTECT, &wp) != 0) {
    TurnOff();
    return false;
  }
  return true;
}

}  // namespace gofin::internal::dirty
