// cycles: why a finalizer on an object in a reference cycle keeps the whole cycle alive, and
// why a cleanup does not.
//
// Go idiom: runtime.SetFinalizer's documentation: "If a cyclic structure includes a block with
// a finalizer, that cycle is not guaranteed to be garbage collected and the finalizer is not
// guaranteed to run, because there is no ordering that respects the dependencies." Go 1.24's
// runtime.AddCleanup was made for this: a cleanup gets an argument, not the object, so nothing
// has to stay alive for it, and cycles are collected.
//
// Three scenes: rings of nodes with finalizers (never collected), the same rings with cleanups
// (collected), and a finalized ring broken into a chain by hand (collected one node per cycle,
// each finalizer in the order the pointers dictate).
#include <atomic>
#include <chrono>
#include <cstdio>
#include <gofin/gofin.hpp>
#include <thread>

namespace {

using namespace std::chrono_literals;

struct Node {
  Node* next = nullptr;
  int id = 0;
};

constexpr int kRings = 20;
constexpr int kRingSize = 8;

// Finalizers and cleanups run on gofin's own threads: the counters are atomic.
std::atomic<int> g_finalized{0};
std::atomic<int> g_cleaned{0};
std::atomic<bool> g_out_of_order{false};

// A ring of n nodes: each points to the next, the last back to the first.
Node* MakeRing(int n) {
  Node* first = gofin::New<Node>();
  Node* last = first;
  for (int i = 1; i < n; ++i) {
    last->next = gofin::New<Node>();
    last = last->next;
    last->id = i;
  }
  last->next = first;
  return first;
}

// Builds rings and drops them, on a thread of its own: once the thread is gone its stack is
// no longer scanned, so no stale copy of a node pointer (gofin scans stacks conservatively)
// can keep a ring alive. noinline for the same reason when called directly.
template <class F>
void OnFreshThread(F f) {
  std::thread(f).join();
}

[[gnu::noinline]] void MakeFinalizedRings() {
  for (int r = 0; r < kRings; ++r) {
    Node* n = MakeRing(kRingSize);
    for (int i = 0; i < kRingSize; ++i, n = n->next) {
      gofin::SetFinalizer(n, [](Node*) { g_finalized.fetch_add(1); });
    }
  }
}

[[gnu::noinline]] void MakeCleanedRings() {
  for (int r = 0; r < kRings; ++r) {
    Node* n = MakeRing(kRingSize);
    for (int i = 0; i < kRingSize; ++i, n = n->next) {
      // The argument is the node's id, a copy: the cleanup does not reach the node.
      gofin::AddCleanup(
          n, [](int /*id*/) { g_cleaned.fetch_add(1); }, n->id);
    }
  }
}

gofin::Root<Node> g_ring;  // a root, so the ring of scene 3 stays alive until we let go

[[gnu::noinline]] void MakeRootedFinalizedRing() {
  Node* n = MakeRing(kRingSize);
  for (int i = 0; i < kRingSize; ++i, n = n->next) {
    gofin::SetFinalizer(n, [](Node* node) {
      std::printf("     finalizer of node %d\n", node->id);
      // One finalizer thread runs them one at a time: a plain check of the order suffices.
      if (node->id != g_finalized.load()) g_out_of_order.store(true);
      g_finalized.fetch_add(1);
    });
  }
  g_ring = n;
}

[[gnu::noinline]] void BreakRingAndDrop() {
  Node* last = g_ring.get();
  while (last->next != g_ring.get()) last = last->next;
  last->next = nullptr;  // now a chain: node 0 -> 1 -> ... -> 7
  g_ring.reset();
}

bool Cycle(const char* what) {
  gofin::GC();
  if (!gofin::testing::BlockUntilEmptyFinalizerQueue(30s) ||
      !gofin::testing::BlockUntilEmptyCleanupQueue(30s)) {
    std::printf("FAIL: %s: the queues did not drain within 30 s\n", what);
    return false;
  }
  return true;
}

}  // namespace

int main() {
  std::printf("cycles: finalizers keep cycles alive, cleanups do not\n");
  constexpr int kNodes = kRings * kRingSize;

  // Scene 1. A finalizer gets the object itself, so everything the object points to must
  // still be intact when it runs: the collector keeps all that is reachable from a finalized
  // object alive (marks it) for that cycle. In a ring each node is reachable from every other
  // one, so each node is kept alive by its neighbour's finalizer, forever: no node is ever
  // found unreachable, no finalizer is queued, and the ring is never freed (a leak, as in Go).
  // GOFIN_DEBUG=checkfinalizers=1 reports such objects ("reachable from finalizer").
  std::printf("1. %d rings of %d nodes, each node with a finalizer, dropped\n", kRings, kRingSize);
  OnFreshThread(MakeFinalizedRings);
  const std::uint64_t executed_before = gofin::ReadFinalizerStats().Executed;
  for (int i = 0; i < 3; ++i) {
    if (!Cycle("finalized rings")) return 1;
  }
  const std::uint64_t executed_after = gofin::ReadFinalizerStats().Executed;
  std::printf("   after 3 GCs: %d finalizers ran (FinalizerStats.Executed %llu -> %llu)\n",
              g_finalized.load(), static_cast<unsigned long long>(executed_before),
              static_cast<unsigned long long>(executed_after));
  if (g_finalized.load() != 0 || executed_after != executed_before) {
    std::printf("FAIL: a finalizer in a cycle ran\n");
    return 1;
  }

  // Scene 2. A cleanup gets only its argument (here a copy of the id): the object is freed in
  // the cycle that finds it unreachable, with nothing left to keep alive. The rings go like
  // any other garbage, and the cleanups run afterwards.
  std::printf("2. the same rings with a cleanup on each node instead, dropped\n");
  OnFreshThread(MakeCleanedRings);
  for (int i = 1; i <= 3 && g_cleaned.load() < kNodes; ++i) {
    if (!Cycle("cleaned rings")) return 1;
    std::printf("   after GC #%d: %d of %d cleanups ran\n", i, g_cleaned.load(), kNodes);
  }
  // A stale pointer to one node keeps its whole ring: allow a ring or two to survive.
  if (g_cleaned.load() < kNodes - 2 * kRingSize) {
    std::printf("FAIL: the rings with cleanups were not collected\n");
    return 1;
  }

  // Scene 3. With finalizers, break the cycle before dropping the structure. The ring becomes
  // a chain 0 -> 1 -> ... -> 7, and Go's ordering applies: node 0's finalizer runs first, while
  // node 1 is still kept for it; node 1 is unreachable only in the next cycle, and so on: one
  // finalizer per collection, in chain order.
  std::printf("3. a finalized ring, broken into a chain by hand, then dropped\n");
  OnFreshThread(MakeRootedFinalizedRing);
  OnFreshThread(BreakRingAndDrop);
  for (int i = 1; i <= kRingSize + 4 && g_finalized.load() < kRingSize; ++i) {
    std::printf("   GC #%d\n", i);
    if (!Cycle("broken ring")) return 1;
  }
  // A stale pointer to node k would hold up nodes k..7 (never assert that everything was
  // collected under conservative scanning); the order, though, is guaranteed.
  if (g_finalized.load() < kRingSize / 2 || g_out_of_order.load()) {
    std::printf("FAIL: %d of %d finalizers of the broken ring ran%s\n", g_finalized.load(),
                kRingSize, g_out_of_order.load() ? ", out of chain order" : "");
    return 1;
  }
  std::printf("OK\n");
  return 0;
}
