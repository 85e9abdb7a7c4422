#include "gc/pacer.hpp"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>

#include "gc/collector.hpp"
#include "gofin/gc.hpp"
#include "heap/heap.hpp"
#include "heap/options.hpp"

namespace gofin::internal {

namespace {

constexpr std::uint64_t kHeapMinimum = 4 << 20;  // Go: defaultHeapMinimum

constinit std::atomic<int> g_gcpercent{100};
constinit std::atomic<std::int64_t> g_memlimit{kNoMemoryLimit};
constinit std::atomic<std::uint64_t> g_goal{kHeapMinimum};
constinit std::atomic<std::uint64_t> g_non_heap{0};
constinit std::atomic<std::uint64_t> g_goal_basis{UINT64_MAX};
constinit std::atomic<bool> g_limit_bound{false};

}  // namespace

Pacer& ThePacer() {
  static constinit Pacer pacer;
  return pacer;
}

void Pacer::InitFromEnv() {
  if (const std::optional<int> g = EnvPercent("GOFIN_GOGC")) g_gcpercent.store(*g);
  if (const std::optional<std::int64_t> m = EnvByteCount("GOFIN_MEMLIMIT")) g_memlimit.store(*m);
  Recompute(0);
}

void Pacer::Recompute(std::uint64_t non_heap_sys) {
  g_non_heap.store(non_heap_sys, std::memory_order_relaxed);
  const int percent = g_gcpercent.load(std::memory_order_relaxed);
  const std::uint64_t marked = g_heap.heap_marked.load(std::memory_order_relaxed);
  const std::uint64_t basis = std::min(marked, g_goal_basis.load(std::memory_order_relaxed));
  std::uint64_t goal = UINT64_MAX;
  if (percent >= 0) {
    const std::uint64_t minimum = kHeapMinimum * static_cast<std::uint64_t>(percent) / 100;
    const std::uint64_t room = basis * static_cast<std::uint64_t>(percent) / 100;
    // After a minor cycle, marked exceeds basis by the old objects that may have died: the
    // goal stays the full mark's, with never less than a quarter of the usual room left.
    goal = std::max({basis + room, marked + room / 4, minimum});
  }
  const std::int64_t limit = g_memlimit.load(std::memory_order_relaxed);
  bool limit_bound = false;
  if (limit != kNoMemoryLimit) {
    // Go: memoryLimitHeapGoal. What the limit leaves for the heap once gofin's other memory
    // is counted; never below the live heap plus a sliver, so that a limit that cannot be
    // met makes collections frequent rather than continuous.
    const auto lim = static_cast<std::uint64_t>(limit);
    std::uint64_t limit_goal = lim > non_heap_sys ? lim - non_heap_sys : 0;
    limit_goal = std::max(limit_goal, marked + marked / 16 + (1 << 20));
    limit_bound = limit_goal < goal;
    goal = std::min(goal, limit_goal);
  }
  g_limit_bound.store(limit_bound, std::memory_order_relaxed);
  g_goal.store(goal, std::memory_order_relaxed);
  g_heap.gc_trigger.store(goal, std::memory_order_relaxed);
}

void Pacer::EndCycle(std::uint64_t heap_marked, std::uint64_t goal_basis,
                     std::uint64_t non_heap_sys) {
  g_goal_basis.store(goal_basis, std::memory_order_relaxed);
  g_heap.heap_marked.store(heap_marked, std::memory_order_relaxed);
  g_heap.heap_live.store(heap_marked, std::memory_order_relaxed);
  Recompute(non_heap_sys);
}

int Pacer::SetGCPercent(int percent) {
  const int old = g_gcpercent.exchange(percent < 0 ? -1 : percent);
  Recompute(g_non_heap.load(std::memory_order_relaxed));
  return old;
}

std::int64_t Pacer::SetMemoryLimit(std::int64_t limit) {
  if (limit < 0) return g_memlimit.load();
  const std::int64_t old = g_memlimit.exchange(limit);
  Recompute(g_non_heap.load(std::memory_order_relaxed));
  return old;
}

std::uint64_t Pacer::Goal() const { return g_goal.load(std::memory_order_relaxed); }
bool Pacer::LimitBound() const { return g_limit_bound.load(std::memory_order_relaxed); }
int Pacer::GCPercent() const { return g_gcpercent.load(std::memory_order_relaxed); }

}  // namespace gofin::internal

namespace gofin::debug {
int SetGCPercent(int percent) {
  internal::EnsureCollectorInitialized();  // the environment first, so that this call wins
  return internal::ThePacer().SetGCPercent(percent);
}
std::int64_t SetMemoryLimit(std::int64_t limit) {
  internal::EnsureCollectorInitialized();
  return internal::ThePacer().SetMemoryLimit(limit);
}
}  // namespace gofin::debug
