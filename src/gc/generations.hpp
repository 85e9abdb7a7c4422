#pragma once
// Minor collections with sticky mark bits. Go's collector is not generational: this is gofin's
// departure (bdwgc's generational mode and cppgc's young generation are the models), taken
// only for collections the pacer starts (GC() is always a full one) and only where the kernel
// tracks written pages for gofin (heap/dirty_pages.hpp).
//
// After a cycle every surviving object keeps its mark bit: the sweep copies the bits it turns
// into allocation bits back into the next cycle's mark bits instead of clearing them. Such an
// object is old. A minor cycle marks from the roots as a full one does, but stops at old
// objects, and rescans the old objects on the pages written since the previous cycle: a
// young object can only be reachable from an old one through such a write, because every old
// object's referents were marked (old) when the object itself was. A major cycle clears the
// marks first and is Go's full mark. Unreachable old objects (and their finalizers, cleanups
// and weak pointers) wait for the next major cycle, which comes at least every 16 cycles and
// sooner when the old objects outgrow the last full mark's live heap by a quarter.
#include <cstdint>

namespace gofin::internal {

// Reads GOFIN_GENERATIONAL ("0" or "off": never minor) and turns page tracking on when
// wanted. Once, from the collector's initialisation.
void InitGenerations();

// The world is stopped and the sweep finished. Reads which pages were written and decides the
// cycle's kind; for a major cycle after minor ones, clears every mark bit. True for a minor
// cycle.
enum class CycleKind {
  kPaced,            // the pacer's: minor when the policy allows
  kFull,             // GC(), out of memory: always major
  kMinorIfPossible,  // testing::MinorGC: minor whenever the marks and the tracking allow
};
bool BeginCycle(CycleKind kind);
// The world is still stopped and marking done. Write-protects the written pages that now hold
// old objects and tells the sweep whether to keep the marks.
struct CycleLive {
  std::uint64_t live;        // what the mark found, plus the old objects a minor one skipped
  std::uint64_t goal_basis;  // the live heap the pacer's goal grows from (Pacer::EndCycle)
};
CycleLive EndCycle(bool minor, std::uint64_t bytes_marked);

// For the sweeper: whether this cycle's sweep keeps the marks (copies them into the next
// cycle's mark bits).
bool SweepKeepsMarks();

// The setting (debug::SetGenerational) and whether minor cycles are in effect (the setting,
// and the kernel's page tracking).
bool SetGenerationalSetting(bool on);
bool GenerationalInEffect();
std::uint64_t MinorCycles();

// After fork(), in the child: the child's heap mappings are no longer tracked.
void ResetGenerationsAfterFork();

}  // namespace gofin::internal
