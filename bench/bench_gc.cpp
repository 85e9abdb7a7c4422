// Full-collection time: gofin::GC() vs bdwgc's GC_gcollect() over a live binary tree of
// 16-byte nodes ({left, right}) of 32 MiB and 256 MiB (2 Mi and 16 Mi nodes).
//
//   gofin_GC/live_MiB:<n>/workers:<w>   one gofin::GC() per iteration (mark + full sweep, as
//                                       Go's runtime.GC(); returns after sweeping)
//   bdwgc_GC/live_MiB:<n>/markers:<m>   one GC_gcollect() per iteration (stop-the-world mark;
//                                       bdwgc sweeps lazily, so its number is mostly marking)
//
// Counters: ms_per_GiB = time of one collection per GiB of live tree (nodes x 16 bytes);
// stw_ms = the stopped-world part of one collection: for gofin the growth of
// MemStats.PauseTotalNs, for bdwgc (stop-the-world, not incremental) the whole GC_gcollect().
// bdwgc pads every object by one byte (all-interior-pointers), so its 16-byte node occupies a
// 32-byte object: its heap holds twice the bytes for the same tree.
//
// Workers: gofin reads GOFIN_GCWORKERS once per process (default: the number of cores), and
// bdwgc reads GC_MARKERS once; the benchmark names carry the counts in effect. To compare one
// and two workers, run the binary twice:
//   GOFIN_GCWORKERS=1 GC_MARKERS=1 ./bench/bench_gc
//   GOFIN_GCWORKERS=2 GC_MARKERS=2 ./bench/bench_gc
// --benchmark_filter=gofin or =bdwgc runs one collector only.
#define GC_THREADS
#include <gc.h>
#include <unistd.h>

#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <gofin/gofin.hpp>
#include <string>
#include <vector>

#include "gc/collector.hpp"

namespace {

constexpr std::size_t kMiB = std::size_t{1} << 20;

struct Node {
  Node* left;
  Node* right;
};
static_assert(sizeof(Node) == 16);

// A tree of exactly n nodes, as balanced as possible (recursion depth log2 n).
template <class AllocFn>
Node* Build(std::size_t n, AllocFn alloc) {
  if (n == 0) return nullptr;
  const std::size_t rest = n - 1;
  Node* left = Build(rest / 2, alloc);
  Node* right = Build(rest - rest / 2, alloc);
  Node* x = alloc();
  x->left = left;
  x->right = right;
  return x;
}

std::size_t Count(const Node* n) {
  std::size_t c = 0;
  while (n != nullptr) {  // recurse left, loop right
    c += 1 + Count(n->left);
    n = n->right;
  }
  return c;
}

double GiB(std::size_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024 * 1024); }

[[gnu::noinline]] void BuildGofin(gofin::Root<Node>& root, std::size_t nodes) {
  root = Build(nodes, [] { return gofin::New<Node>(); });
}
[[gnu::noinline]] std::size_t CountGofin(const gofin::Root<Node>& root) { return Count(root.get()); }

void BM_GofinGC(benchmark::State& state, std::size_t live_mib) {
  const std::size_t nodes = live_mib * kMiB / sizeof(Node);
  gofin::Root<Node> root;
  BuildGofin(root, nodes);
  gofin::GC();  // not timed: the first collection after building
  std::uint64_t stw_ns = 0;
  for (auto _ : state) {
    const std::uint64_t p0 = gofin::ReadMemStats().PauseTotalNs;
    gofin::GC();
    state.PauseTiming();
    stw_ns += gofin::ReadMemStats().PauseTotalNs - p0;
    state.ResumeTiming();
  }
  if (CountGofin(root) != nodes) state.SkipWithError("gofin: the live tree lost nodes");
  const double iters = static_cast<double>(state.iterations());
  state.counters["live_MiB"] = static_cast<double>(live_mib);
  state.counters["stw_ms"] = static_cast<double>(stw_ns) / 1e6 / iters;
  // The reporter turns this into ms_per_GiB.
  state.counters["GiB"] = GiB(nodes * sizeof(Node));
  root.reset();
  gofin::GC();  // give the tree back before the next benchmark
}

void BM_BdwgcGC(benchmark::State& state, std::size_t live_mib) {
  const std::size_t nodes = live_mib * kMiB / sizeof(Node);
  // The root lives in a static (a data-segment root for bdwgc).
  static Node* root = nullptr;
  root = Build(nodes, [] { return static_cast<Node*>(GC_MALLOC(sizeof(Node))); });
  GC_gcollect();
  double stw_ms = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    GC_gcollect();
    stw_ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                  .count();
  }
  if (Count(root) != nodes) state.SkipWithError("bdwgc: the live tree lost nodes");
  state.counters["live_MiB"] = static_cast<double>(live_mib);
  state.counters["stw_ms"] = stw_ms / static_cast<double>(state.iterations());
  state.counters["GiB"] = GiB(nodes * sizeof(Node));
  root = nullptr;
  GC_gcollect();
}

// Adds ms_per_GiB (real time per iteration / live GiB) to every run before printing.
class PerGiBReporter : public benchmark::ConsoleReporter {
 public:
  PerGiBReporter() : ConsoleReporter(isatty(STDOUT_FILENO) != 0 ? OO_Defaults : OO_Tabular) {}
  void ReportRuns(const std::vector<Run>& runs) override {
    std::vector<Run> copy = runs;
    for (Run& r : copy) {
      auto it = r.counters.find("GiB");
      if (it == r.counters.end() || r.iterations == 0) continue;
      const double ms = r.GetAdjustedRealTime() *
                        benchmark::GetTimeUnitMultiplier(benchmark::kMillisecond) /
                        benchmark::GetTimeUnitMultiplier(r.time_unit);
      r.counters["ms_per_GiB"] = benchmark::Counter(ms / it->second.value);
      r.counters.erase(it);
    }
    ConsoleReporter::ReportRuns(copy);
  }
};

}  // namespace

int main(int argc, char** argv) {
  GC_INIT();
  GC_allow_register_threads();
  GC_start_mark_threads();  // bdwgc's parallel markers (GC_MARKERS; default: the cores)
  gofin::internal::EnsureCollectorInitialized();
  const int workers = gofin::internal::Config().workers;
  const int markers = GC_get_parallel() + 1;

  benchmark::Initialize(&argc, argv);
  for (const std::size_t mib : {std::size_t{32}, std::size_t{256}}) {
    const std::string suffix = "/live_MiB:" + std::to_string(mib);
    const std::string gofin_name = "gofin_GC" + suffix + "/workers:" + std::to_string(workers);
    const std::string bdwgc_name = "bdwgc_GC" + suffix + "/markers:" + std::to_string(markers);
    benchmark::RegisterBenchmark(gofin_name.c_str(),
                                 [mib](benchmark::State& st) { BM_GofinGC(st, mib); })
        ->Iterations(5)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
    benchmark::RegisterBenchmark(bdwgc_name.c_str(),
                                 [mib](benchmark::State& st) { BM_BdwgcGC(st, mib); })
        ->Iterations(5)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  }
  PerGiBReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}
