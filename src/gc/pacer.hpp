#pragma once
// Go: mgcpacer.go, reduced to what a stop-the-world collector needs: the heap goal
// (live heap x (1 + GOGC/100), at least 4 MiB x GOGC/100) and the memory limit's cap on it.
// The trigger is the goal itself, since gofin's mark finishes before allocation resumes.
#include <cstdint>

namespace gofin::internal {

class Pacer {
 public:
  void InitFromEnv();  // GOFIN_GOGC, GOFIN_MEMLIMIT
  // Called at mark termination with the bytes the mark found live; sets heap_live, the goal
  // and the trigger in g_heap. goal_basis is the live heap the goal grows from: heap_marked
  // after a full mark; after a minor one (gc/generations.hpp) the last full mark's, since
  // heap_marked then includes old objects that died unseen and Go's goal would not count them.
  void EndCycle(std::uint64_t heap_marked, std::uint64_t goal_basis, std::uint64_t non_heap_sys);
  int SetGCPercent(int percent);
  std::int64_t SetMemoryLimit(std::int64_t limit);
  [[nodiscard]] std::uint64_t Goal() const;
  // Whether the memory limit, not GOGC, set the current goal: then every cycle should free
  // all it can (gc/generations.hpp makes it a full one).
  [[nodiscard]] bool LimitBound() const;
  [[nodiscard]] int GCPercent() const;

 private:
  void Recompute(std::uint64_t non_heap_sys);
};

Pacer& ThePacer();

inline constexpr std::int64_t kNoMemoryLimit = INT64_MAX;

}  // namespace gofin::internal
