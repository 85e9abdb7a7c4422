// C++ destructors of collected objects: gofin vs bdwgc (Boehm GC) vs new/delete.
//
//   BM_DestructorsByGC/<impl>/<n>  n objects with a destructor made garbage, then one explicit
//                              collection; an item is one object allocated, destroyed and
//                              freed. gofin: New<Tracked> and GC() (which returns once the
//                              destructors ran and their memory is free); bdwgc: GC_MALLOC,
//                              placement new and GC_register_finalizer_ignore_self calling
//                              ~Tracked (what gc_cpp.h's gc_cleanup does), then GC_gcollect and
//                              GC_invoke_finalizers until every destructor ran.
//   BM_DestructorChurn/<impl>  objects with a destructor allocated and dropped at once, the
//                              collectors pacing themselves (gofin: GOGC=100; bdwgc: its
//                              default, finalizers run by its allocation calls); new/delete as
//                              the floor.
//
// gofin runs destructors on its destructor thread (never inside an allocation or a
// collection); bdwgc runs its finalizers on the allocating thread. After the run a summary
// prints ns per object and the ratios gofin/bdwgc and gofin/new-delete.
#define GC_THREADS
#include <benchmark/benchmark.h>
#include <gc.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <gofin/gofin.hpp>
#include <map>
#include <new>
#include <string>

namespace {

std::atomic<std::uint64_t> g_destroyed{0};

struct Tracked {
  ~Tracked() { g_destroyed.fetch_add(1, std::memory_order_relaxed); }
  Tracked* next = nullptr;
  std::uint64_t value = 0;
};

// ---- gofin ------------------------------------------------------------------------------------

[[gnu::noinline]] void GofinMakeGarbage(int n) {
  for (int i = 0; i < n; ++i) benchmark::DoNotOptimize(gofin::New<Tracked>());
}

void GofinByGC(benchmark::State& st) {
  const auto n = static_cast<int>(st.range(0));
  for (auto _ : st) {
    GofinMakeGarbage(n);
    gofin::GC();
  }
  st.SetItemsProcessed(st.iterations() * n);
}

void GofinChurn(benchmark::State& st) {
  for (auto _ : st) benchmark::DoNotOptimize(gofin::New<Tracked>());
  st.SetItemsProcessed(st.iterations());
}

// ---- bdwgc ------------------------------------------------------------------------------------

void BdwgcDestroy(void* obj, void* /*data*/) { static_cast<Tracked*>(obj)->~Tracked(); }

Tracked* BdwgcNew() {
  void* mem = GC_MALLOC(sizeof(Tracked));
  if (mem == nullptr) throw std::bad_alloc();
  auto* t = ::new (mem) Tracked();
  GC_register_finalizer_ignore_self(mem, &BdwgcDestroy, nullptr, nullptr, nullptr);
  return t;
}

[[gnu::noinline]] void BdwgcMakeGarbage(int n) {
  for (int i = 0; i < n; ++i) benchmark::DoNotOptimize(BdwgcNew());
}

void BdwgcByGC(benchmark::State& st) {
  const auto n = static_cast<int>(st.range(0));
  for (auto _ : st) {
    const std::uint64_t want = g_destroyed.load(std::memory_order_relaxed) + n;
    BdwgcMakeGarbage(n);
    // A stale stack word can keep an object one more cycle (as in gofin): bounded retries.
    for (int i = 0; i < 8 && g_destroyed.load(std::memory_order_relaxed) < want; ++i) {
      GC_gcollect();
      GC_invoke_finalizers();
    }
  }
  st.SetItemsProcessed(st.iterations() * n);
}

void BdwgcChurn(benchmark::State& st) {
  for (auto _ : st) benchmark::DoNotOptimize(BdwgcNew());
  st.SetItemsProcessed(st.iterations());
}

// ---- new/delete -------------------------------------------------------------------------------

void NewDeleteChurn(benchmark::State& st) {
  for (auto _ : st) {
    auto* t = new Tracked();
    benchmark::DoNotOptimize(t);
    delete t;
  }
  st.SetItemsProcessed(st.iterations());
}

// Collects ns/object per (benchmark, impl) from the run, then prints the ratios.
class Summary : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& r : runs) {
      if (r.run_type != Run::RT_Iteration || r.error_occurred) continue;
      const auto it = r.counters.find("items_per_second");
      if (it == r.counters.end() || it->second.value <= 0) continue;
      const std::string name = r.benchmark_name();
      const auto slash = name.find('/');
      if (slash == std::string::npos) continue;
      // "BM_X/impl[/n]/real_time": the row is BM_X[/n], the column the impl.
      const auto end = name.find('/', slash + 1);
      const std::string impl = name.substr(slash + 1, end - slash - 1);
      std::string row = name.substr(0, slash);
      if (end != std::string::npos) {
        const std::string rest = name.substr(end + 1);
        if (rest != "real_time") row.append(1, '/').append(rest, 0, rest.find('/'));
      }
      ns_[row][impl] = 1e9 / it->second.value;
    }
  }
  void Print() const {
    std::printf("\nns per object (lower is better)\n");
    for (const auto& [bench, impls] : ns_) {
      std::printf("  %-20s", bench.c_str());
      for (const auto& [impl, ns] : impls) std::printf("  %s %.1f", impl.c_str(), ns);
      const auto g = impls.find("gofin");
      const auto b = impls.find("bdwgc");
      const auto m = impls.find("new_delete");
      if (g != impls.end() && b != impls.end())
        std::printf("  gofin/bdwgc %.2f", g->second / b->second);
      if (g != impls.end() && m != impls.end()) {
        std::printf("  gofin/new_delete %.2f", g->second / m->second);
      }
      std::printf("\n");
    }
  }

 private:
  std::map<std::string, std::map<std::string, double>> ns_;
};

}  // namespace

int main(int argc, char** argv) {
  GC_INIT();
  GC_allow_register_threads();
  for (const int n : {4096, 65536}) {
    benchmark::RegisterBenchmark("BM_DestructorsByGC/gofin", GofinByGC)->Arg(n)->UseRealTime();
    benchmark::RegisterBenchmark("BM_DestructorsByGC/bdwgc", BdwgcByGC)->Arg(n)->UseRealTime();
  }
  benchmark::RegisterBenchmark("BM_DestructorChurn/gofin", GofinChurn)->UseRealTime();
  benchmark::RegisterBenchmark("BM_DestructorChurn/bdwgc", BdwgcChurn)->UseRealTime();
  benchmark::RegisterBenchmark("BM_DestructorChurn/new_delete", NewDeleteChurn)->UseRealTime();
  benchmark::Initialize(&argc, argv);
  Summary summary;
  benchmark::RunSpecifiedBenchmarks(&summary);
  summary.Print();
  benchmark::Shutdown();
  return 0;
}
