#pragma once
// Go: fixalloc (mfixalloc.go). A free-list allocator of fixed-size records for the heap's
// own metadata (spans, specials, queue blocks), carved from mmap'd chunks: never from the GC
// heap or malloc, so the collector may use it while the world is stopped. Not thread-safe:
// every FixAlloc is guarded by the lock of the structure that owns it.
#include <cstddef>
#include <new>

#include "heap/os_memory.hpp"

namespace gofin::internal {

template <class T>
class FixAlloc {
 public:
  constexpr FixAlloc() = default;

  // Returns storage for one T, constructed with T's default constructor.
  T* Alloc() {
    T* t = TryAlloc();
    if (t == nullptr) throw std::bad_alloc();
    return t;
  }

  // Like Alloc, but nullptr when the OS refuses memory: for callers that must leave their
  // structure consistent.
  T* TryAlloc() {
    void* p = nullptr;
    if (free_ != nullptr) {
      p = free_;
      free_ = free_->next;
    } else {
      if (chunk_left_ < kRecord && !Refill()) return nullptr;
      p = chunk_;
      chunk_ += kRecord;
      chunk_left_ -= kRecord;
    }
    ++in_use_;
    return ::new (p) T();
  }

  void Free(T* p) {
    p->~T();
    auto* f = reinterpret_cast<FreeRecord*>(p);
    f->next = free_;
    free_ = f;
    --in_use_;
  }

  [[nodiscard]] std::size_t InUse() const { return in_use_; }
  [[nodiscard]] std::size_t SysBytes() const { return sys_; }

 private:
  struct FreeRecord {
    FreeRecord* next;
  };
  static constexpr std::size_t kAlign = alignof(T) < 16 ? 16 : alignof(T);
  static constexpr std::size_t kRecord = (sizeof(T) + kAlign - 1) / kAlign * kAlign;
  static constexpr std::size_t kChunk = kRecord * 64 > (std::size_t{1} << 16)
                                            ? kRecord * 64
                                            : (std::size_t{1} << 16);

  bool Refill() {
    void* c = os::MapMetadataPopulated(kChunk);
    if (c == nullptr) return false;
    chunk_ = static_cast<char*>(c);
    chunk_left_ = kChunk;
    sys_ += kChunk;
    return true;
  }

  FreeRecord* free_ = nullptr;
  char* chunk_ = nullptr;
  std::size_t chunk_left_ = 0;
  std::size_t in_use_ = 0;
  std::size_t sys_ = 0;
};

}  // namespace gofin::internal
