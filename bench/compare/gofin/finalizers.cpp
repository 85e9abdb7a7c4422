// Finalizer workloads on gofin.  Same work as bdwgc/finalizers.cpp and go/finalizers/main.go.
//
// Usage: compare_gofin_finalizers <sub> [size]
//   set_remove [batches=2000]  2 threads, each with its own 1000 objects (gofin::New<long>()),
//                              per batch: SetFinalizer on all 1000, then SetFinalizer(p, nullptr)
//                              on all 1000.  Go's runtime BenchmarkFinalizer.
//                              us_per_batch = wall time / (2 * batches), as b.RunParallel.
//   alloc_set  [ops=1048576]   2 threads, each ops times: p = New<long>(); SetFinalizer(p, f).
//                              Go's BenchmarkFinalizerRun.  ns_per_op = wall / (2 * ops).
//   e2e        [log2n=20]      2^n 16-byte objects (Obj) with finalizers made garbage; time from
//   dropping
//                              them to the last finalizer having run (GC() then wait on a
//                              counter, bounded; another GC() only if the queue drained short,
//                              i.e. conservative scanning kept some alive: gc_rounds > 1).
//   gc_heap    [n=1048576]     one full GC of a heap of n live 16-byte objects (Obj; median
//                              of 3) before and after setting a finalizer on each of them.
// (a) and (b) use 8-byte pointer-free objects (tiny allocator), as Go's benchmarks do;
// (c) and (d) use a 16-byte scanned Obj so that no tiny block is shared with a live object
// (which, as in Go, would keep a whole tiny block and its finalizers alive).
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <gofin/gofin.hpp>
#include <latch>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "compare_common.hpp"

namespace {

const char* const kImpl = "gofin";
constexpr int kThreads = 2;
constexpr int kBatch = 1000;

std::atomic<long> g_finalized{0};

struct Obj {  // 16 bytes, scanned (has a pointer field), never tiny
  Obj* next;
  long value;
};
static_assert(sizeof(Obj) == 16);

// ---------------------------------------------------------------- (a) set + remove
int set_remove(long batches) {
  const char* wl = "fin_set_remove";
  std::latch ready(kThreads);
  std::latch go(1);
  auto fin = [](long*) {};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      long* data[kBatch];  // on this thread's stack: a root
      for (auto& p : data) p = gofin::New<long>();
      ready.count_down();
      go.wait();
      for (long b = 0; b < batches; ++b) {
        for (auto* p : data) gofin::SetFinalizer(p, fin);
        for (auto* p : data) gofin::SetFinalizer(p, nullptr);
      }
    });
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
    threads.emplace_back([&] {
      gofin::KeepAlive(gofin::New<long>());  // register the thread before the clock starts
      ready.count_down();
      go.wait();
      for (long i = 0; i < ops; ++i) {
        long* v = gofin::New<long>();
        gofin::SetFinalizer(v, [](long*) { g_finalized.fetch_add(1, std::memory_order_relaxed); });
      }
    });
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
std::mutex g_mu;
std::condition_variable g_cv;
bool g_done = false;
long g_target = 0;

void count_finalized(Obj*) {
  if (g_finalized.fetch_add(1, std::memory_order_acq_rel) + 1 == g_target) {
    std::lock_guard<std::mutex> lk(g_mu);
    g_done = true;
    g_cv.notify_all();
  }
}

// Kept out of line so that its frame (and the last pointers it held) is dead stack below
// main's frame when main collects.
[[gnu::noinline]] Obj** make_finalized(long n) {
  Obj** arr = gofin::NewArray<Obj*>(static_cast<std::size_t>(n));  // scanned: keeps them alive
  for (long i = 0; i < n; ++i) {
    Obj* p = gofin::New<Obj>();
    gofin::SetFinalizer(p, &count_finalized);
    arr[i] = p;
  }
  return arr;
}

int e2e(long log2n) {
  const char* wl = "fin_e2e";
  const long n = 1L << log2n;
  g_target = n;
  const double s0 = cmp::now_ms();
  Obj** arr = make_finalized(n);
  const double s1 = cmp::now_ms();
  if (g_finalized.load() != 0) {
    std::printf("ERROR gofin fin_e2e: %ld finalizers ran while the objects were reachable\n",
                g_finalized.load());
    return 1;
  }

  // Drop them.
  std::memset(static_cast<void*>(arr), 0, sizeof(Obj*) * static_cast<std::size_t>(n));
  const double t0 = cmp::now_ms();
  gofin::GC();
  const double t_gc = cmp::now_ms();
  int rounds = 1;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  bool ok = false;
  {
    std::unique_lock<std::mutex> lk(g_mu);
    while (true) {
      if (g_cv.wait_for(lk, std::chrono::milliseconds(50), [] { return g_done; })) {
        ok = true;
        break;
      }
      if (std::chrono::steady_clock::now() > deadline) break;
      // Queue drained (and no finalizer running) but not all ran: some objects were kept by
      // conservative roots.  Collect again, as a Go test would loop on runtime.GC().
      lk.unlock();
      const bool drained =
          gofin::testing::BlockUntilEmptyFinalizerQueue(std::chrono::nanoseconds(0));
      if (drained && g_finalized.load() < n && rounds < 5) {
        std::printf("INFO gofin fin_e2e: queue drained at %ld/%ld finalized, collecting again\n",
                    g_finalized.load(), n);
        gofin::GC();
        ++rounds;
      }
      lk.lock();
    }
  }
  const double t_done = cmp::now_ms();
  gofin::KeepAlive(arr);
  if (!ok) {
    std::printf("ERROR gofin fin_e2e: timed out: %ld of %ld finalizers ran (%d GC rounds)\n",
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
    gofin::GC();
    v.push_back(cmp::now_ms() - t0);
  }
  return cmp::median(v);
}

int gc_heap(long n) {
  const char* wl = "fin_gc_heap";
  Obj** arr = gofin::NewArray<Obj*>(static_cast<std::size_t>(n));
  for (long i = 0; i < n; ++i) arr[i] = gofin::New<Obj>();
  const double plain = median_gc_ms();
  const double s0 = cmp::now_ms();
  for (long i = 0; i < n; ++i)
    gofin::SetFinalizer(arr[i], [](Obj*) { g_finalized.fetch_add(1, std::memory_order_relaxed); });
  const double s1 = cmp::now_ms();
  const double with_fin = median_gc_ms();
  gofin::KeepAlive(arr);
  if (g_finalized.load() != 0) {
    std::printf("ERROR gofin fin_gc_heap: %ld finalizers of live objects ran\n",
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

// Nothing here points one past a obj's end: it keeps Go's and bdwgc's 16 bytes (without
// this, New pads an exact-fit scanned type into the next class: README, "Finalizers on C++
// objects").
template <>
struct gofin::NoPastTheEndPointers<Obj> : std::true_type {};

int main(int argc, char** argv) {
  const std::string sub = argc > 1 ? argv[1] : "";
  if (sub == "set_remove") return set_remove(cmp::arg_long(argc, argv, 2, 2000));
  if (sub == "alloc_set") return alloc_set(cmp::arg_long(argc, argv, 2, 1L << 20));
  if (sub == "e2e") return e2e(cmp::arg_long(argc, argv, 2, 20));
  if (sub == "gc_heap") return gc_heap(cmp::arg_long(argc, argv, 2, 1L << 20));
  std::fprintf(stderr, "usage: %s set_remove|alloc_set|e2e|gc_heap [size]\n", argv[0]);
  return 2;
}
