#include "gc/untracked_writes.hpp"

#include <algorithm>
#include <cstdint>
#include <gofin/error.hpp>
#include <gofin/gc.hpp>
#include <mutex>

#include "gc/thread_registry.hpp"
#include "heap/lock.hpp"

namespace gofin::internal {

namespace {

// Page numbers [lo, hi) and how many declarations name exactly that range.
struct PageRange {
  std::uintptr_t lo = 0;
  std::uintptr_t hi = 0;
  std::uint32_t refs = 0;
};

constexpr std::size_t kMaxRanges = 1024;

struct Table {
  SpinLock lock;  // a critical region: a stop never finds the table half-changed
  std::size_t n = 0;
  PageRange ranges[kMaxRanges];
};
constinit Table g_table;

PageRange Pages(const void* p, std::size_t len) {
  const auto lo = reinterpret_cast<std::uintptr_t>(p);
  return PageRange{lo / dirty::kOsPageSize,
                   (lo + len + dirty::kOsPageSize - 1) / dirty::kOsPageSize, 0};
}

}  // namespace

long AppendUntrackedRanges(dirty::Region* out, std::size_t n, std::size_t cap) {
  for (std::size_t i = 0; i < g_table.n; ++i) {
    if (n == cap) return -1;
    out[n].start = g_table.ranges[i].lo * dirty::kOsPageSize;
    out[n].end = g_table.ranges[i].hi * dirty::kOsPageSize;
    out[n].categories = 0;
    ++n;
  }
  return static_cast<long>(n);
}

}  // namespace gofin::internal

namespace gofin {

void AddUntrackedWrites(const void* p, std::size_t len) {
  if (p == nullptr || len == 0) return;
  if (reinterpret_cast<std::uintptr_t>(p) > UINTPTR_MAX - len) {
    throw Error("gofin: AddUntrackedWrites: range wraps around the address space");
  }
  internal::RegisterThread();  // a critical region holds off stops only on a registered thread
  const internal::PageRange r = internal::Pages(p, len);
  auto& t = internal::g_table;
  const std::lock_guard lock(t.lock);
  for (std::size_t i = 0; i < t.n; ++i) {
    if (t.ranges[i].lo == r.lo && t.ranges[i].hi == r.hi) {
      ++t.ranges[i].refs;
      return;
    }
  }
  if (t.n == internal::kMaxRanges) {
    throw Error("gofin: AddUntrackedWrites: more than 1024 distinct ranges declared");
  }
  t.ranges[t.n] = internal::PageRange{r.lo, r.hi, 1};
  ++t.n;
}

void RemoveUntrackedWrites(const void* p, std::size_t len) {
  if (p == nullptr || len == 0) return;
  internal::RegisterThread();
  const internal::PageRange r = internal::Pages(p, len);
  auto& t = internal::g_table;
  const std::lock_guard lock(t.lock);
  for (std::size_t i = 0; i < t.n; ++i) {
    if (t.ranges[i].lo != r.lo || t.ranges[i].hi != r.hi) continue;
    if (--t.ranges[i].refs == 0) t.ranges[i] = t.ranges[--t.n];
    return;
  }
  throw Error("gofin: RemoveUntrackedWrites: range was not declared");
}

}  // namespace gofin
