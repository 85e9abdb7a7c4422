#include "heap/os_memory.hpp"

#include <sys/mman.h>
#include <sys/sysinfo.h>

#include <cstdint>

namespace gofin::internal::os {

void* Reserve(std::size_t size, std::size_t align, void* hint) {
  // Ask for the hint first: a heap in one place keeps the collector's range check tight.
  if (hint != nullptr) {
    void* p = mmap(hint, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == hint) return p;
    if (p != MAP_FAILED) munmap(p, size);
  }
  // Over-reserve and trim to get the alignment.
  const std::size_t span = size + align;
  void* raw = mmap(nullptr, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const auto base = reinterpret_cast<std::uintptr_t>(raw);
  const std::uintptr_t aligned = (base + align - 1) & ~(std::uintptr_t{align} - 1);
  if (aligned > base) munmap(raw, aligned - base);
  const std::uintptr_t end = base + span;
  if (end > aligned + size) munmap(reinterpret_cast<void*>(aligned + size), end - aligned - size);
  return reinterpret_cast<void*>(aligned);
}

bool Commit(void* addr, std::size_t size) {
  // No MADV_HUGEPAGE (Go 1.19's sysHugePage): measured here it did not speed marking up
  // measurably, and it grew RSS by a third on the finalizer workloads (a touched 2 MiB page is
  // resident whole, and the scavenger's 8 KiB releases split it).
  return mprotect(addr, size, PROT_READ | PROT_WRITE) == 0;
}

void Release(void* addr, std::size_t size) { madvise(addr, size, MADV_DONTNEED); }

void* MapMetadata(std::size_t size) {
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? nullptr : p;
}

void* MapMetadataPopulated(std::size_t size) {
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE,
                 -1, 0);
  return p == MAP_FAILED ? nullptr : p;
}

void Unmap(void* addr, std::size_t size) { munmap(addr, size); }

std::size_t PhysicalAndSwapBytes() {
  static const std::size_t bytes = [] {
    struct sysinfo info {};
    if (sysinfo(&info) != 0) return SIZE_MAX;
    const auto unit = static_cast<std::size_t>(info.mem_unit == 0 ? 1 : info.mem_unit);
    return (static_cast<std::size_t>(info.totalram) + static_cast<std::size_t>(info.totalswap)) *
           unit;
  }();
  return bytes;
}

}  // namespace gofin::internal::os
