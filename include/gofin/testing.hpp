#pragma once
// Test support (Go: runtime's export_test.go hooks).
#include <chrono>

namespace gofin::testing {

// True once the finalizer queue is empty and no finalizer is running; false on timeout.
bool BlockUntilEmptyFinalizerQueue(std::chrono::nanoseconds timeout);

}  // namespace gofin::testing
