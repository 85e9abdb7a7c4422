#pragma once
// Go: gcWork and workbuf (mgcwork.go). Grey objects wait in fixed-size buffers: each mark
// worker fills and drains its own, and hands full ones to a shared list that idle workers
// steal from. Buffers come from metadata memory up to a cap; past it the marker records an
// overflow and rescans instead of growing (bdwgc's mark-stack overflow), so marking never
// recurses and never grows without bound.
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "heap/lock.hpp"

namespace gofin::internal {

inline constexpr std::size_t kDefaultMarkQueueCapBytes = std::size_t{256} << 20;

// Go: workbuf
struct WorkBuf {
  static constexpr std::size_t kEntries = (4096 - 16) / sizeof(std::uintptr_t);
  WorkBuf* next = nullptr;
  std::size_t n = 0;
  std::uintptr_t obj[kEntries] = {};
};

// Go: work.full / work.empty
class WorkPool {
 public:
  // nullptr when the cap is reached.
  WorkBuf* GetEmpty();
  void PutEmpty(WorkBuf* b);
  void PutFull(WorkBuf* b);
  WorkBuf* TryGetFull();
  [[nodiscard]] bool HasFull() const { return nfull_.load(std::memory_order_seq_cst) > 0; }
  void SetCapBytes(std::size_t cap) { cap_ = cap; }

 private:
  SpinLock lock_;
  WorkBuf* full_ = nullptr;
  WorkBuf* empty_ = nullptr;
  std::atomic<std::size_t> nfull_{0};
  std::size_t in_use_ = 0;    // buffers handed out by GetEmpty and not put back empty
  WorkBuf* carve_ = nullptr;  // the untouched rest of the last mapping
  std::size_t carve_left_ = 0;
  std::size_t cap_ = kDefaultMarkQueueCapBytes;
};

// Go: gcWork. One per mark worker.
class WorkQueue {
 public:
  explicit WorkQueue(WorkPool& pool) : pool_(pool) {}
  // False when no buffer could be had: the caller records an overflow.
  bool Push(std::uintptr_t obj) {
    if (cur_ != nullptr && cur_->n < WorkBuf::kEntries) {
      cur_->obj[cur_->n++] = obj;
      return true;
    }
    return PushSlow(obj);
  }
  bool Pop(std::uintptr_t& obj) {
    if (cur_ != nullptr && cur_->n > 0) {
      obj = cur_->obj[--cur_->n];
      return true;
    }
    return PopSlow(obj);
  }
  // Hands everything local to the shared pool (end of a mark phase).
  void Dispose();
  // Go: gcWork.balance. Publishes the older half of the local buffer so that an idle worker
  // can steal it; a depth-first walk otherwise keeps all its work private.
  void Balance();
  [[nodiscard]] std::size_t LocalCount() const { return cur_ == nullptr ? 0 : cur_->n; }

 private:
  bool PushSlow(std::uintptr_t obj);
  bool PopSlow(std::uintptr_t& obj);

  WorkPool& pool_;
  WorkBuf* cur_ = nullptr;
  WorkBuf* spare_ = nullptr;
};

}  // namespace gofin::internal
