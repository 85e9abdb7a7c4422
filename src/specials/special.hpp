#pragma once
// Go: special, specialfinalizer, specialprofile, specialCleanup, specialWeakHandle (mheap.go).
// Records attached to heap objects, kept per span in a list sorted by (offset, kind) under the
// span's lock. The sweeper consults them before freeing an object, the marker before deciding
// what lives. This layer is generic: each kind's behaviour (what to mark, what to do when the
// object dies) is registered by the layer that owns the kind.
#include <cstddef>
#include <cstdint>

namespace gofin::internal {

struct Span;
class MarkWorker;

// Go: _KindSpecialFinalizer, ... The order is the sort order within one offset.
enum class SpecialKind : std::uint8_t {
  kFinalizer = 1,
  kWeakHandle = 2,
  kProfile = 3,
  kCleanup = 4,
  kCheckFinalizer = 5,
};
inline constexpr std::size_t kNumSpecialKinds = 6;

// Go: special
struct Special {
  Special* next = nullptr;
  std::uint32_t offset = 0;  // from the span's start: a tiny block holds several
  SpecialKind kind{};
};

// Go: specialfinalizer (fn, nret, fint, ot). invoke(ctx, p) runs the finalizer; ctx is the
// scanned GC block holding a stateful callable (what it captures stays alive), a plain
// function's address, or null for a stateless one.
struct SpecialFinalizer : Special {
  void (*invoke)(void* ctx, void* obj) = nullptr;
  void* ctx = nullptr;
};

// Go: specialCleanup (1.24). box is the scanned GC block holding the callable and its
// argument (cleanup/add_cleanup.cpp), marked while the record exists.
struct SpecialCleanup : Special {
  void* box = nullptr;
  std::uint64_t id = 0;
};

// Go: specialWeakHandle (1.24). handle is a pointer-free GC block holding the object's
// address, zeroed by the sweep that finds the object dead (weak/weak_handle.cpp).
struct SpecialWeakHandle : Special {
  void** handle = nullptr;
};

// Go: specialCheckFinalizer (1.25, GODEBUG=checkfinalizers): where a finalizer (cleanup_id 0)
// or a cleanup was registered, for the report (gc/check_finalizers.hpp). Only made while the
// check is on; freed with the object.
struct SpecialCheckFinalizer : Special {
  std::uint64_t cleanup_id = 0;
  const char* file = nullptr;
  const char* function = nullptr;
  const void* type = nullptr;  // the std::type_info of the registration's T
  std::uint32_t line = 0;
};

// Go: specialprofile. Reserved for a heap profiler.
struct SpecialProfile : Special {
  void* bucket = nullptr;
};

// What a kind does at the collector's two moments.
struct SpecialKindOps {
  // Go: markrootSpans. Called with the world stopped for each record of this kind.
  void (*mark)(Special* s, std::uintptr_t object_base, MarkWorker& w) = nullptr;
  // Go: freeSpecial. The sweeper found the object dead: take over or drop the record's
  // payload. `p` is the exact address the record was set for. The record is freed after.
  void (*object_dead)(Special* s, void* p, std::size_t object_size) = nullptr;
  // The same for all of one span's dead records of the kind at once (linked by next; each
  // record's object is at span_start + offset), instead of object_dead. It owns the records
  // and frees each (FreeSpecialRecord) once done with it: one walk over the list.
  void (*objects_dead)(Special* list, std::uintptr_t span_start, std::size_t object_size) = nullptr;
  // True if a record of this kind keeps its object alive for one more cycle (finalizers).
  bool resurrects = false;
  // True if a record of this kind is handed to object_dead also when another record
  // resurrects the object (Go clears weak handles before the finalizer runs).
  bool dies_with_resurrection = false;
  // True if one object (offset) may carry several records of this kind (cleanups).
  bool multiple = false;
};
void RegisterSpecialKind(SpecialKind kind, const SpecialKindOps& ops);

// Records, from per-kind fixalloc under the specials lock, through a per-thread cache.
Special* NewSpecial(SpecialKind kind);
void FreeSpecialRecord(Special* s);

// Go: addspecial. Attaches s to the object containing p (a heap address), unless the
// object's slot is free (see ObjectIsFree) or it already has a record of that kind at that
// exact address.
enum class AddResult : std::uint8_t { kAdded, kAlreadySet, kObjectFree, kNotInHeap, kNotAtStart };
AddResult AddSpecialToAllocated(const void* p, Special* s);
// Which pointers inside an object (not at its first byte) a record may be attached at.
enum class InnerPointers : std::uint8_t {
  kNone,
  kInTinyBlock,  // only inside a block of the tiny allocator (SetFinalizer on a tiny type)
  kAny,          // anywhere (AddCleanup, weak handles)
};
// The same, after SetFinalizer's checks of p in Go's order, answered by the same span lookup:
// kNotInHeap when p is in no heap span, kNotAtStart when p is not the first byte of its object
// and `inner` does not allow it there.
AddResult AddSpecialChecked(const void* p, Special* s, InnerPointers inner);
// AddSpecialToAllocated(p, s) == kAdded.
bool AddSpecial(const void* p, Special* s);
// Go: removespecial. Unlinks and returns the record of `kind` at exactly p, or nullptr.
Special* RemoveSpecial(const void* p, SpecialKind kind);
// The same for the first such record that `match` accepts (Go: Cleanup.Stop's search by id).
Special* RemoveSpecialIf(const void* p, SpecialKind kind,
                         bool (*match)(const Special* s, const void* ctx), const void* ctx);
// Calls fn(record, ctx) under the span's specials lock for the first record of `kind` at
// exactly p, with the span swept; false (fn not called) when there is none.
bool VisitSpecial(const void* p, SpecialKind kind, void (*fn)(Special* s, void* ctx), void* ctx);
// True if p's slot holds no object: freed by an earlier sweep (a dangling pointer), or dead
// and kept only for its queued destructor (a destructor touching a dead neighbour). Nothing
// may be attached to it: the record would pass to the slot's next object.
bool ObjectIsFree(const void* p);
// True if the object at exactly p has a record of `kind`.
bool HasSpecial(const void* p, SpecialKind kind);

// Records of `kind` taken from its fixalloc and not given back to it: attached, cached by a
// thread, or waiting in the shared chains. For tests: it stays bounded when threads that
// used records exit.
std::size_t SpecialRecordsOutstanding(SpecialKind kind);

// Installs the marker and sweeper hooks; idempotent.
void InitSpecials();

// Calls fn(object_address, span, record) for every record, with the world stopped.
void ForEachSpecialStopped(void (*fn)(std::uintptr_t p, Span* s, Special* sp, void* ctx),
                           void* ctx);

}  // namespace gofin::internal
