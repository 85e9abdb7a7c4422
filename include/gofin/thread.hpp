#pragma once
// Threads. Every thread that calls into gofin is registered on its first call; ThreadScope is
// for a thread that holds GC pointers before that.
#include "gofin/detail/runtime.hpp"

namespace gofin {

class ThreadScope {
 public:
  ThreadScope() : registered_here_(detail::RegisterCurrentThread()) {}
  ~ThreadScope() {
    if (registered_here_) detail::UnregisterCurrentThread();
  }
  ThreadScope(const ThreadScope&) = delete;
  ThreadScope& operator=(const ThreadScope&) = delete;

 private:
  bool registered_here_;
};

}  // namespace gofin
