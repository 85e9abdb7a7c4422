#include "gc/work_queue.hpp"

#include <algorithm>
#include <memory>
#include <mutex>

#include "heap/os_memory.hpp"

namespace gofin::internal {

WorkBuf* WorkPool::GetEmpty() {
  std::lock_guard lock(lock_);
  // The cap counts the buffers in use (held by workers or full), not those ever mapped, so
  // that a lowered cap takes effect at once.
  if ((in_use_ + 1) * sizeof(WorkBuf) > cap_) return nullptr;
  ++in_use_;
  if (empty_ != nullptr) {
    WorkBuf* b = empty_;
    empty_ = b->next;
    b->next = nullptr;
    b->n = 0;
    return b;
  }
  // Buffers are carved from 1 MiB mappings one at a time, when first needed: linking a whole
  // mapping's buffers into the free list up front would write, and so make resident, a page
  // per buffer that most programs never use (a depth-first mark needs a handful).
  if (carve_left_ == 0) {
    constexpr std::size_t kBatch = 256;
    void* mem = os::MapMetadata(kBatch * sizeof(WorkBuf));
    if (mem == nullptr) {
      --in_use_;
      return nullptr;
    }
    carve_ = static_cast<WorkBuf*>(mem);
    carve_left_ = kBatch;
  }
  --carve_left_;
  return std::construct_at(carve_++);
}

void WorkPool::PutEmpty(WorkBuf* b) {
  std::lock_guard lock(lock_);
  --in_use_;
  b->next = empty_;
  empty_ = b;
}

void WorkPool::PutFull(WorkBuf* b) {
  std::lock_guard lock(lock_);
  b->next = full_;
  full_ = b;
  nfull_.fetch_add(1, std::memory_order_seq_cst);
}

WorkBuf* WorkPool::TryGetFull() {
  if (nfull_.load(std::memory_order_seq_cst) == 0) return nullptr;
  std::lock_guard lock(lock_);
  WorkBuf* b = full_;
  if (b != nullptr) {
    full_ = b->next;
    b->next = nullptr;
    nfull_.fetch_sub(1, std::memory_order_seq_cst);
  }
  return b;
}

bool WorkQueue::PushSlow(std::uintptr_t obj) {
  // Go: gcWork.put: swap with the spare, else publish the full buffer and take an empty one.
  if (cur_ != nullptr && spare_ != nullptr && spare_->n == 0) {
    std::swap(cur_, spare_);
  } else {
    if (cur_ != nullptr) {
      if (spare_ != nullptr) pool_.PutFull(spare_);
      spare_ = cur_;
    }
    cur_ = pool_.GetEmpty();
    if (cur_ == nullptr) {
      cur_ = spare_;
      spare_ = nullptr;
      if (cur_ == nullptr || cur_->n == WorkBuf::kEntries) {
        if (cur_ != nullptr) {
          pool_.PutFull(cur_);
          cur_ = nullptr;
        }
        return false;
      }
    }
  }
  cur_->obj[cur_->n++] = obj;
  return true;
}

bool WorkQueue::PopSlow(std::uintptr_t& obj) {
  if (spare_ != nullptr && spare_->n > 0) {
    std::swap(cur_, spare_);
  } else {
    WorkBuf* b = pool_.TryGetFull();
    if (b == nullptr) return false;
    if (cur_ != nullptr) pool_.PutEmpty(cur_);
    cur_ = b;
  }
  obj = cur_->obj[--cur_->n];
  return true;
}

void WorkQueue::Balance() {
  if (cur_ == nullptr || cur_->n < 2) return;
  WorkBuf* b = pool_.GetEmpty();
  if (b == nullptr) return;
  const std::size_t half = cur_->n / 2;
  std::copy(cur_->obj, cur_->obj + half, b->obj);
  b->n = half;
  std::copy(cur_->obj + half, cur_->obj + cur_->n, cur_->obj);
  cur_->n -= half;
  pool_.PutFull(b);
}

void WorkQueue::Dispose() {
  for (WorkBuf** b : {&cur_, &spare_}) {
    if (*b == nullptr) continue;
    if ((*b)->n > 0) {
      pool_.PutFull(*b);
    } else {
      pool_.PutEmpty(*b);
    }
    *b = nullptr;
  }
}

}  // namespace gofin::internal
