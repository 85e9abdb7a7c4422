// Finalizer workloads on bdwgc.  Same work as gofin/finalizers.cpp and go/finalizers/main.go.
//
// Usage: compare_bdwgc_finalizers <sub> [size]
//   set_remove [batches=2000]  2 threads, each with its own 1000 8-byte objects
//                              (GC_MALLOC_ATOMIC), per batch: GC_register_finalizer(p, fn) on
//                              all 1000, then GC_register_finalizer(p, NULL) on all 1000.
//                              us_per_batch = wall time / (2 * batches), as b.RunParallel.
//   alloc_set  [ops=1048576]   2 threads, each ops times: allocate 8 bytes, register a
//                              finalizer.  ns_per_op = wall / (2 * ops).  bdwgc's default
//                              mode: finalizers run inside allocation calls of these threads
//                              (gofin and Go run them on a separate thread/goroutine).
//   e2e        [log2n=20]      GC_set_finalize_on_demand(1); 2^n 16-byte objects (GC_MALLOC) with
//   finalizers made
//                              garbage; time from dropping them to the last finalizer having
//                              run: GC_gcollect(), then GC_invoke_finalizers() on this thread
//                              until the counter reaches 2^n (another GC_gcollect() only if
//                              nothing is left to invoke but some did not run: gc_rounds > 1).
//   gc_heap    [n=1048576]     one full GC_gcollect() of a heap of n live 16-byte objects
//                              (GC_MALLOC; median of 3) before and after registering a
//                              finalizer on each of them.
// (a) and (b) use 8-byte pointer-free objects (GC_MALLOC_ATOMIC), (c) and (d) a 16-byte
// scanned Obj, like the gofin and Go versions.
// bdwgc's GC_register_finalizer is the ordered (Java/Go-like) flavour.
#include <gc.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <latch>
#include <string>
#include <thread>
#include <vector>

#include "compare_common.hpp"

namespace {

const char* const kImpl = "bdwgc";
constexpr int kThreads = 2;
constexpr int kBatch = 1000;

std::atomic<long> g_finalized{0};

long* new_long() {
  long* p = static_cast<long*>(GC_MALLOC_ATOMIC(sizeof(long)));  // not zeroed by bdwgc
  *p = 0;
  return p;
}

struct Obj {
  Obj* next;
  long value;
};
static_assert(sizeof(Obj) == 16);

Obj* new_obj() { return static_cast<Obj*>(GC_MALLOC(sizeof(Obj))); }  // zeroed, scanned

void count_fin(void*, void*) { g_finalized.fetch_add(1, std::memory_order_relaxed); }
void empty_fin(void*, void*) {}

// A std::thread registered with bdwgc for its whole body.
template <class F>
std::thread gc_thread(F f) {
  return std::thread([f]() mutable {
    GC_stack_base sb;
    GC_get_stack_base(&sb);
    GC_register_my_thread(&sb);
    f();
    GC_unregister_my_thread();
  });
}

// ---------------------------------------------------------------- (a) set + remove
int set_remove(long batches) {
  const char* wl = "fin_set_remove";
  std::latch ready(kThreads);
  std::latch go(1);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.push_back(gc_thread([&] {
      long* data[kBatch];  // on this (registered) thread's stack: a root
      for (auto& p : data) p = new_long();
      ready.count_down();
      go.wait();
      GC_finalization_proc ofn;
      void* ocd;
      for (long b = 0; b < batches; ++b) {
        for (auto* p : data) GC_register_finalizer(p, empty_fin, nullptr, &ofn, &ocd);
        for (auto* p : data) GC_register_finalizer(p, nullptr, nullptr, &ofn, &ocd);
      }
    }));
  }
  ready.wait();
  const double t0 = cmp::now_ns();
  go.count_down();
  for (auto& th : threads) th.join();
  const double t1 = cmp::now_ns();
  const double per_batch_ns = (t1 - t0) / (static_cast<double>(batches) * kThreads);
  cmp::result(wl, kImpl, "us_per_batch", per_batch_ns / 1e3, "us");
  cmp::result(wl, kImpl, "ns_per_pair", per_batch_ns / kBatch, "ns");
  cmp::result_rss(wl, kImpl);
  return 0;
}

// ---------------------------------------------------------------- (b) alloc + set
int alloc_set(long ops) {
  const char* wl = "fin_alloc_set";
  std::latch ready(kThreads);
  std::latch go(1);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.push_back(gc_thread([&] {
      ready.count_down();
      go.wait();
      for (long i = 0; i < ops; ++i) {
        long* v = new_long();
        GC_register_finalizer(v, count_fin, nullptr, nullptr, nullptr);
      }
    }));
  }
  ready.wait();
  const double t0 = cmp::now_ns();
  go.count_down();
  for (auto& th : threads) th.join();
  const double t1 = cmp::now_ns();
  cmp::result(wl, kImpl, "ns_per_op", (t1 - t0) / (static_cast<double>(ops) * kThreads), "ns");
  cmp::result(wl, kImpl, "finalized_by_end", static_cast<double>(g_finalized.load()), "objs", 0);
  cmp::result_rss(wl, kImpl);
  return 0;
}

// ---------------------------------------------------------------- (c) end to end
[[gnu::noinline]] Obj** make_finalized(long n) {
  auto** arr = static_cast<Obj**>(GC_MALLOC(sizeof(Obj*) * static_cast<std::size_t>(n)));
  for (long i = 0; i < n; ++i) {
    Obj* p = new_obj();
    GC_register_finalizer(p, count_fin, nullptr, nullptr, nullptr);
    arr[i] = p;
  }
  return arr;
}

int e2e(long log2n) {
  const char* wl = "fin_e2e";
  const long n = 1L << log2n;
  GC_set_finalize_on_demand(1);
  const double s0 = cmp::now_ms();
  Obj** arr = make_finalized(n);
  const double s1 = cmp::now_ms();
  GC_invoke_finalizers();  // nothing should be pending: they are all reachable
  if (g_finalized.load() != 0) {
    std::printf("ERROR bdwgc fin_e2e: %ld finalizers ran while the objects were reachable\n",
                g_finalized.load());
    return 1;
  }

  std::memset(static_cast<void*>(arr), 0, sizeof(Obj*) * static_cast<std::size_t>(n));
  const double t0 = cmp::now_ms();
  GC_gcollect();
  const double t_gc = cmp::now_ms();
  int rounds = 1;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  bool ok = true;
  while (g_finalized.load() < n) {
    if (GC_invoke_finalizers() != 0) continue;
    if (rounds >= 5 || std::chrono::steady_clock::now() > deadline) {
      ok = false;
      break;
    }
    std::printf("INFO bdwgc fin_e2e: nothing to invoke at %ld/%ld finalized, collecting again\n",
                g_finalized.load(), n);
    GC_gcollect();
    ++rounds;
  }
  const double t_done = cmp::now_ms();
  if (!ok) {
    std::printf("ERROR bdwgc fin_e2e: gave up: %ld of %ld finalizers ran (%d GC rounds)\n",
                g_finalized.load(), n, rounds);
    return 1;
  }
  cmp::result(wl, kImpl, "objects", static_cast<double>(n), "objs", 0);
  cmp::result(wl, kImpl, "setup_ms", s1 - s0, "ms");
  cmp::result(wl, kImpl, "gc_ms", t_gc - t0, "ms");
  cmp::result(wl, kImpl, "total_ms", t_done - t0, "ms");
  cmp::result(wl, kImpl, "ns_per_object", (t_done - t0) * 1e6 / static_cast<double>(n), "ns");
  cmp::result(wl, kImpl, "gc_rounds", rounds, "rounds", 0);
  cmp::result_rss(wl, kImpl);
  return 0;
}

// ---------------------------------------------------------------- (d) GC with finalizers
double median_gc_ms() {
  std::vector<double> v;
  for (int i = 0; i < 3; ++i) {
    const double t0 = cmp::now_ms();
    GC_gcollect();
    v.push_back(cmp::now_ms() - t0);
  }
  return cmp::median(v);
}

int gc_heap(long n) {
  const char* wl = "fin_gc_heap";
  GC_set_finalize_on_demand(1);
  auto** arr = static_cast<Obj**>(GC_MALLOC(sizeof(Obj*) * static_cast<std::size_t>(n)));
  for (long i = 0; i < n; ++i) arr[i] = new_obj();
  const double plain = median_gc_ms();
  const double s0 = cmp::now_ms();
  for (long i = 0; i < n; ++i) GC_register_finalizer(arr[i], count_fin, nullptr, nullptr, nullptr);
  const double s1 = cmp::now_ms();
  const double with_fin = median_gc_ms();
  GC_invoke_finalizers();
  if (g_finalized.load() != 0 || arr[n - 1] == nullptr) {
    std::printf("ERROR bdwgc fin_gc_heap: %ld finalizers of live objects ran\n",
                g_finalized.load());
    return 1;
  }
  cmp::result(wl, kImpl, "objects", static_cast<double>(n), "objs", 0);
  cmp::result(wl, kImpl, "gc_nofin_ms", plain, "ms");
  cmp::result(wl, kImpl, "gc_fin_ms", with_fin, "ms");
  cmp::result(wl, kImpl, "fin_over_nofin", with_fin / plain, "x");
  cmp::result(wl, kImpl, "set_all_ms", s1 - s0, "ms");
  cmp::result_rss(wl, kImpl);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  GC_INIT();
  GC_allow_register_threads();
  GC_start_mark_threads();  // parallel marking (GC_MARKERS, default: cores), as gofin and Go mark
                            // in parallel
  const std::string sub = argc > 1 ? argv[1] : "";
  if (sub == "set_remove") return set_remove(cmp::arg_long(argc, argv, 2, 2000));
  if (sub == "alloc_set") return alloc_set(cmp::arg_long(argc, argv, 2, 1L << 20));
  if (sub == "e2e") return e2e(cmp::arg_long(argc, argv, 2, 20));
  if (sub == "gc_heap") return gc_heap(cmp::arg_long(argc, argv, 2, 1L << 20));
  std::fprintf(stderr, "usage: %s set_remove|alloc_set|e2e|gc_heap [size]\n", argv[0]);
  return 2;
}
