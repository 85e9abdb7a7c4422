#include "specials/check_finalizers.hpp"

#include <cxxabi.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <gofin/cleanup.hpp>
#include <gofin/finalizer.hpp>
#include <string>
#include <typeinfo>

#include "heap/heap.hpp"
#include "heap/options.hpp"
#include "heap/os_memory.hpp"
#include "heap/size_classes.hpp"
#include "specials/special.hpp"

namespace gofin::detail {
constinit std::atomic<bool> g_check_finalizers{false};
}  // namespace gofin::detail

namespace gofin::internal {

namespace {

constexpr int kReportCycle = 1;
constexpr int kReportTiny = 2;
constexpr std::size_t kMaxReports = 50;  // Go's limit

struct Report {
  std::uintptr_t p = 0;
  std::uintptr_t record = 0;
  SpecialKind kind{};
  int issues = 0;
  // Copied from the registration's record: static strings and a type_info.
  const char* file = nullptr;
  const char* function = nullptr;
  const void* type = nullptr;
  std::uint32_t line = 0;
};

// Written with the world stopped, read after it restarted, both under the collector's lock.
struct Findings {
  Report reports[kMaxReports];
  std::size_t n = 0;
  bool more = false;
};
Findings g_findings;

// Memory for the walk, mapped (never malloc'd) and kept from one check to the next.
template <class T>
class MappedArray {
 public:
  [[nodiscard]] T* data() const { return data_; }
  [[nodiscard]] std::size_t size() const { return size_; }
  // Grows to at least n entries, keeping the contents; false when the OS refuses.
  bool Reserve(std::size_t n) {
    if (n <= size_) return true;
    std::size_t cap = size_ == 0 ? 4096 : size_;
    while (cap < n) cap *= 2;
    auto* fresh = static_cast<T*>(os::MapMetadata(cap * sizeof(T)));
    if (fresh == nullptr) return false;
    if (data_ != nullptr) {
      std::memcpy(fresh, data_, size_ * sizeof(T));
      os::Unmap(data_, size_ * sizeof(T));
    }
    data_ = fresh;
    size_ = cap;
    return true;
  }

 private:
  T* data_ = nullptr;
  std::size_t size_ = 0;
};

// An open-addressing set of object bases; an entry belongs to the current walk when its top
// 16 bits are the walk's generation (heap addresses use 47 bits), so starting a walk is O(1).
class Visited {
 public:
  void NewWalk() {
    if (++gen_ == 0) {  // wrapped: forget every old entry for real
      if (slots_ != nullptr) std::memset(slots_, 0, size_ * 8);
      gen_ = 1;
    }
    count_ = 0;
  }
  // True if p was not in the set (it is now); false also when no memory could be had.
  bool Insert(std::uintptr_t p) {
    if ((count_ + 1) * 2 > size_ && !Grow()) return false;
    const std::uint64_t tagged = p | (std::uint64_t{gen_} << 48);
    const std::size_t mask = size_ - 1;
    for (std::size_t i = Hash(p) & mask;; i = (i + 1) & mask) {
      std::uint64_t& s = slots_[i];
      if (s == tagged) return false;
      if ((s >> 48) != gen_) {
        s = tagged;
        ++count_;
        return true;
      }
    }
  }

 private:
  static std::size_t Hash(std::uintptr_t p) { return (p >> 4) * 0x9e3779b97f4a7c15ULL >> 20; }
  // Doubles the table and moves this walk's entries over; false when the OS refuses.
  bool Grow() {
    const std::size_t old_size = size_;
    std::uint64_t* old = slots_;
    const std::size_t size = old_size == 0 ? 4096 : old_size * 2;
    auto* fresh = static_cast<std::uint64_t*>(os::MapMetadata(size * 8));  // zeroed
    if (fresh == nullptr) return false;
    slots_ = fresh;
    size_ = size;
    count_ = 0;
    for (std::size_t i = 0; i < old_size; ++i) {
      if ((old[i] >> 48) == gen_) (void)Insert(old[i] & ((std::uint64_t{1} << 48) - 1));
    }
    if (old != nullptr) os::Unmap(old, old_size * 8);
    return true;
  }

  std::uint64_t* slots_ = nullptr;
  std::size_t size_ = 0;
  std::size_t count_ = 0;
  std::uint16_t gen_ = 0;
};

Visited g_visited;
MappedArray<std::uintptr_t> g_stack;

// The allocated object containing p, or 0.
std::uintptr_t ObjectAt(std::uintptr_t p, const Span** span) {
  Span* s = g_heap.arenas.SpanOfHeap(p);
  if (s == nullptr || s->state != SpanState::kInUse || !s->Contains(p)) return 0;
  const std::size_t i = s->ObjIndex(p);
  if (!s->IsAllocated(i)) return 0;
  *span = s;
  return s->ObjBase(i);
}

// Whether an object in [lo, hi) is reachable from the words of [from, to) (and what they
// reach), skipping words into [skip_lo, skip_hi). The walk is conservative, like the marker.
class Walk {
 public:
  Walk(std::uintptr_t lo, std::uintptr_t hi) : lo_(lo), hi_(hi) { g_visited.NewWalk(); }
  // Scans [from, to); true once the target is found.
  bool ScanRange(std::uintptr_t from, std::uintptr_t to, std::uintptr_t skip_lo = 0,
                 std::uintptr_t skip_hi = 0) {
    for (std::uintptr_t a = from; a + 8 <= to; a += 8) {
      std::uintptr_t w = 0;
      std::memcpy(&w, reinterpret_cast<const void*>(a), 8);
      if (w >= skip_lo && w < skip_hi) continue;
      if (w >= lo_ && w < hi_) return true;
      const Span* s = nullptr;
      const std::uintptr_t base = ObjectAt(w, &s);
      if (base == 0 || s->spanclass.NoScan() || !g_visited.Insert(base)) continue;
      if (!g_stack.Reserve(depth_ + 1)) return false;  // out of memory: no finding
      g_stack.data()[depth_++] = base;
    }
    return false;
  }
  bool Drain() {
    while (depth_ > 0) {
      const std::uintptr_t base = g_stack.data()[--depth_];
      const Span* s = nullptr;
      if (ObjectAt(base, &s) != base) continue;
      if (ScanRange(base, base + s->elemsize)) return true;
    }
    return false;
  }

 private:
  std::uintptr_t lo_;
  std::uintptr_t hi_;
  std::size_t depth_ = 0;
};

// The registration context of record sp on the object at p (same offset, same cleanup id).
const SpecialCheckFinalizer* ContextOf(std::uintptr_t p, const Span* s, const Special* sp) {
  const std::uint64_t id =
      sp->kind == SpecialKind::kCleanup ? static_cast<const SpecialCleanup*>(sp)->id : 0;
  const SpecialCheckFinalizer* found = nullptr;
  for (Special* x = s->special_heads[s->ObjIndex(p)]; x != nullptr; x = x->next) {
    if (x->kind != SpecialKind::kCheckFinalizer || x->offset != sp->offset) continue;
    const auto* c = static_cast<const SpecialCheckFinalizer*>(x);
    if (c->cleanup_id == id) found = c;  // the latest registration
  }
  return found;
}

void CheckOne(std::uintptr_t p, Span* s, Special* sp, void* /*ctx*/) {
  if (sp->kind != SpecialKind::kFinalizer && sp->kind != SpecialKind::kCleanup) return;
  Findings& f = g_findings;
  if (f.more) return;
  const std::size_t i = s->ObjIndex(p);
  const std::uintptr_t base = s->ObjBase(i);
  const std::uintptr_t end = base + s->elemsize;
  int issues = 0;
  Walk walk(base, end);
  bool found = false;
  if (sp->kind == SpecialKind::kFinalizer) {
    // Go: gcScanFinalizer. What the object references (not its pointers into itself, which
    // gofin's marker skips) and the callable.
    if (!s->spanclass.NoScan()) found = walk.ScanRange(base, end, base, end);
    const auto ctx = reinterpret_cast<std::uintptr_t>(static_cast<SpecialFinalizer*>(sp)->ctx);
    if (!found)
      found = walk.ScanRange(reinterpret_cast<std::uintptr_t>(&ctx),
                             reinterpret_cast<std::uintptr_t>(&ctx) + 8);
  } else {
    const auto box = reinterpret_cast<std::uintptr_t>(static_cast<SpecialCleanup*>(sp)->box);
    found = walk.ScanRange(reinterpret_cast<std::uintptr_t>(&box),
                           reinterpret_cast<std::uintptr_t>(&box) + 8);
  }
  if (!found) found = walk.Drain();
  if (found) issues |= kReportCycle;
  if (s->spanclass.value == kTinySpanClass.value) issues |= kReportTiny;
  if (issues == 0) return;
  if (f.n == kMaxReports) {
    f.more = true;
    return;
  }
  Report& r = f.reports[f.n++];
  r = Report{};
  r.p = p;
  r.record = reinterpret_cast<std::uintptr_t>(sp);
  r.kind = sp->kind;
  r.issues = issues;
  if (const SpecialCheckFinalizer* c = ContextOf(p, s, sp)) {
    r.file = c->file;
    r.function = c->function;
    r.type = c->type;
    r.line = c->line;
  }
}

std::string Demangle(const void* type) {
  if (type == nullptr) return "?";
  const char* mangled = static_cast<const std::type_info*>(type)->name();
  int status = 0;
  char* s = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
  std::string out = status == 0 && s != nullptr ? s : mangled;
  std::free(s);  // NOLINT: __cxa_demangle's buffer is malloc'd
  return out;
}

}  // namespace

void InitCheckFinalizers() {
  const bool on = EnvDebugKey("GOFIN_DEBUG", "checkfinalizers", 0, 2).value_or(0) != 0;
  if (!on) return;
  SpecialKindOps ops;  // nothing at mark or death: the record goes with its object
  ops.multiple = true;
  RegisterSpecialKind(SpecialKind::kCheckFinalizer, ops);
  InitSpecials();
  detail::g_check_finalizers.store(true, std::memory_order_relaxed);
}

bool CheckFinalizersEnabled() { return detail::g_check_finalizers.load(std::memory_order_relaxed); }

void CheckFinalizersStopped() {
  g_findings.n = 0;
  g_findings.more = false;
  ForEachSpecialStopped(&CheckOne, nullptr);
}

void ReportCheckFinalizers() {
  Findings& f = g_findings;
  if (f.n > 0) {
    std::fprintf(stderr, "WARNING: LIKELY CLEANUP/FINALIZER ISSUES\n\n");
    std::uintptr_t last = 0;
    for (std::size_t k = 0; k < f.n; ++k) {
      const Report& r = f.reports[k];
      const bool fin = r.kind == SpecialKind::kFinalizer;
      if (r.p != last) {
        if (last != 0) std::fprintf(stderr, "\n");
        std::fprintf(stderr, "Value of type %s at %#lx\n", Demangle(r.type).c_str(),
                     static_cast<unsigned long>(r.p));
        if ((r.issues & kReportCycle) != 0) {
          std::fprintf(stderr, fin ? "  is reachable from finalizer\n"
                                   : "  is reachable from cleanup or cleanup argument\n");
        }
        if ((r.issues & kReportTiny) != 0) {
          std::fprintf(stderr, "  is in a tiny block with other (possibly long-lived) values\n");
        }
        if ((r.issues & kReportTiny) != 0 && (r.issues & kReportCycle) != 0) {
          std::fprintf(stderr, fin ? "  may be in the same tiny block as finalizer\n"
                                   : "  may be in the same tiny block as cleanup or cleanup "
                                     "argument\n");
        }
      }
      std::fprintf(stderr, "\nHas %s at %#lx\ncreated at:\n", fin ? "finalizer" : "cleanup",
                   static_cast<unsigned long>(r.record));
      if (r.file != nullptr) {
        std::fprintf(stderr, "  %s\n      %s:%u\n", r.function, r.file, r.line);
      } else {
        std::fprintf(stderr, "  <unknown: registered before the check was on>\n");
      }
      last = r.p;
    }
    std::fprintf(stderr, "\n");
    if (f.more) std::fprintf(stderr, "... too many potential issues ...\n");
    f.n = 0;
    f.more = false;
  }
  const FinalizerStats fs = ReadFinalizerStats();
  const CleanupStats cs = ReadCleanupStats();
  std::fprintf(stderr, "checkfinalizers: queue: %llu finalizers + %llu cleanups\n",
               static_cast<unsigned long long>(fs.Queued - fs.Executed),
               static_cast<unsigned long long>(cs.Queued - cs.Executed));
}

}  // namespace gofin::internal

namespace gofin::detail {

void NoteRegistration(const void* obj, std::uint64_t cleanup_id, const SourceLocation& where,
                      const std::type_info& type) {
  using namespace internal;  // NOLINT(google-build-using-namespace)
  auto* s = static_cast<SpecialCheckFinalizer*>(NewSpecial(SpecialKind::kCheckFinalizer));
  s->cleanup_id = cleanup_id;
  s->file = where.file;
  s->function = where.function;
  s->line = where.line;
  s->type = &type;
  if (!AddSpecial(obj, s)) FreeSpecialRecord(s);
}

}  // namespace gofin::detail
