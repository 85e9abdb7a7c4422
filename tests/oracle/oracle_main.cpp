// gofin_oracle: a seeded, model-based reliability driver for gofin's collector, finalizers,
// cleanups (AddCleanup, Cleanup::Stop) and weak pointers (weak::Make, Value()).
//
//   gofin_oracle [--seed S] [--ops N] [--threads T] [--seconds X] [--roots R] [--verbose]
//
// Each phase plans random operations for T mutator threads against a copy of the model (each
// thread owns the root slots of some connected components of the graph, so the threads never
// touch the same object and the plan is deterministic for a seed), runs them on short-lived
// std::threads with automatic collections (low GC percent or a tiny memory limit), joins
// them, and replays the event log on the model with the safety checks (model.hpp). Then it
// runs exact collections (testing::GC(kNoHeapPointers), pacing off) whose outcome the model
// predicts exactly, walks the real graph, and every few phases drops every root and checks
// that all finalizers outside finalizer cycles ran within (longest chain + 2) cycles.
//
// Prints the seed first; on any violation prints every message with the seed and phase and
// exits 1. Replay a failure with the same --seed/--threads and the --ops it printed.
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "model.hpp"

namespace {

using oracle::Model;
using oracle::Op;

struct Options {
  std::uint64_t seed = 0;
  bool seed_given = false;
  long long ops = -1;
  int threads = 2;
  double seconds = -1;
  int roots = 24;
  int round = 6;     // phases between final drains
  int watchdog = 0;  // seconds without progress before aborting (0: 300, or 900 for long soaks)
  bool verbose = false;
};

[[noreturn]] void Usage() {
  std::fprintf(stderr,
               "usage: gofin_oracle [--seed S] [--ops N] [--threads T] [--seconds X] [--roots R] "
               "[--round P] [--watchdog S] [--verbose]\n");
  std::exit(2);
}

Options Parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto val = [&]() -> const char* {
      if (i + 1 >= argc) Usage();
      return argv[++i];
    };
    if (a == "--seed") {
      o.seed = std::strtoull(val(), nullptr, 0);
      o.seed_given = true;
    } else if (a == "--ops") {
      o.ops = std::atoll(val());
    } else if (a == "--threads") {
      o.threads = std::max(1, std::atoi(val()));
    } else if (a == "--seconds") {
      o.seconds = std::atof(val());
    } else if (a == "--roots") {
      o.roots = std::max(4, std::atoi(val()));
    } else if (a == "--round") {
      o.round = std::max(1, std::atoi(val()));
    } else if (a == "--watchdog") {
      o.watchdog = std::max(1, std::atoi(val()));
    } else if (a == "--verbose" || a == "-v") {
      o.verbose = true;
    } else {
      Usage();
    }
  }
  if (!o.seed_given)
    o.seed =
        std::random_device{}() ^ (static_cast<std::uint64_t>(getpid()) << 32) ^
        static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  if (o.ops < 0 && o.seconds < 0) o.ops = 20000;
  return o;
}

// Aborts (with the seed) if the run stops making progress: a deadlock is a failure too.
class Watchdog {
 public:
  Watchdog(std::uint64_t seed, int limit_s) : seed_(seed), limit_(limit_s), t_([this] { Run(); }) {}
  ~Watchdog() {
    {
      std::lock_guard l(mu_);
      done_ = true;
    }
    cv_.notify_all();
    t_.join();
  }
  void Kick(const char* what) {
    std::lock_guard l(mu_);
    last_ = std::chrono::steady_clock::now();
    what_ = what;
  }

 private:
  void Run() {
    std::unique_lock l(mu_);
    while (!done_) {
      cv_.wait_for(l, std::chrono::seconds(1));
      if (done_) return;
      if (std::chrono::steady_clock::now() - last_ > std::chrono::seconds(limit_)) {
        std::fprintf(
            stderr,
            "gofin_oracle: FAILED seed=%llu: no progress for %d s (stuck in: %s); aborting\n",
            static_cast<unsigned long long>(seed_), limit_, what_);
        std::fflush(stderr);
        std::abort();
      }
    }
  }
  std::uint64_t seed_;
  int limit_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::chrono::steady_clock::time_point last_ = std::chrono::steady_clock::now();
  const char* what_ = "start";
  std::thread t_;
};

struct UnionFind {
  std::unordered_map<std::uint64_t, std::uint64_t> parent;
  std::uint64_t Find(std::uint64_t x) {
    auto it = parent.find(x);
    if (it == parent.end()) {
      parent[x] = x;
      return x;
    }
    if (it->second == x) return x;
    const std::uint64_t r = Find(it->second);
    parent[x] = r;
    return r;
  }
  void Unite(std::uint64_t a, std::uint64_t b) { parent[Find(a)] = Find(b); }
};

class Oracle {
 public:
  explicit Oracle(const Options& o)
      : o_(o),
        model_(o.roots, o.seed),
        rng_(o.seed),
        watchdog_(o.seed, o.watchdog > 0    ? o.watchdog
                          : o.seconds > 600 ? 900
                                            : 300) {
    oracle::g_shared = new oracle::Shared(o.roots);  // lives for the process
    oracle::g_shared->seed = o.seed;
    gofin::debug::SetGCPercent(-1);
  }

  int Run() {
    const auto t0 = std::chrono::steady_clock::now();
    auto out_of_time = [&] {
      return o_.seconds >= 0 &&
             std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() >=
                 o_.seconds;
    };
    auto out_of_ops = [&] { return o_.ops >= 0 && ops_done_ >= o_.ops; };
    while (!out_of_time() && !out_of_ops()) {
      Phase();
      if (!Check()) return 1;
      if (phase_ % o_.round == 0) {
        Drop();
        if (!Check()) return 1;
      }
    }
    Drop();
    if (!Check()) return 1;
    const gofin::MemStats ms = gofin::ReadMemStats();
    const gofin::FinalizerStats fs = gofin::ReadFinalizerStats();
    std::printf(
        "gofin_oracle: OK seed=%llu phases=%d ops=%lld nodes=%llu finalizers=%llu destructors=%llu "
        "cleanups=%llu weak-checks=%llu exact-cycles=%llu final-drains=%d frozen=%zu NumGC=%llu "
        "(forced %llu) lib-finalizers=%llu/%llu "
        "%.1fs\n",
        static_cast<unsigned long long>(o_.seed), phase_, ops_done_,
        static_cast<unsigned long long>(next_id_ - 1),
        static_cast<unsigned long long>(model_.finalizers_run),
        static_cast<unsigned long long>(model_.destructors_run),
        static_cast<unsigned long long>(model_.cleanups_run),
        static_cast<unsigned long long>(model_.weak_checks),
        static_cast<unsigned long long>(exact_), drains_, model_.frozen.size(),
        static_cast<unsigned long long>(ms.NumGC), static_cast<unsigned long long>(ms.NumForcedGC),
        static_cast<unsigned long long>(fs.Executed), static_cast<unsigned long long>(fs.Queued),
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    return 0;
  }

 private:
  bool Check() {
    oracle::CollectViolations(model_);
    if (model_.errors.empty()) return true;
    std::fprintf(stderr,
                 "gofin_oracle: FAILED seed=%llu threads=%d phase=%d ops=%lld (replay: --seed %llu "
                 "--threads %d --ops %lld)\n",
                 static_cast<unsigned long long>(o_.seed), o_.threads, phase_, ops_done_,
                 static_cast<unsigned long long>(o_.seed), o_.threads, ops_done_);
    for (const auto& e : model_.errors) std::fprintf(stderr, "  violation: %s\n", e.c_str());
    std::fflush(stderr);
    return false;
  }

  void Phase() {
    ++phase_;
    watchdog_.Kick("planning");
    Model plan = model_;
    // Ownership: each connected component of the graph (and the root slots into it) belongs to
    // one thread for this phase.
    UnionFind uf;
    for (auto& [id, n] : plan.alive) {
      uf.Find(id);
      for (const auto& e : n.child)
        if (e.id != 0 && plan.alive.count(e.id)) uf.Unite(id, e.id);
    }
    std::unordered_map<std::uint64_t, int> owner;
    std::vector<std::vector<int>> slots(static_cast<std::size_t>(o_.threads));
    for (int s = 0; s < o_.roots; ++s) {
      const std::uint64_t id = plan.roots[static_cast<std::size_t>(s)];
      int t;
      if (id == 0) {
        t = static_cast<int>(rng_.Below(static_cast<std::uint64_t>(o_.threads)));
      } else {
        const std::uint64_t c = uf.Find(id);
        auto it = owner.find(c);
        if (it == owner.end())
          it =
              owner.emplace(c, static_cast<int>(rng_.Below(static_cast<std::uint64_t>(o_.threads))))
                  .first;
        t = it->second;
      }
      slots[static_cast<std::size_t>(t)].push_back(s);
    }
    std::vector<std::vector<Op>> ops(static_cast<std::size_t>(o_.threads));
    long long planned = 0;
    for (int t = 0; t < o_.threads; ++t) {
      oracle::Planner p(plan, rng_, slots[static_cast<std::size_t>(t)], &next_id_);
      // Weak slots: thread t owns those with w % threads == t (in every phase).
      std::vector<int> wslots;
      for (int w = t; w < oracle::kWeakSlots; w += o_.threads) wslots.push_back(w);
      p.SetWeakSlots(std::move(wslots));
      const int n = 20 + static_cast<int>(rng_.Below(280));
      for (int i = 0; i < n; ++i) {
        Op op;
        if (p.Next(op)) ops[static_cast<std::size_t>(t)].push_back(std::move(op));
      }
      planned += static_cast<long long>(ops[static_cast<std::size_t>(t)].size());
    }
    // Automatic collections during the phase: low GC percent, or a memory limit far below the
    // heap with pacing off.
    static const int kPercents[] = {1, 2, 10, 50, 100};
    const bool limit = rng_.Chance(15);
    if (limit) {
      gofin::debug::SetGCPercent(-1);
      gofin::debug::SetMemoryLimit(256 << 10);
    } else {
      gofin::debug::SetGCPercent(kPercents[rng_.Below(5)]);
    }
    const std::uint64_t gc_before = gofin::ReadMemStats().NumGC;
    watchdog_.Kick("mutators");
    {
      std::vector<std::thread> th;
      for (int t = 0; t < o_.threads; ++t) {
        th.emplace_back([&ops, t] {
          gofin::ThreadScope scope;
          for (const Op& op : ops[static_cast<std::size_t>(t)]) {
            try {
              if (!oracle::Execute(op, t)) break;
            } catch (const std::exception& e) {
              oracle::g_shared->Violation(
                  oracle::Fmt("thread %d: unexpected exception: %s", t, e.what()));
              break;
            }
          }
        });
      }
      for (auto& t : th) t.join();
    }
    gofin::debug::SetGCPercent(-1);
    gofin::debug::SetMemoryLimit(INT64_MAX);
    ops_done_ += planned;
    watchdog_.Kick("settle");
    model_.where =
        oracle::Fmt("phase %d (concurrent, %s)", phase_, limit ? "memory limit" : "low GC percent");
    if (!oracle::Drain())
      model_.Fail("the finalizer queue did not drain within 120 s after the mutators exited");
    // Settle: finishes the sweeps the automatic cycles left (they may still queue finalizers
    // and run destructors); everything is then in the log.
    gofin::testing::GC(gofin::testing::StackState::kNoHeapPointers);
    if (!oracle::Drain()) model_.Fail("the finalizer queue did not drain within 120 s (settle)");
    model_.ApplyAll(oracle::g_shared->Take());
    oracle::CollectViolations(model_);
    const std::uint64_t auto_cycles = gofin::ReadMemStats().NumGC - gc_before;
    // Self-check of the harness: the replayed graph is the planned graph.
    if (model_.errors.empty()) {
      if (plan.roots != model_.roots) model_.Fail("harness: replayed roots differ from the plan");
      for (auto& [id, n] : model_.alive) {
        auto it = plan.alive.find(id);
        if (it == plan.alive.end()) continue;
        for (int k = 0; k < oracle::kChildren; ++k)
          if (!(it->second.child[k] == n.child[k]))
            model_.Fail(oracle::Fmt("harness: node %llu edges differ from the plan",
                                    static_cast<unsigned long long>(id)));
      }
    }
    if (!model_.errors.empty()) return;
    const int exact = 1 + static_cast<int>(rng_.Below(2));
    for (int i = 0; i < exact && model_.errors.empty(); ++i) {
      watchdog_.Kick("exact cycle");
      model_.where = oracle::Fmt("phase %d exact cycle %d", phase_, i + 1);
      oracle::ExactCycle(model_);
      ++exact_;
    }
    if (!model_.errors.empty()) return;
    model_.where = oracle::Fmt("phase %d graph walk", phase_);
    oracle::CheckHeapGraph(model_);
    if (o_.verbose) {
      std::size_t regd = 0;
      for (auto& [id, n] : model_.alive) regd += n.reg.g != 0;
      std::fprintf(stderr,
                   "phase %d: %lld ops, %llu automatic cycles, %zu live nodes (%zu with "
                   "finalizers), %llu finalizers, %llu destructors\n",
                   phase_, planned, static_cast<unsigned long long>(auto_cycles),
                   model_.alive.size(), regd,
                   static_cast<unsigned long long>(model_.finalizers_run),
                   static_cast<unsigned long long>(model_.destructors_run));
    }
    Maintain();
  }

  // The checker moves resurrected objects back into ordinary roots (so mutators use them
  // again), forgets some, and drops a root now and then.
  void Maintain() {
    oracle::Shared& s = *oracle::g_shared;
    for (int k = 0; k < oracle::kResSlots; ++k) {
      const std::uint64_t id = model_.res[static_cast<std::size_t>(k)];
      if (id == 0) continue;
      const std::uint64_t r = rng_.Below(100);
      if (r < 45) {
        std::vector<int> empty;
        for (int i = 0; i < o_.roots; ++i)
          if (model_.roots[static_cast<std::size_t>(i)] == 0) empty.push_back(i);
        if (empty.empty()) continue;
        const int slot = empty[rng_.Below(empty.size())];
        s.roots[static_cast<std::size_t>(slot)] = s.res[static_cast<std::size_t>(k)].get();
        s.res[static_cast<std::size_t>(k)].reset();
        model_.SetRoot(slot, id);
        model_.SetRes(k, 0);
      } else if (r < 75) {
        s.res[static_cast<std::size_t>(k)].reset();
        model_.SetRes(k, 0);
      }
    }
    if (rng_.Chance(30)) {
      const int slot = static_cast<int>(rng_.Below(static_cast<std::uint64_t>(o_.roots)));
      s.roots[static_cast<std::size_t>(slot)].reset();
      model_.SetRoot(slot, 0);
    }
  }

  // Objects in finalizer cycles are never freed: they would pile up over a long soak (and make
  // every later collection slower). Before a final drain the checker removes most finalizers
  // that would keep something forever (from objects it can still reach), keeping about a
  // quarter of them for the "never finalized" check.
  void PruneFinalizerCycles() {
    const Model::Fixpoint fp = model_.ComputeFixpoint();
    if (fp.stuck.empty()) return;
    std::unordered_map<std::uint64_t, oracle::Path> paths;
    std::vector<std::uint64_t> order;
    for (int s = 0; s < o_.roots; ++s) {
      const std::uint64_t id = model_.roots[static_cast<std::size_t>(s)];
      if (id == 0 || paths.count(id)) continue;
      oracle::Path p;
      p.slot = s;
      p.ids.push_back(id);
      paths[id] = p;
      order.push_back(id);
    }
    for (std::size_t i = 0; i < order.size(); ++i) {
      const oracle::Path base = paths[order[i]];
      if (base.idx.size() >= 200) continue;
      for (int k = 0; k < oracle::kChildren; ++k) {
        const oracle::Edge& e = model_.alive[order[i]].child[k];
        if (e.id == 0 || paths.count(e.id)) continue;
        oracle::Path q = base;
        q.idx.push_back(static_cast<std::uint8_t>(k));
        q.offs.push_back(e.off);
        q.ids.push_back(e.id);
        paths[e.id] = std::move(q);
        order.push_back(e.id);
      }
    }
    // Cleanups whose argument keeps their object forever: stopped through their handles.
    for (std::uint64_t id : order) {
      if (fp.stuck.count(id) && !rng_.Chance(25)) oracle::StopArgCleanups(model_, id);
    }
    for (std::uint64_t id : order) {
      if (!fp.stuck.count(id) || !model_.Registered(id) || rng_.Chance(25)) continue;
      oracle::Node* x = oracle::Navigate(paths[id], oracle::kChecker);
      if (x == nullptr) return;  // a violation was recorded
      gofin::SetFinalizer(x, nullptr);
      model_.SetReg(id, oracle::Reg{});
    }
  }

  void Drop() {
    watchdog_.Kick("final drain");
    model_.where = oracle::Fmt("pruning before the final drain after phase %d", phase_);
    PruneFinalizerCycles();
    oracle::CollectViolations(model_);
    if (!model_.errors.empty()) return;
    model_.where = oracle::Fmt("final drain after phase %d", phase_);
    const int cycles = oracle::FinalDrain(model_);
    exact_ += static_cast<std::uint64_t>(cycles);
    ++drains_;
    model_.watermark = next_id_;
    if (o_.verbose)
      std::fprintf(stderr, "final drain after phase %d: %d cycles, %zu frozen\n", phase_, cycles,
                   model_.frozen.size());
  }

  Options o_;
  Model model_;
  oracle::Rng rng_;
  Watchdog watchdog_;
  std::uint64_t next_id_ = 1;
  long long ops_done_ = 0;
  int phase_ = 0;
  int drains_ = 0;
  std::uint64_t exact_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
  const Options o = Parse(argc, argv);
  std::printf("gofin_oracle: seed=%llu threads=%d ops=%lld seconds=%g roots=%d\n",
              static_cast<unsigned long long>(o.seed), o.threads, o.ops, o.seconds, o.roots);
  std::fflush(stdout);
  Oracle oracle(o);
  const int rc = oracle.Run();
  std::fflush(stdout);
  std::fflush(stderr);
  // Skip static destructors: the finalizer thread and the heap live for the process.
  std::_Exit(rc);
}
