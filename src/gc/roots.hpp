#pragma once
// Go: markroot's sources (mgcmark.go): data and bss segments, plus gofin's own root kinds,
// Root<T> slots and AddRoots ranges. Thread stacks are the marker's (they need the stop).
#include <cstddef>
#include <cstdint>

namespace gofin::internal {

struct RootRange {
  std::uintptr_t lo;
  std::uintptr_t hi;
};

// A fixed-capacity list that lives in metadata memory: the collector fills it before the
// stop and reads it during, never calling malloc while other threads are frozen (one of them
// may hold malloc's lock).
class RootRangeList {
 public:
  void Clear() { size_ = 0; }
  void Add(std::uintptr_t lo, std::uintptr_t hi);
  // Makes room for n more ranges, before the world stops: growing it then could fail with
  // every other thread frozen. Throws std::bad_alloc.
  void Reserve(std::size_t n);
  [[nodiscard]] std::size_t Size() const { return size_; }
  [[nodiscard]] const RootRange& operator[](std::size_t i) const { return ranges_[i]; }

 private:
  RootRange* ranges_ = nullptr;
  std::size_t size_ = 0;
  std::size_t capacity_ = 0;
};

// Writable PT_LOAD segments of every loaded object (dl_iterate_phdr), split into chunks for
// parallel marking. Must be called before the world stops (it takes the loader's lock).
void CollectDataSegments(RootRangeList& out);

// Root<T> slot chunks and AddRoots ranges. Lock() before the world stops and Unlock() after
// it restarts keeps both unchanged while the marker reads them.
void LockUserRoots();
void UnlockUserRoots();
void CollectUserRoots(RootRangeList& out);
// After fork(), in the child: the lock may be held by a thread that no longer exists.
void ResetUserRootsAfterFork();

}  // namespace gofin::internal
