#include "heap/heap.hpp"

#include <bit>
#include <cstring>
#include <mutex>

#include "heap/os_memory.hpp"

namespace gofin::internal {

constinit Heap g_heap{};

namespace {

// Destructor tables come in power-of-two sizes from 16 bytes to 16 KiB (1024 slots of 16
// bytes), each size with its own free list, carved from mmap'd chunks under the heap lock.
constexpr std::size_t kDtorBuckets = 11;
struct FreeBlock {
  FreeBlock* next;
};
constinit FreeBlock* g_dtor_free[kDtorBuckets] = {};
constinit char* g_dtor_chunk = nullptr;
constinit std::size_t g_dtor_chunk_left = 0;

std::size_t BucketFor(std::size_t nelems) {
  return static_cast<std::size_t>(std::bit_width(std::bit_ceil(nelems) - 1));
}

}  // namespace

DtorSlot* AllocDtorTable(std::size_t nelems) {
  const std::size_t b = BucketFor(nelems);
  const std::size_t bytes = sizeof(DtorSlot) << b;
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
  }
  return static_cast<DtorSlot*>(p);
}

void FreeDtorTable(DtorSlot* t, std::size_t nelems) {
  const std::size_t b = BucketFor(nelems);
  auto* f = reinterpret_cast<FreeBlock*>(t);
  f->next = g_dtor_free[b];
  g_dtor_free[b] = f;
}

void FreeSpanToHeap(Span* s) {
  std::lock_guard lock(g_heap.lock);
  if (s->dtors != nullptr && !s->large) FreeDtorTable(s->dtors, s->nelems);
  s->dtors = nullptr;
  g_heap.pages.FreeSpan(s, g_heap.arenas);
}

}  // namespace gofin::internal
