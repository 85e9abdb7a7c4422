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
  RootRange& At(std::size_t i) { return ranges_[i]; }
  // Keeps the ranges for which keep(range) holds, in order.
  template <class Keep>
  void Filter(Keep keep) {
    std::size_t n = 0;
    for (std::size_t i = 0; i < size_; ++i) {
      if (keep(ranges_[i])) ranges_[n++] = ranges_[i];
    }
    size_ = n;
  }

 private:
  RootRange* ranges_ = nullptr;
  std::size_t size_ = 0;
  std::size_t capacity_ = 0;
};

// Writable PT_LOAD segments of every loaded object (dl_iterate_phdr), split into chunks for
// parallel marking. Must be called before the world stops (it takes the loader's lock).
void CollectDataSegments(RootRangeList& out);

// The list above must still be true when the world is stopped: a library that dlclose
// unmaps in between would be scanned after it is gone. gofin wraps dlclose (as bdwgc wraps
// dlopen and dlclose): a dlclose that starts while a collection holds the list waits, before
// the library is touched and with no lock of gofin's held, until the world has restarted.
// HoldDlclose, before listing, also waits (at most 100 ms) for the dlclose calls already
// under way; false when some did not finish (one may be running destructors that wait for
// this very collection), and then DropUnmappedDataSegments, with the world stopped, keeps
// only the listed ranges that are still readable mappings. ReleaseDlclose after the restart.
bool HoldDlclose();
void ReleaseDlclose();
void DropUnmappedDataSegments(RootRangeList& roots);

// Root<T> slot chunks and AddRoots ranges. Lock() before the world stops and Unlock() after
// it restarts keeps both unchanged while the marker reads them.
void LockUserRoots();
void UnlockUserRoots();
void CollectUserRoots(RootRangeList& out);
// After fork(), in the child: the lock may be held by a thread that no longer exists.
void ResetUserRootsAfterFork();

// Go: isGoPointerWithoutSpan: whether p is in the data or bss segment of a loaded module
// (a global, which never becomes unreachable). Takes the loader's lock.
bool InDataSegment(const void* p);

}  // namespace gofin::internal
