// Allocation throughput: gofin vs bdwgc (Boehm GC) vs glibc malloc, per object size, with one
// and two threads.
//
//   BM_Alloc/<impl>/<bytes>        scanned objects: gofin::Alloc, GC_MALLOC, malloc
//   BM_AllocNoScan/<impl>/<bytes>  pointer-free: gofin::AllocNoScan, GC_MALLOC_ATOMIC, malloc
//   BM_Tiny/<impl>/8               8-byte pointer-free: gofin::AllocNoScan(7) (the tiny
//                                  allocator: 7 bytes + gofin's 1 padding byte), GC_MALLOC_ATOMIC(8),
//                                  malloc(8)
//   BM_New/<impl>/16               a 16-byte node with a pointer: gofin::New<Node>,
//                                  new (GC_MALLOC(16)) Node, new Node / delete
//
// The collectors run with their defaults (gofin: GOGC=100 unless GOFIN_GOGC says otherwise;
// bdwgc: its default free-space divisor), so every number includes the collections the garbage
// causes. gofin and bdwgc return zeroed memory; malloc does not. Both GCs pad objects by one
// byte (gofin's API padding, bdwgc's all-interior-pointers EXTRA_BYTES), so a "16-byte"
// request is a 24-byte object in both. malloc runs in batches of 1000 malloc calls followed by
// 1000 free calls; one item is one malloc+free pair. main sets M_TRIM_THRESHOLD to 1 GiB:
// otherwise glibc gives the top of its heap back to the kernel after every batch of frees and
// the next batch page-faults it in again (the collectors keep their heaps as well).
//
// bdwgc is built with thread support here: GC_THREADS is defined, main calls
// GC_allow_register_threads(), and the benchmark's worker threads register themselves with
// GC_register_my_thread for the duration of a run.
//
// After the run a summary prints ns per item (1e9 / items_per_second, i.e. inverse aggregate
// throughput) for each (benchmark, size, threads) and the ratios gofin/bdwgc and gofin/malloc.
// With --benchmark_repetitions=N the summary uses the median of the N runs.
#define GC_THREADS
#include <gc.h>
#include <malloc.h>
#include <unistd.h>

#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>
#include <gofin/gofin.hpp>
#include <map>
#include <mutex>
#include <new>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace {

constexpr int kBatch = 1000;

struct Node {
  Node* next;
  long value;
};
static_assert(sizeof(Node) == 16);

// Registers a benchmark worker thread with bdwgc for as long as it runs bdwgc code.
class BdwgcThread {
 public:
  BdwgcThread() {
    GC_stack_base sb;
    if (GC_get_stack_base(&sb) == GC_SUCCESS) registered_ = GC_register_my_thread(&sb) == GC_SUCCESS;
  }
  ~BdwgcThread() {
    if (registered_) GC_unregister_my_thread();
  }
  BdwgcThread(const BdwgcThread&) = delete;
  BdwgcThread& operator=(const BdwgcThread&) = delete;

 private:
  bool registered_ = false;  // false for the main thread (already registered by GC_INIT)
};

// ---- gofin ------------------------------------------------------------------------------------

void GofinAlloc(benchmark::State& st, std::size_t size) {
  for (auto _ : st) benchmark::DoNotOptimize(gofin::Alloc(size));
  st.SetItemsProcessed(st.iterations());
}

void GofinAllocNoScan(benchmark::State& st, std::size_t size) {
  for (auto _ : st) benchmark::DoNotOptimize(gofin::AllocNoScan(size));
  st.SetItemsProcessed(st.iterations());
}

void GofinNew(benchmark::State& st) {
  Node* prev = nullptr;
  unsigned i = 0;
  for (auto _ : st) {
    Node* n = gofin::New<Node>(prev, 1L);
    benchmark::DoNotOptimize(n);
    prev = (++i & 63) == 0 ? nullptr : n;  // short chains, mostly garbage
  }
  st.SetItemsProcessed(st.iterations());
}

// ---- bdwgc ------------------------------------------------------------------------------------

void BdwgcAlloc(benchmark::State& st, std::size_t size) {
  BdwgcThread reg;
  for (auto _ : st) benchmark::DoNotOptimize(GC_MALLOC(size));
  st.SetItemsProcessed(st.iterations());
}

void BdwgcAllocAtomic(benchmark::State& st, std::size_t size) {
  BdwgcThread reg;
  for (auto _ : st) benchmark::DoNotOptimize(GC_MALLOC_ATOMIC(size));
  st.SetItemsProcessed(st.iterations());
}

void BdwgcNew(benchmark::State& st) {
  BdwgcThread reg;
  Node* prev = nullptr;
  unsigned i = 0;
  for (auto _ : st) {
    void* mem = GC_MALLOC(sizeof(Node));
    if (mem == nullptr) throw std::bad_alloc();
    Node* n = ::new (mem) Node{prev, 1L};
    benchmark::DoNotOptimize(n);
    prev = (++i & 63) == 0 ? nullptr : n;
  }
  st.SetItemsProcessed(st.iterations());
}

// ---- glibc malloc -----------------------------------------------------------------------------

void MallocFree(benchmark::State& st, std::size_t size) {
  std::vector<void*> ptrs(kBatch);
  while (st.KeepRunningBatch(kBatch)) {
    for (int i = 0; i < kBatch; ++i) {
      ptrs[static_cast<std::size_t>(i)] = std::malloc(size);
      benchmark::DoNotOptimize(ptrs[static_cast<std::size_t>(i)]);
    }
    for (int i = 0; i < kBatch; ++i) std::free(ptrs[static_cast<std::size_t>(i)]);
  }
  st.SetItemsProcessed(st.iterations());
}

void NewDelete(benchmark::State& st) {
  std::vector<Node*> ptrs(kBatch);
  while (st.KeepRunningBatch(kBatch)) {
    Node* prev = nullptr;
    for (int i = 0; i < kBatch; ++i) {
      Node* n = new Node{prev, 1L};
      benchmark::DoNotOptimize(n);
      ptrs[static_cast<std::size_t>(i)] = n;
      prev = (i & 63) == 0 ? nullptr : n;
    }
    for (int i = 0; i < kBatch; ++i) delete ptrs[static_cast<std::size_t>(i)];
  }
  st.SetItemsProcessed(st.iterations());
}

// ---- registration -----------------------------------------------------------------------------

void Configure(benchmark::internal::Benchmark* b) {
  b->UseRealTime()->Threads(1)->Threads(2);
}

void RegisterAll() {
  const std::size_t sizes[] = {8, 16, 64, 512, 4096, 65536};
  for (std::size_t size : sizes) {
    const std::string s = std::to_string(size);
    Configure(benchmark::RegisterBenchmark(("BM_Alloc/gofin/" + s).c_str(), GofinAlloc, size));
    Configure(benchmark::RegisterBenchmark(("BM_Alloc/bdwgc/" + s).c_str(), BdwgcAlloc, size));
    Configure(benchmark::RegisterBenchmark(("BM_Alloc/malloc/" + s).c_str(), MallocFree, size));
  }
  for (std::size_t size : sizes) {
    const std::string s = std::to_string(size);
    Configure(benchmark::RegisterBenchmark(("BM_AllocNoScan/gofin/" + s).c_str(),
                                           GofinAllocNoScan, size));
    Configure(benchmark::RegisterBenchmark(("BM_AllocNoScan/bdwgc/" + s).c_str(),
                                           BdwgcAllocAtomic, size));
    Configure(benchmark::RegisterBenchmark(("BM_AllocNoScan/malloc/" + s).c_str(), MallocFree,
                                           size));
  }
  Configure(benchmark::RegisterBenchmark("BM_Tiny/gofin/8", GofinAllocNoScan, std::size_t{7}));
  Configure(benchmark::RegisterBenchmark("BM_Tiny/bdwgc/8", BdwgcAllocAtomic, std::size_t{8}));
  Configure(benchmark::RegisterBenchmark("BM_Tiny/malloc/8", MallocFree, std::size_t{8}));
  Configure(benchmark::RegisterBenchmark("BM_New/gofin/16", GofinNew));
  Configure(benchmark::RegisterBenchmark("BM_New/bdwgc/16", BdwgcNew));
  Configure(benchmark::RegisterBenchmark("BM_New/malloc/16", NewDelete));
}

// ---- summary ------------------------------------------------------------------------------------

// Console output as usual, plus a copy of every run's throughput for the ratio table.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  // Colour only on a terminal (a custom display reporter does not see --benchmark_color).
  RatioReporter() : ConsoleReporter(isatty(STDOUT_FILENO) != 0 ? OO_Defaults : OO_Tabular) {}

  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& r : runs) {
      const bool median = r.run_type == Run::RT_Aggregate && r.aggregate_name == "median";
      if (r.error_occurred || (r.run_type != Run::RT_Iteration && !median)) continue;
      const auto it = r.counters.find("items_per_second");
      if (it == r.counters.end() || it->second.value <= 0) continue;
      // "BM_Alloc/gofin/16/real_time/threads:2" -> group BM_Alloc, impl gofin, size 16.
      const std::string& family = r.run_name.function_name;
      const std::size_t a = family.find('/');
      const std::size_t b = family.find('/', a + 1);
      if (a == std::string::npos || b == std::string::npos) continue;
      const Key key{family.substr(0, a), family.substr(b + 1), r.threads};
      auto& slot = ns_per_item_[key][family.substr(a + 1, b - a - 1)];
      if (median || !slot.second) slot = {1e9 / it->second.value, median};
    }
    ConsoleReporter::ReportRuns(runs);
  }

  void PrintSummary() const {
    std::printf("\nSummary: ns per item (1e9 / items_per_second; lower is better)\n");
    std::printf("%-16s %7s %3s %10s %10s %10s %12s %12s\n", "benchmark", "bytes", "thr", "gofin",
                "bdwgc", "malloc", "gofin/bdwgc", "gofin/malloc");
    for (const auto& [key, impls] : ns_per_item_) {
      auto get = [&](const char* impl) {
        const auto it = impls.find(impl);
        return it == impls.end() ? 0.0 : it->second.first;
      };
      const double g = get("gofin");
      const double w = get("bdwgc");
      const double m = get("malloc");
      std::printf("%-16s %7s %3lld %10.2f %10.2f %10.2f %12.2f %12.2f\n",
                  std::get<0>(key).c_str(), std::get<1>(key).c_str(),
                  static_cast<long long>(std::get<2>(key)), g, w, m, w > 0 ? g / w : 0.0,
                  m > 0 ? g / m : 0.0);
    }
  }

 private:
  using Key = std::tuple<std::string, std::string, std::int64_t>;
  struct KeyLess {
    bool operator()(const Key& x, const Key& y) const {
      if (std::get<0>(x) != std::get<0>(y)) return std::get<0>(x) < std::get<0>(y);
      const long sx = std::strtol(std::get<1>(x).c_str(), nullptr, 10);
      const long sy = std::strtol(std::get<1>(y).c_str(), nullptr, 10);
      if (sx != sy) return sx < sy;
      return std::get<2>(x) < std::get<2>(y);
    }
  };
  // impl -> (ns per item, taken from a median aggregate)
  std::map<Key, std::map<std::string, std::pair<double, bool>>, KeyLess> ns_per_item_;
};

}  // namespace

int main(int argc, char** argv) {
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  GC_INIT();
  GC_allow_register_threads();
  (void)gofin::Alloc(1);  // registers the main thread with gofin too
  RegisterAll();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  reporter.PrintSummary();
  benchmark::Shutdown();
  return 0;
}
