#include "profile/mem_profile.hpp"

#include <unwind.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>

#include "gc/collector.hpp"
#include "gc/preemptible_mutex.hpp"
#include "gofin/profile.hpp"
#include "heap/hooks.hpp"
#include "heap/options.hpp"
#include "heap/os_memory.hpp"
#include "heap/safepoint.hpp"
#include "heap/sampling.hpp"
#include "specials/special.hpp"

namespace gofin::internal {

namespace {

using profile::MemRecord;

// Go: maxStack. Frames kept per sampled allocation, gofin's own included.
constexpr int kMaxStack = 64;

// Go: memRecordCycle.
struct CycleCounts {
  std::atomic<std::int64_t> allocs{0};
  std::atomic<std::int64_t> frees{0};
  std::atomic<std::int64_t> alloc_bytes{0};
  std::atomic<std::int64_t> free_bytes{0};
};

// Go: bucket with its memRecord. Never freed (Go's buckets live in persistentalloc too).
struct Bucket {
  Bucket* next_in_chain = nullptr;  // the hash chain
  Bucket* next_all = nullptr;       // every bucket, for flushes and reads
  std::uint64_t hash = 0;
  std::size_t size = 0;
  // Published counts (Go: memRecord.active), under g_active_lock.
  std::int64_t allocs = 0;
  std::int64_t frees = 0;
  std::int64_t alloc_bytes = 0;
  std::int64_t free_bytes = 0;
  std::array<CycleCounts, 3> future;
  int nstk = 0;
  std::uintptr_t stk[1] = {};  // NOLINT(modernize-avoid-c-arrays): nstk entries follow
};

// Go: buckhash. Lookups walk the chains without a lock (acquire), insertions take
// g_insert_lock; buckets are only ever added. The table is mapped at initialization, not a
// static array: the collector scans the data and bss segments as roots at every cycle, and
// 512 KiB of bucket pointers (which are not heap pointers) would be scanned for nothing.
constexpr std::size_t kHashSize = std::size_t{1} << 16;
using HashTable = std::array<std::atomic<Bucket*>, kHashSize>;
constinit std::atomic<HashTable*> g_hash{nullptr};
constinit std::atomic<Bucket*> g_all{nullptr};
// Preemptible (gc/preemptible_mutex.hpp): a thread waiting for these stays stoppable.
constinit PreemptibleMutex g_insert_lock;
// Bucket memory: carved from metadata chunks under g_insert_lock.
std::uintptr_t g_chunk_next = 0;
std::uintptr_t g_chunk_end = 0;

// Go: profMemActiveLock. Taken by flushes and reads; never inside a stop.
constinit PreemptibleMutex g_active_lock;

// Go: mProfCycleHolder: the cycle number times two, plus one once it was flushed.
constinit std::atomic<std::uint32_t> g_cycle{0};

std::uint32_t Cycle() { return g_cycle.load(std::memory_order_acquire) >> 1; }

std::uint64_t HashStack(const std::uintptr_t* pcs, int n, std::size_t size) {
  std::uint64_t h = 0xcbf29ce484222325ULL ^ size;
  for (int i = 0; i < n; ++i) {
    h ^= pcs[i];
    h *= 0x100000001b3ULL;
    h ^= h >> 29;
  }
  return h;
}

Bucket* NewBucket(const std::uintptr_t* pcs, int n, std::size_t size, std::uint64_t hash) {
  const std::size_t bytes =
      (sizeof(Bucket) + static_cast<std::size_t>(n) * sizeof(std::uintptr_t) + 15) & ~15U;
  if (g_chunk_next + bytes > g_chunk_end) {
    constexpr std::size_t kChunk = std::size_t{1} << 20;
    void* p = os::MapMetadata(kChunk);
    if (p == nullptr) return nullptr;
    g_chunk_next = reinterpret_cast<std::uintptr_t>(p);
    g_chunk_end = g_chunk_next + kChunk;
  }
  auto* b = ::new (reinterpret_cast<void*>(g_chunk_next)) Bucket();
  g_chunk_next += bytes;
  b->hash = hash;
  b->size = size;
  b->nstk = n;
  std::memcpy(b->stk, pcs, static_cast<std::size_t>(n) * sizeof(std::uintptr_t));
  return b;
}

// Go: stkbucket(memProfile, size, stk, alloc=true).
Bucket* FindOrAddBucket(const std::uintptr_t* pcs, int n, std::size_t size) {
  const std::uint64_t h = HashStack(pcs, n, size);
  HashTable* table = g_hash.load(std::memory_order_acquire);
  if (table == nullptr) return nullptr;
  std::atomic<Bucket*>& head = (*table)[h & (kHashSize - 1)];
  auto matches = [&](const Bucket* b) {
    return b->hash == h && b->size == size && b->nstk == n &&
           std::memcmp(b->stk, pcs, static_cast<std::size_t>(n) * sizeof(std::uintptr_t)) == 0;
  };
  for (Bucket* b = head.load(std::memory_order_acquire); b != nullptr; b = b->next_in_chain) {
    if (matches(b)) return b;
  }
  std::lock_guard lock(g_insert_lock);
  for (Bucket* b = head.load(std::memory_order_relaxed); b != nullptr; b = b->next_in_chain) {
    if (matches(b)) return b;
  }
  Bucket* b = NewBucket(pcs, n, size, h);
  if (b == nullptr) return nullptr;
  b->next_in_chain = head.load(std::memory_order_relaxed);
  b->next_all = g_all.load(std::memory_order_relaxed);
  // release: a reader that finds the bucket sees it filled in.
  head.store(b, std::memory_order_release);
  g_all.store(b, std::memory_order_release);
  return b;
}

struct Unwind {
  std::uintptr_t* pcs;
  int n;
};

_Unwind_Reason_Code OneFrame(_Unwind_Context* ctx, void* arg) {
  auto* u = static_cast<Unwind*>(arg);
  const std::uintptr_t ip = _Unwind_GetIP(ctx);
  if (ip == 0) return _URC_END_OF_STACK;
  u->pcs[u->n++] = ip;
  return u->n < kMaxStack ? _URC_NO_REASON : _URC_END_OF_STACK;
}

// Go: callers. The unwinder reads the .eh_frame tables, so it needs no frame pointers (gofin
// and most C++ code are built without), allocates nothing, and with glibc 2.35+ takes no
// lock to find a frame's object (_dl_find_object).
[[gnu::noinline]] int CaptureStack(std::uintptr_t* pcs) {
  Unwind u{pcs, 0};
  _Unwind_Backtrace(&OneFrame, &u);
  return u.n;
}

// Go: mProf_Free. The sweep found the object of a profile record dead.
void ProfileRecordsDead(Special* list, std::uintptr_t /*span_start*/, std::size_t object_size) {
  const std::uint32_t index = (Cycle() + 1) % 3;
  while (list != nullptr) {
    Special* next = list->next;
    if (auto* b = static_cast<Bucket*>(static_cast<SpecialProfile*>(list)->bucket)) {
      CycleCounts& c = b->future[index];
      c.frees.fetch_add(1, std::memory_order_relaxed);
      c.free_bytes.fetch_add(static_cast<std::int64_t>(object_size), std::memory_order_relaxed);
    }
    FreeSpecialRecord(list);
    list = next;
  }
}

// Go: mProf_FlushLocked. Moves future[index] into the published counts.
void FlushLocked(std::uint32_t index) {
  for (Bucket* b = g_all.load(std::memory_order_acquire); b != nullptr; b = b->next_all) {
    CycleCounts& c = b->future[index];
    b->allocs += c.allocs.exchange(0, std::memory_order_relaxed);
    b->frees += c.frees.exchange(0, std::memory_order_relaxed);
    b->alloc_bytes += c.alloc_bytes.exchange(0, std::memory_order_relaxed);
    b->free_bytes += c.free_bytes.exchange(0, std::memory_order_relaxed);
  }
}

// Go: mProf_NextCycle, with the world stopped: no lock, one store.
void NextCycle() {
  const std::uint32_t c = g_cycle.load(std::memory_order_relaxed) >> 1;
  g_cycle.store((c + 1) << 1, std::memory_order_release);
}

// Go: mProf_Flush, right after the restart: publishes the cycle mark termination closed.
void Flush() {
  std::lock_guard lock(g_active_lock);
  const std::uint32_t v = g_cycle.load(std::memory_order_acquire);
  if ((v & 1) != 0) return;  // already flushed
  FlushLocked((v >> 1) % 3);
  g_cycle.store(v | 1, std::memory_order_release);
}

// Go: mProf_PostSweep: the sweep of the cycle is complete, so its frees (and the allocations
// made before its mark) become visible now, without advancing the cycle.
void PostSweep() {
  std::lock_guard lock(g_active_lock);
  FlushLocked((Cycle() + 1) % 3);
}

void WriteProfileAtExit() {
  const std::string path = EnvPath("GOFIN_MEMPROFILE");
  if (path.empty()) return;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) {
    std::fprintf(stderr, "gofin: GOFIN_MEMPROFILE: cannot write %s: %s\n", path.c_str(),
                 std::strerror(errno));
    return;
  }
  try {
    gofin::pprof::WriteHeapProfile(out);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gofin: GOFIN_MEMPROFILE: %s\n", e.what());
  }
}

constinit std::atomic<bool> g_ready{false};
constinit PreemptibleMutex g_init_lock;

}  // namespace

void InitMemProfile() {
  if (g_ready.load(std::memory_order_acquire)) [[likely]]
    return;
  std::lock_guard lock(g_init_lock);
  if (g_ready.load(std::memory_order_relaxed)) return;
  // Zero-filled, as the table's empty heads must be; without it no sample is recorded.
  if (void* t = os::MapMetadata(sizeof(HashTable))) {
    g_hash.store(static_cast<HashTable*>(t), std::memory_order_release);
  }
  SpecialKindOps ops;
  ops.objects_dead = &ProfileRecordsDead;
  RegisterSpecialKind(SpecialKind::kProfile, ops);
  InitSpecials();
  CycleHooks hooks;
  hooks.mark_done = &NextCycle;
  hooks.world_restarted = &Flush;
  hooks.sweep_done = &PostSweep;
  AddCycleHooks(hooks);
  if (const char* path = EnvRaw("GOFIN_MEMPROFILE"); path != nullptr && *path != '\0') {
    std::atexit(&WriteProfileAtExit);
  }
  g_ready.store(true, std::memory_order_release);
}

// Go: mProf_Malloc.
void ProfileAlloc(void* p, std::size_t size) {
  InitMemProfile();
  std::array<std::uintptr_t, kMaxStack> pcs{};
  const int n = CaptureStack(pcs.data());
  Bucket* b = FindOrAddBucket(pcs.data(), n, size);
  if (b == nullptr) return;  // no memory for the bucket: the sample is dropped
  {
    // No stop between reading the cycle and counting: mark termination cannot move the
    // cycle under it, so the allocation lands in the cycle it was made in.
    const NoPreempt np;
    CycleCounts& c = b->future[(Cycle() + 2) % 3];
    c.allocs.fetch_add(1, std::memory_order_relaxed);
    c.alloc_bytes.fetch_add(static_cast<std::int64_t>(size), std::memory_order_relaxed);
  }
  auto* s = static_cast<SpecialProfile*>(NewSpecial(SpecialKind::kProfile));
  s->bucket = b;
  // Go: setprofilebucket. The object is allocated and held here, so the record attaches.
  if (AddSpecialToAllocated(p, s) != AddResult::kAdded) FreeSpecialRecord(s);
  asm volatile("" : : "r"(p) : "memory");
}

namespace profile {

std::vector<MemRecord> ReadMemProfile() {
  InitMemProfile();
  std::vector<MemRecord> out;
  std::lock_guard lock(g_active_lock);
  for (Bucket* b = g_all.load(std::memory_order_acquire); b != nullptr; b = b->next_all) {
    MemRecord r;
    r.alloc_objects = b->allocs;
    r.free_objects = b->frees;
    r.alloc_bytes = b->alloc_bytes;
    r.free_bytes = b->free_bytes;
    r.stack.assign(b->stk, b->stk + b->nstk);
    out.push_back(std::move(r));
  }
  return out;
}

}  // namespace profile

}  // namespace gofin::internal

namespace gofin {

int SetMemProfileRate(int bytes) { return internal::SetMemProfileRate(bytes); }

namespace pprof {

void WriteHeapProfile(std::ostream& out) {
  const std::vector<internal::profile::MemRecord> records = internal::profile::ReadMemProfile();
  internal::profile::WriteHeapProto(out, records, internal::MemProfileRate());
}

}  // namespace pprof

}  // namespace gofin
