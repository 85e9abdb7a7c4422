#include "gc/roots.hpp"

#include <dlfcn.h>
#include <link.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>

#include "gc/memory_map.hpp"
#include "gc/preemptible_mutex.hpp"
#include "gc/thread_registry.hpp"
#include "gofin/root.hpp"
#include "heap/os_memory.hpp"

namespace gofin::internal {

namespace {

constexpr std::uintptr_t kChunkBytes =
    std::uintptr_t{256} * 1024;  // a marking job's share of a segment

// Root<T> slots: chunks of 4096 words in metadata memory. A free slot holds the next free
// slot's address (metadata, never a heap address), so the marker scans chunks whole.
constexpr std::size_t kSlotsPerChunk = 4096;
struct SlotChunk {
  void* slots[kSlotsPerChunk];
  SlotChunk* next;
};

struct UserRoots {
  PreemptibleMutex lock;
  SlotChunk* chunks = nullptr;
  void** free = nullptr;
  RootRange* ranges = nullptr;  // AddRoots, in metadata memory
  std::size_t nranges = 0;
  std::size_t capranges = 0;
};

UserRoots& Roots() {
  static auto* r = ::new (os::MapMetadata(sizeof(UserRoots))) UserRoots();
  return *r;
}

}  // namespace

void RootRangeList::Reserve(std::size_t n) {
  if (size_ + n <= capacity_) return;
  std::size_t cap = capacity_ == 0 ? 1024 : capacity_;
  while (cap < size_ + n) cap *= 2;
  void* p = os::MapMetadata(cap * sizeof(RootRange));
  if (p == nullptr) throw std::bad_alloc();
  if (ranges_ != nullptr) {
    std::memcpy(p, ranges_, size_ * sizeof(RootRange));
    os::Unmap(ranges_, capacity_ * sizeof(RootRange));
  }
  ranges_ = static_cast<RootRange*>(p);
  capacity_ = cap;
}

void RootRangeList::Add(std::uintptr_t lo, std::uintptr_t hi) {
  lo = (lo + sizeof(void*) - 1) & ~(sizeof(void*) - 1);
  hi &= ~(sizeof(void*) - 1);
  if (hi <= lo) return;
  if (size_ == capacity_) {
    const std::size_t cap = capacity_ == 0 ? 1024 : capacity_ * 2;
    void* p = os::MapMetadata(cap * sizeof(RootRange));
    if (p == nullptr) throw std::bad_alloc();
    if (ranges_ != nullptr) {
      std::memcpy(p, ranges_, size_ * sizeof(RootRange));
      os::Unmap(ranges_, capacity_ * sizeof(RootRange));
    }
    ranges_ = static_cast<RootRange*>(p);
    capacity_ = cap;
  }
  ranges_[size_++] = RootRange{lo, hi};
}

void CollectDataSegments(RootRangeList& out) {
  dl_iterate_phdr(
      [](dl_phdr_info* info, std::size_t /*size*/, void* data) -> int {
        auto* list = static_cast<RootRangeList*>(data);
        for (int i = 0; i < info->dlpi_phnum; ++i) {
          const ElfW(Phdr)& ph = info->dlpi_phdr[i];
          if (ph.p_type != PT_LOAD || (ph.p_flags & PF_W) == 0) continue;
          const std::uintptr_t lo = info->dlpi_addr + ph.p_vaddr;
          const std::uintptr_t hi = lo + ph.p_memsz;
          for (std::uintptr_t p = lo; p < hi; p += kChunkBytes) {
            list->Add(p, std::min(hi, p + kChunkBytes));
          }
        }
        return 0;
      },
      &out);
}

namespace {

// Go has no dlclose; bdwgc's GC_dlclose wrapper is the model (it takes the allocation lock).
constinit std::atomic<int> g_dl_hold{0};       // a collection holds its list of segments
constinit std::atomic<int> g_dl_in_flight{0};  // dlclose calls past the hold's check
constinit thread_local int t_in_dlclose __attribute__((tls_model("initial-exec"))) = 0;

using DlcloseFn = int (*)(void*);
constinit std::atomic<DlcloseFn> g_real_dlclose{nullptr};

[[gnu::constructor(101)]] void FindRealDlclose() {
  g_real_dlclose.store(reinterpret_cast<DlcloseFn>(dlsym(RTLD_NEXT, "dlclose")),
                       std::memory_order_release);
}

}  // namespace

bool HoldDlclose() {
  // seq_cst, both sides (Dekker): either the collector sees the dlclose in flight, or the
  // dlclose sees the hold and waits.
  g_dl_hold.store(1, std::memory_order_seq_cst);
  // A dlclose on this very thread (its library's destructor started this collection) has
  // not unmapped anything yet and cannot while this runs.
  for (int i = 0; i < 5000; ++i) {
    if (g_dl_in_flight.load(std::memory_order_seq_cst) <= t_in_dlclose) return true;
    NonCancelableSleep(20000);
  }
  return false;
}

void ReleaseDlclose() { g_dl_hold.store(0, std::memory_order_release); }

void DropUnmappedDataSegments(RootRangeList& roots) {
  // Marks each range that some run of touching readable mappings holds whole, in bit 0 of
  // its (word-aligned) start, then keeps the marked ones.
  struct Run {
    RootRangeList* roots = nullptr;
    std::uintptr_t lo = 0;
    std::uintptr_t hi = 0;
    void Close() {
      for (std::size_t i = 0; i < roots->Size(); ++i) {
        RootRange& r = roots->At(i);
        if ((r.lo & ~std::uintptr_t{1}) >= lo && r.hi <= hi) r.lo |= 1;
      }
      lo = hi = 0;
    }
  } run{&roots};
  const bool read = ForEachMapping(
      [](void* ctx, std::uintptr_t lo, std::uintptr_t hi, bool readable) {
        auto& run = *static_cast<Run*>(ctx);
        if (!readable || lo != run.hi) run.Close();
        if (readable) {
          if (run.hi == 0) run.lo = lo;
          run.hi = hi;
        }
        return true;
      },
      &run);
  run.Close();
  if (!read) {
    roots.Filter([](const RootRange&) { return false; });  // nothing known to be mapped
    return;
  }
  roots.Filter([](const RootRange& r) { return (r.lo & 1) != 0; });
  for (std::size_t i = 0; i < roots.Size(); ++i) roots.At(i).lo &= ~std::uintptr_t{1};
}

void ResetUserRootsAfterFork() { std::construct_at(&Roots().lock); }

void LockUserRoots() { Roots().lock.lock(); }
void UnlockUserRoots() { Roots().lock.unlock(); }

void CollectUserRoots(RootRangeList& out) {
  UserRoots& r = Roots();
  for (SlotChunk* c = r.chunks; c != nullptr; c = c->next) {
    const auto lo = reinterpret_cast<std::uintptr_t>(&c->slots[0]);
    out.Add(lo, lo + sizeof(c->slots));
  }
  for (std::size_t i = 0; i < r.nranges; ++i) out.Add(r.ranges[i].lo, r.ranges[i].hi);
}

// Go: isGoPointerWithoutSpan: the data and bss segments of every loaded module.
bool InDataSegment(const void* p) {
  struct Query {
    std::uintptr_t addr;
    bool found;
  } q{reinterpret_cast<std::uintptr_t>(p), false};
  dl_iterate_phdr(
      [](dl_phdr_info* info, std::size_t /*size*/, void* data) -> int {
        auto* q = static_cast<Query*>(data);
        for (int i = 0; i < info->dlpi_phnum; ++i) {
          const ElfW(Phdr)& ph = info->dlpi_phdr[i];
          if (ph.p_type != PT_LOAD || (ph.p_flags & PF_W) == 0) continue;
          const std::uintptr_t lo = info->dlpi_addr + ph.p_vaddr;
          if (q->addr >= lo && q->addr < lo + ph.p_memsz) {
            q->found = true;
            return 1;
          }
        }
        return 0;
      },
      &q);
  return q.found;
}

}  // namespace gofin::internal

extern "C" int dlclose(void* handle) {
  using namespace gofin::internal;
  DlcloseFn real = g_real_dlclose.load(std::memory_order_acquire);
  if (real == nullptr) {
    FindRealDlclose();
    real = g_real_dlclose.load(std::memory_order_acquire);
  }
  for (;;) {
    g_dl_in_flight.fetch_add(1, std::memory_order_seq_cst);
    if (g_dl_hold.load(std::memory_order_seq_cst) == 0) break;
    g_dl_in_flight.fetch_sub(1, std::memory_order_seq_cst);
    // A registered thread stays stoppable here (nanosleep takes the stop signal everywhere).
    while (g_dl_hold.load(std::memory_order_acquire) != 0) NonCancelableSleep(50000);
  }
  ++t_in_dlclose;
  const int result = real(handle);
  --t_in_dlclose;
  g_dl_in_flight.fetch_sub(1, std::memory_order_release);
  return result;
}

namespace gofin {

void AddRoots(const void* begin, const void* end) {
  auto& r = internal::Roots();
  std::lock_guard lock(r.lock);
  if (r.nranges == r.capranges) {
    const std::size_t cap = r.capranges == 0 ? 64 : r.capranges * 2;
    void* p = internal::os::MapMetadata(cap * sizeof(internal::RootRange));
    if (p == nullptr) throw std::bad_alloc();
    if (r.ranges != nullptr) {
      std::memcpy(p, r.ranges, r.nranges * sizeof(internal::RootRange));
      internal::os::Unmap(r.ranges, r.capranges * sizeof(internal::RootRange));
    }
    r.ranges = static_cast<internal::RootRange*>(p);
    r.capranges = cap;
  }
  r.ranges[r.nranges++] = internal::RootRange{reinterpret_cast<std::uintptr_t>(begin),
                                              reinterpret_cast<std::uintptr_t>(end)};
}

void RemoveRoots(const void* begin, const void* end) {
  auto& r = internal::Roots();
  std::lock_guard lock(r.lock);
  const auto lo = reinterpret_cast<std::uintptr_t>(begin);
  const auto hi = reinterpret_cast<std::uintptr_t>(end);
  for (std::size_t i = 0; i < r.nranges; ++i) {
    if (r.ranges[i].lo == lo && r.ranges[i].hi == hi) {
      r.ranges[i] = r.ranges[--r.nranges];
      return;
    }
  }
}

namespace detail {

void** AcquireRootSlot() {
  // A thread that holds a root is a mutator: it must stop while the marker reads the slot.
  internal::RegisterThread();
  auto& r = internal::Roots();
  std::lock_guard lock(r.lock);
  if (r.free == nullptr) {
    void* mem = internal::os::MapMetadata(sizeof(internal::SlotChunk));
    if (mem == nullptr) throw std::bad_alloc();
    auto* c = static_cast<internal::SlotChunk*>(mem);
    for (std::size_t i = 0; i + 1 < internal::kSlotsPerChunk; ++i) c->slots[i] = &c->slots[i + 1];
    c->slots[internal::kSlotsPerChunk - 1] = nullptr;
    c->next = r.chunks;
    r.chunks = c;
    r.free = &c->slots[0];
  }
  void** slot = r.free;
  r.free = static_cast<void**>(*slot);
  *slot = nullptr;
  return slot;
}

void ReleaseRootSlot(void** slot) noexcept {
  auto& r = internal::Roots();
  std::lock_guard lock(r.lock);
  *slot = static_cast<void*>(r.free);
  r.free = slot;
}

}  // namespace detail
}  // namespace gofin
