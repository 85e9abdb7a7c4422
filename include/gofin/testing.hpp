#pragma once
// Test support (Go: runtime's export_test.go hooks).
#include <chrono>

namespace gofin::testing {

// True once the finalizer queue is empty and no finalizer is running; false on timeout.
bool BlockUntilEmptyFinalizerQueue(std::chrono::nanoseconds timeout);

// True once the cleanup queue is empty and no cleanup is running; false on timeout.
bool BlockUntilEmptyCleanupQueue(std::chrono::nanoseconds timeout);

// True once every C++ destructor queued by a sweep so far has run (they run on gofin's
// destructor thread, after the cycle that found their objects dead); false on timeout.
bool BlockUntilEmptyDestructorQueue(std::chrono::nanoseconds timeout);

// V8 cppgc: StackState. A collection like gofin::GC() that, with kNoHeapPointers, does not
// scan the calling thread's stack and registers: for tests that keep every GC pointer
// elsewhere (Root<T>, other threads) and need exact reachability despite conservative
// scanning. Any GC pointer the caller holds only on its stack may be freed.
enum class StackState { kMayContainHeapPointers, kNoHeapPointers };
void GC(StackState state);

// A minor collection (debug::SetGenerational) whenever one is possible: generational
// collection is in effect and the previous collection left its survivors marked. Otherwise a
// full collection like GC(state). Returns whether it was minor. Like GC(), it returns once
// the sweep is complete.
bool MinorGC(StackState state);

}  // namespace gofin::testing
