#pragma once
// Go: mallocgc (malloc.go). The allocator's entry points; the public templates in
// include/gofin/alloc.hpp call these.
#include <cstddef>

#include "heap/span.hpp"

namespace gofin::internal {

// Go: findObject. The object containing p: its span, index and base; span == nullptr when p
// is not inside an allocated heap object.
struct ObjectRef {
  Span* span = nullptr;
  std::size_t index = 0;
  std::uintptr_t base = 0;
};
ObjectRef FindObject(const void* p);

}  // namespace gofin::internal

namespace gofin::internal {
// Size of an allocation for `size` bytes at alignment `align` (> 16): the smallest size class
// whose object size is a multiple of align (span bases are page-aligned), or size itself
// (a large object, page-aligned) when no small class fits.
std::size_t AlignedAllocSize(std::size_t size, std::size_t align);
}  // namespace gofin::internal
