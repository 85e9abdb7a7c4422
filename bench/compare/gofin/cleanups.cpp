// Cleanup and weak-pointer workloads on gofin (Go 1.24+: runtime.AddCleanup, package weak).
// Same work as bdwgc/cleanups.cpp and go/cleanups/main.go.
//
// Usage: compare_gofin_cleanups <sub> [size]
//   add_stop        [ops=1048576]  AddCleanup(x, f, 14).Stop() on one long-lived 16-byte object
//                                  (Go's BenchmarkAddCleanupAndStop): ns_per_pair. Then, for
//                                  reference, SetFinalizer(x, f) + SetFinalizer(x, nullptr) on
//                                  the same object: set_remove_ns. Check: once x is dropped,
//                                  only a control cleanup added after the loops runs (no
//                                  stopped cleanup, no removed finalizer).
//   e2e             [log2n=20]     2^n 16-byte objects (Obj) with a cleanup each made garbage;
//                                  time from dropping them until every cleanup ran: GC(), then
//                                  testing::BlockUntilEmptyCleanupQueue, another GC() only if
//                                  ReadCleanupStats().Executed is short (gc_rounds > 1). Then
//                                  the same with SetFinalizer instead (fin_*). Cleanup threads:
//                                  max(GOFIN_GCWORKERS/4, 1) at most (run.sh: 4 and 8 workers);
//                                  the first starts at the first AddCleanup, a further one only
//                                  from an AddCleanup that finds queued blocks and none asleep
//                                  (as in Go): threads_started counts the threads the process
//                                  gained from dropping the objects to the last cleanup.
//   weak_make_value [ops=4194304]  weak::Make(x).Value() on one live object: ns_per_pair (Make
//                                  finds the handle the first one made); then Value() alone on
//                                  one weak pointer: value_ns.
//   weak_gc         [n=1048576]    one full GC() (median of 3) of n live 16-byte objects, then
//                                  of the same after weak::Make on each (Go issue 71779):
//                                  gc_plain_ms, gc_weak_ms and the difference. Check: every
//                                  Value() is its object while live, nil once dropped.
// Objects are a 16-byte scanned Obj (never tiny), as in the finalizer workloads.
#include <atomic>
#include <chrono>
#include <cstring>
#include <gofin/gofin.hpp>
#include <string>
#include <vector>

#include "compare_common.hpp"

namespace {

const char* const kImpl = "gofin";

struct Obj {  // 16 bytes, scanned (has a pointer field), never tiny
  Obj* next;
  long value;
};
static_assert(sizeof(Obj) == 16);

// Go's BenchmarkAddCleanupAndStop: type T struct { v int; p unsafe.Pointer }.
struct BenchT {
  long v;
  void* p;
};
static_assert(sizeof(BenchT) == 16);

std::atomic<long> g_cleaned{0};
std::atomic<long> g_finalized{0};
std::atomic<long> g_control{0};

void count_cleanup(long) { g_cleaned.fetch_add(1, std::memory_order_relaxed); }
void count_finalized(void*) { g_finalized.fetch_add(1, std::memory_order_relaxed); }

bool drain_cleanups() {
  return gofin::testing::BlockUntilEmptyCleanupQueue(std::chrono::seconds(120));
}
bool drain_finalizers() {
  return gofin::testing::BlockUntilEmptyFinalizerQueue(std::chrono::seconds(120));
}

// ---------------------------------------------------------------- (a) AddCleanup + Stop
struct AddStopTimes {
  double cleanup_ns, finalizer_ns;
};

// The loops run in their own frame, so that x is on no live stack once it returns.
[[gnu::noinline]] AddStopTimes add_stop_loops(BenchT** holder, long ops) {
  BenchT* x = holder[0];
  auto cleanup = [](int) { g_cleaned.fetch_add(1, std::memory_order_relaxed); };
  auto fin = [](BenchT*) { g_finalized.fetch_add(1, std::memory_order_relaxed); };
  const long warm = ops / 16 + 1;
  for (long i = 0; i < warm; ++i) gofin::AddCleanup(x, cleanup, 14).Stop();
  const double t0 = cmp::now_ns();
  for (long i = 0; i < ops; ++i) gofin::AddCleanup(x, cleanup, 14).Stop();
  const double t1 = cmp::now_ns();
  for (long i = 0; i < warm; ++i) {
    gofin::SetFinalizer(x, fin);
    gofin::SetFinalizer(x, nullptr);
  }
  const double t2 = cmp::now_ns();
  for (long i = 0; i < ops; ++i) {
    gofin::SetFinalizer(x, fin);
    gofin::SetFinalizer(x, nullptr);
  }
  const double t3 = cmp::now_ns();
  // The control: the one cleanup that must run once x is unreachable.
  gofin::AddCleanup(
      x, [](int) { g_control.fetch_add(1, std::memory_order_relaxed); }, 1);
  gofin::KeepAlive(x);
  return {(t1 - t0) / static_cast<double>(ops), (t3 - t2) / static_cast<double>(ops)};
}

[[gnu::noinline]] BenchT** make_holder() {
  BenchT** holder = gofin::NewArray<BenchT*>(1);
  holder[0] = gofin::New<BenchT>();
  return holder;
}

int add_stop(long ops) {
  const char* wl = "cleanup_add_stop";
  BenchT** holder = make_holder();
  const AddStopTimes t = add_stop_loops(holder, ops);
  holder[0] = nullptr;  // drop x
  int rounds = 0;
  while (g_control.load() == 0 && rounds < 5) {
    gofin::GC();
    ++rounds;
    if (!drain_finalizers() || !drain_cleanups()) {
      std::printf("ERROR gofin cleanup_add_stop: cleanup/finalizer queue did not drain\n");
      return 1;
    }
  }
  gofin::KeepAlive(holder);
  const gofin::CleanupStats st = gofin::ReadCleanupStats();
  if (g_control.load() != 1 || g_cleaned.load() != 0 || g_finalized.load() != 0 || st.Queued != 1 ||
      st.Executed != 1) {
    std::printf(
        "ERROR gofin cleanup_add_stop: after dropping x (%d GC rounds): control cleanup ran %ld "
        "times (want 1), stopped cleanups ran %ld (want 0), removed finalizers ran %ld (want 0), "
        "ReadCleanupStats Queued %llu Executed %llu (want 1 1)\n",
        rounds, g_control.load(), g_cleaned.load(), g_finalized.load(),
        static_cast<unsigned long long>(st.Queued), static_cast<unsigned long long>(st.Executed));
    return 1;
  }
  cmp::result(wl, kImpl, "ns_per_pair", t.cleanup_ns, "ns");
  cmp::result(wl, kImpl, "set_remove_ns", t.finalizer_ns, "ns");
  cmp::result_rss(wl, kImpl);
  return 0;
}

// ---------------------------------------------------------------- (b) end to end
// Kept out of line so that its frame (and the last pointers it held) is dead stack below
// the caller's frame when the caller collects.
[[gnu::noinline]] Obj** make_with_cleanups(long n) {
  Obj** arr = gofin::NewArray<Obj*>(static_cast<std::size_t>(n));  // scanned: keeps them alive
  for (long i = 0; i < n; ++i) {
    Obj* p = gofin::New<Obj>();
    gofin::AddCleanup(p, &count_cleanup, i);
    arr[i] = p;
  }
  return arr;
}

[[gnu::noinline]] Obj** make_with_finalizers(long n) {
  Obj** arr = gofin::NewArray<Obj*>(static_cast<std::size_t>(n));
  for (long i = 0; i < n; ++i) {
    Obj* p = gofin::New<Obj>();
    gofin::SetFinalizer(p, &count_finalized);
    arr[i] = p;
  }
  return arr;
}

struct E2E {
  bool ok;
  double setup_ms, gc_ms, total_ms;
  int rounds;
  long threads_started;  // threads the process gained between dropping and the end
};

// With cleanups (AddCleanup) or finalizers (SetFinalizer) on the objects.
[[gnu::noinline]] E2E run_e2e(long n, bool cleanups) {
  const char* what = cleanups ? "cleanup" : "finalizer";
  std::atomic<long>& counter = cleanups ? g_cleaned : g_finalized;
  const gofin::CleanupStats base = gofin::ReadCleanupStats();
  E2E r{};
  const double s0 = cmp::now_ms();
  Obj** arr = cleanups ? make_with_cleanups(n) : make_with_finalizers(n);
  r.setup_ms = cmp::now_ms() - s0;
  if (counter.load() != 0) {
    std::printf("ERROR gofin cleanup_e2e: %ld %ss ran while the objects were reachable\n",
                counter.load(), what);
    return r;
  }

  const long threads0 = cmp::os_threads();
  std::memset(static_cast<void*>(arr), 0, sizeof(Obj*) * static_cast<std::size_t>(n));  // drop
  const double t0 = cmp::now_ms();
  gofin::GC();
  r.gc_ms = cmp::now_ms() - t0;
  r.rounds = 1;
  for (;;) {
    if (!(cleanups ? drain_cleanups() : drain_finalizers())) {
      std::printf("ERROR gofin cleanup_e2e: %s queue did not drain in 120 s (%ld of %ld ran)\n",
                  what, counter.load(), n);
      return r;
    }
    const long ran = cleanups
                         ? static_cast<long>(gofin::ReadCleanupStats().Executed - base.Executed)
                         : counter.load();
    if (ran >= n || r.rounds >= 5) break;
    // Some objects were kept by conservative roots: collect again, as a Go test loops on
    // runtime.GC().
    std::printf("INFO gofin cleanup_e2e: %s queue drained at %ld/%ld, collecting again\n", what,
                ran, n);
    gofin::GC();
    ++r.rounds;
  }
  r.total_ms = cmp::now_ms() - t0;
  r.threads_started = cmp::os_threads() - threads0;
  gofin::KeepAlive(arr);
  const gofin::CleanupStats st = gofin::ReadCleanupStats();
  const auto queued = static_cast<long>(st.Queued - base.Queued);
  const auto executed = static_cast<long>(st.Executed - base.Executed);
  if (counter.load() != n || (cleanups && (queued != n || executed != n))) {
    std::printf(
        "ERROR gofin cleanup_e2e: %ss: counter %ld, ReadCleanupStats queued %ld executed %ld; "
        "want %ld (%d GC rounds)\n",
        what, counter.load(), queued, executed, n, r.rounds);
    return r;
  }
  r.ok = true;
  return r;
}

int e2e(long log2n) {
  const char* wl = "cleanup_e2e";
  const long n = 1L << log2n;
  const E2E c = run_e2e(n, true);
  if (!c.ok) return 1;
  const E2E f = run_e2e(n, false);
  if (!f.ok) return 1;
  cmp::result(wl, kImpl, "objects", static_cast<double>(n), "objs", 0);
  cmp::result(wl, kImpl, "setup_ms", c.setup_ms, "ms");
  cmp::result(wl, kImpl, "gc_ms", c.gc_ms, "ms");
  cmp::result(wl, kImpl, "total_ms", c.total_ms, "ms");
  cmp::result(wl, kImpl, "ns_per_object", c.total_ms * 1e6 / static_cast<double>(n), "ns");
  cmp::result(wl, kImpl, "gc_rounds", c.rounds, "rounds", 0);
  cmp::result(wl, kImpl, "threads_started", static_cast<double>(c.threads_started), "threads", 0);
  cmp::result(wl, kImpl, "fin_setup_ms", f.setup_ms, "ms");
  cmp::result(wl, kImpl, "fin_gc_ms", f.gc_ms, "ms");
  cmp::result(wl, kImpl, "fin_e2e_ms", f.total_ms, "ms");
  cmp::result(wl, kImpl, "fin_gc_rounds", f.rounds, "rounds", 0);
  cmp::result_rss(wl, kImpl);
  return 0;
}

// ---------------------------------------------------------------- (c) weak Make + Value
struct MakeValueTimes {
  double pair_ns, value_ns;
  long bad;
};

[[gnu::noinline]] MakeValueTimes make_value_loops(Obj* x, long ops) {
  MakeValueTimes r{};
  const long warm = ops / 16 + 1;
  for (long i = 0; i < warm; ++i) r.bad += gofin::weak::Make(x).Value() != x;
  const double t0 = cmp::now_ns();
  for (long i = 0; i < ops; ++i) r.bad += gofin::weak::Make(x).Value() != x;
  const double t1 = cmp::now_ns();
  const gofin::weak::Pointer<Obj> w = gofin::weak::Make(x);
  for (long i = 0; i < warm; ++i) r.bad += w.Value() != x;
  const double t2 = cmp::now_ns();
  for (long i = 0; i < ops; ++i) r.bad += w.Value() != x;
  const double t3 = cmp::now_ns();
  r.bad += !(gofin::weak::Make(x) == w);
  r.pair_ns = (t1 - t0) / static_cast<double>(ops);
  r.value_ns = (t3 - t2) / static_cast<double>(ops);
  return r;
}

int weak_make_value(long ops) {
  const char* wl = "weak_make_value";
  Obj* x = gofin::New<Obj>();
  const MakeValueTimes t = make_value_loops(x, ops);
  gofin::KeepAlive(x);
  if (t.bad != 0) {
    std::printf(
        "ERROR gofin weak_make_value: %ld Value()s were not the object (or Makes differed)\n",
        t.bad);
    return 1;
  }
  cmp::result(wl, kImpl, "ns_per_pair", t.pair_ns, "ns");
  cmp::result(wl, kImpl, "value_ns", t.value_ns, "ns");
  cmp::result_rss(wl, kImpl);
  return 0;
}

// ---------------------------------------------------------------- (d) GC with weak pointers
double median_gc_ms() {
  std::vector<double> v;
  for (int i = 0; i < 3; ++i) {
    const double t0 = cmp::now_ms();
    gofin::GC();
    v.push_back(cmp::now_ms() - t0);
  }
  return cmp::median(v);
}

[[gnu::noinline]] Obj** make_objects(long n) {
  Obj** arr = gofin::NewArray<Obj*>(static_cast<std::size_t>(n));
  for (long i = 0; i < n; ++i) arr[i] = gofin::New<Obj>();
  return arr;
}

[[gnu::noinline]] gofin::weak::Pointer<Obj>* make_weak(Obj** arr, long n) {
  auto* wps = gofin::NewArray<gofin::weak::Pointer<Obj>>(static_cast<std::size_t>(n));
  for (long i = 0; i < n; ++i) wps[i] = gofin::weak::Make(arr[i]);
  return wps;
}

[[gnu::noinline]] long count_live(const gofin::weak::Pointer<Obj>* wps, Obj** arr, long n) {
  long bad = 0;
  for (long i = 0; i < n; ++i) bad += wps[i].Value() != arr[i];
  return bad;
}

[[gnu::noinline]] long count_not_nil(const gofin::weak::Pointer<Obj>* wps, long n) {
  long left = 0;
  for (long i = 0; i < n; ++i) left += wps[i].Value() != nullptr;
  return left;
}

int weak_gc(long n) {
  const char* wl = "weak_gc";
  Obj** arr = make_objects(n);
  const double plain = median_gc_ms();
  const double s0 = cmp::now_ms();
  gofin::weak::Pointer<Obj>* wps = make_weak(arr, n);
  const double s1 = cmp::now_ms();
  const double with_weak = median_gc_ms();
  if (const long bad = count_live(wps, arr, n); bad != 0) {
    std::printf("ERROR gofin weak_gc: %ld of %ld weak pointers to live objects are wrong\n", bad,
                n);
    return 1;
  }
  // Drop the objects: every weak pointer must go nil.
  std::memset(static_cast<void*>(arr), 0, sizeof(Obj*) * static_cast<std::size_t>(n));
  int rounds = 0;
  long left = n;
  while (left != 0 && rounds < 5) {
    gofin::GC();
    ++rounds;
    left = count_not_nil(wps, n);
    if (left != 0) {
      std::printf("INFO gofin weak_gc: %ld of %ld weak pointers not nil after %d GCs\n", left, n,
                  rounds);
    }
  }
  gofin::KeepAlive(arr);
  gofin::KeepAlive(wps);
  if (left != 0) {
    std::printf("ERROR gofin weak_gc: %ld of %ld weak pointers still not nil after %d GCs\n", left,
                n, rounds);
    return 1;
  }
  cmp::result(wl, kImpl, "objects", static_cast<double>(n), "objs", 0);
  cmp::result(wl, kImpl, "gc_plain_ms", plain, "ms");
  cmp::result(wl, kImpl, "gc_weak_ms", with_weak, "ms");
  cmp::result(wl, kImpl, "weak_extra_ms", with_weak - plain, "ms");
  cmp::result(wl, kImpl, "ns_per_weak", (with_weak - plain) * 1e6 / static_cast<double>(n), "ns");
  cmp::result(wl, kImpl, "weak_over_plain", with_weak / plain, "x");
  cmp::result(wl, kImpl, "make_all_ms", s1 - s0, "ms");
  cmp::result(wl, kImpl, "clear_gc_rounds", rounds, "rounds", 0);
  cmp::result(wl, kImpl, "not_cleared", static_cast<double>(left), "objs", 0);
  cmp::result_rss(wl, kImpl);
  return 0;
}

}  // namespace

// Nothing here points one past an object's end: they keep Go's and bdwgc's 16 bytes (without
// this, New pads an exact-fit scanned type into the next class: README, "Finalizers on C++
// objects").
template <>
struct gofin::NoPastTheEndPointers<Obj> : std::true_type {};
template <>
struct gofin::NoPastTheEndPointers<BenchT> : std::true_type {};

int main(int argc, char** argv) {
  const std::string sub = argc > 1 ? argv[1] : "";
  if (sub == "add_stop") return add_stop(cmp::arg_long(argc, argv, 2, 1L << 20));
  if (sub == "e2e") return e2e(cmp::arg_long(argc, argv, 2, 20));
  if (sub == "weak_make_value") return weak_make_value(cmp::arg_long(argc, argv, 2, 1L << 22));
  if (sub == "weak_gc") return weak_gc(cmp::arg_long(argc, argv, 2, 1L << 20));
  std::fprintf(stderr, "usage: %s add_stop|e2e|weak_make_value|weak_gc [size]\n", argv[0]);
  return 2;
}
