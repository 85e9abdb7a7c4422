#include "heap/heap.hpp"

#include <bit>
#include <cstring>
#include <memory>
#include <mutex>

#include "heap/os_memory.hpp"

namespace gofin::internal {

constinit Heap g_heap{};

namespace {

// Side tables (destructor slots, specials heads) come in power-of-two sizes from 16 bytes to
// 16 KiB, each size with its own free list, carved from mmap'd chunks under the heap lock.
constexpr std::size_t kMinTable = 16;
constexpr std::size_t kDtorBuckets = 11;
struct FreeBlock {
  FreeBlock* next;
};
constinit FreeBlock* g_dtor_free[kDtorBuckets] = {};
constinit char* g_dtor_chunk = nullptr;
constinit std::size_t g_dtor_chunk_left = 0;

std::size_t BucketFor(std::size_t bytes) {
  const std::size_t units = (bytes + kMinTable - 1) / kMinTable;
  return static_cast<std::size_t>(std::bit_width(std::bit_ceil(units) - 1));
}

}  // namespace

void* AllocSideTable(std::size_t want) {
  const std::size_t b = BucketFor(want);
  const std::size_t bytes = kMinTable << b;
  void* p = nullptr;
  if (g_dtor_free[b] != nullptr) {
    p = g_dtor_free[b];
    g_dtor_free[b] = g_dtor_free[b]->next;
    std::memset(p, 0, bytes);
  } else {
    if (g_dtor_chunk_left < bytes) {
      constexpr std::size_t kChunk = std::size_t{1} << 20;
      void* c = os::MapMetadata(kChunk);
      if (c == nullptr) return nullptr;
      g_dtor_chunk = static_cast<char*>(c);
      g_dtor_chunk_left = kChunk;
    }
    p = g_dtor_chunk;
    g_dtor_chunk += bytes;
    g_dtor_chunk_left -= bytes;
    // Fresh pages read as zero already, but a table's first access is often a read (a list
    // walk): that maps the shared zero page, and the first write then copies it and flushes
    // every core's TLB. Writing first takes one plain fault instead.
    std::memset(p, 0, bytes);
  }
  return p;
}

void FreeSideTable(void* t, std::size_t want) {
  const std::size_t b = BucketFor(want);
  auto* f = static_cast<FreeBlock*>(t);
  f->next = g_dtor_free[b];
  g_dtor_free[b] = f;
}

void ResetHeapLocksAfterFork() {
  std::construct_at(&g_heap.lock);
  for (auto& c : g_heap.central) std::construct_at(&c.lock);
  g_heap.world_stopping.store(false, std::memory_order_relaxed);
  g_heap.stw_blockers.store(0, std::memory_order_relaxed);
}

void FreeSpanToHeap(Span* s) {
  std::lock_guard lock(g_heap.lock);
  if (s->dtors != nullptr && !s->large) FreeSideTable(s->dtors, s->nelems * sizeof(DtorSlot));
  if (s->special_heads != nullptr && !s->large) {
    FreeSideTable(static_cast<void*>(s->special_heads), s->nelems * sizeof(void*));
  }
  s->dtors = nullptr;
  s->special_heads = nullptr;
  g_heap.pages.FreeSpan(s, g_heap.arenas);
}

}  // namespace gofin::internal
