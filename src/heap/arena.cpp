#include "heap/arena.hpp"

#include <new>

#include "heap/os_memory.hpp"

namespace gofin::internal {

void ArenaIndex::Init() {
  if (Initialized()) return;
  void* p = os::MapMetadata(kArenaIndexEntries * sizeof(std::atomic<HeapArena*>));
  if (p == nullptr) throw std::bad_alloc();
  // release: a reader that sees the pointer sees the zeroed table.
  entries_.store(static_cast<std::atomic<HeapArena*>*>(p), std::memory_order_release);
}

void ArenaIndex::Add(std::uintptr_t base, HeapArena* a) {
  const std::uintptr_t idx = base >> kArenaShift;
  // release: the arena's metadata is complete before any reader can find it.
  entries_.load(std::memory_order_relaxed)[idx].store(a, std::memory_order_release);
  if (idx < lo_.load(std::memory_order_relaxed)) lo_.store(idx, std::memory_order_relaxed);
  if (idx + 1 > hi_.load(std::memory_order_relaxed)) hi_.store(idx + 1, std::memory_order_relaxed);
}

}  // namespace gofin::internal
