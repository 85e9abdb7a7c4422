#pragma once
// Process-lifetime state created on first use and published with a compare-and-swap, not a
// function-local static: the marker reads such state with the world stopped, and a thread
// stopped inside a static's initialisation holds its guard, which the collector would then
// wait for forever (found by the oracle: the first SetFinalizer racing an automatic
// collection). Never destroyed: threads may use it after static destructors ran.
#include <atomic>
#include <memory>

namespace gofin::internal {

template <class T>
T& PublishedOnce(std::atomic<T*>& slot) {
  if (T* t = slot.load(std::memory_order_acquire)) [[likely]]
    return *t;
  auto fresh = std::make_unique<T>();
  T* expected = nullptr;
  // acq_rel: publishes the constructed object; on failure, acquires the winner's.
  if (slot.compare_exchange_strong(expected, fresh.get(), std::memory_order_acq_rel,
                                   std::memory_order_acquire)) {
    return *fresh.release();  // lives for the process
  }
  return *expected;
}

}  // namespace gofin::internal
