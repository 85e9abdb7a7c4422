// Stress: several threads build and drop checksummed trees while the pacer (GOGC 10) and an
// explicit-GC() thread collect. No live object may be freed or corrupted, and every node's
// destructor runs exactly once after everything is dropped. A steady-state loop keeps the heap
// bounded.
//
// Work is a fixed number of iterations (smaller under sanitizers), never a duration.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <gofin/gofin.hpp>
#include <mutex>
#include <thread>
#include <vector>

#include "test_support.hpp"

namespace {

using gofin_test::ClobberStack;
using gofin_test::Watchdog;

#if defined(__SANITIZE_THREAD__)
constexpr int kScaleDiv = 8;
#elif defined(__SANITIZE_ADDRESS__)
constexpr int kScaleDiv = 4;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
constexpr int kScaleDiv = 8;
#elif __has_feature(address_sanitizer)
constexpr int kScaleDiv = 4;
#else
constexpr int kScaleDiv = 1;
#endif
#else
constexpr int kScaleDiv = 1;
#endif

constexpr std::uint64_t kMiB = std::uint64_t{1} << 20;

// Before every test, the dead stack below gtest's per-test frames is zeroed, so that the test
// body's frame (whose unwritten slots, e.g. sanitizer redzones, would otherwise hold words
// left by earlier tests) starts clean.
class ClobberBeforeEachTest : public ::testing::EmptyTestEventListener {
  void OnTestStart(const ::testing::TestInfo& /*info*/) override { ClobberStack(); }
};
[[maybe_unused]] const bool g_clobber_registered = [] {
  ::testing::UnitTest::GetInstance()->listeners().Append(new ClobberBeforeEachTest);
  return true;
}();

[[gnu::noinline]] void CollectClean() {
  ClobberStack();
  gofin::GC();
}

// Restores the GC percent a test changed.
class GCPercentGuard {
 public:
  explicit GCPercentGuard(int percent) : old_(gofin::debug::SetGCPercent(percent)) {}
  ~GCPercentGuard() { gofin::debug::SetGCPercent(old_); }
  GCPercentGuard(const GCPercentGuard&) = delete;
  GCPercentGuard& operator=(const GCPercentGuard&) = delete;

 private:
  int old_;
};

std::uint64_t Mix(std::uint64_t a, std::uint64_t b) {
  std::uint64_t x = a ^ (b + 0x9e3779b97f4a7c15ULL + (a << 6) + (a >> 2));
  x ^= x >> 31;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 29;
  return x;
}

// xorshift64*: each thread its own.
struct Rng {
  std::uint64_t s;
  std::uint64_t Next() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 2685821657736338717ULL;
  }
  int Below(int n) { return static_cast<int>(Next() % static_cast<std::uint64_t>(n)); }
};

constexpr std::uint64_t kAlive = 0xa11ce5a11ce5a11cULL;
constexpr std::uint64_t kDead = 0xdeadbeefdeadbeefULL;

std::atomic<long> g_constructed{0};
std::atomic<long> g_destroyed{0};

// A tree node: a value, a checksum over the value and the children's checksums, and a noscan
// payload (every few nodes) filled with a pattern derived from the value.
struct Node {
  std::uint64_t magic = kAlive;
  std::uint64_t value = 0;
  std::uint64_t checksum = 0;
  Node* left = nullptr;
  Node* right = nullptr;
  std::uint64_t* payload = nullptr;  // AllocNoScan, kPayloadWords words
  static constexpr int kPayloadWords = 24;

  Node() { g_constructed.fetch_add(1, std::memory_order_relaxed); }
  ~Node() {
    magic = kDead;
    asm volatile("" : : "r"(this) : "memory");  // keep the store: it is not dead to us
    g_destroyed.fetch_add(1, std::memory_order_relaxed);
  }
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  [[nodiscard]] std::uint64_t Expected() const {
    std::uint64_t c = Mix(value, left != nullptr ? left->checksum : 1);
    c = Mix(c, right != nullptr ? right->checksum : 2);
    if (payload != nullptr) {
      for (int i = 0; i < kPayloadWords; ++i) c = Mix(c, payload[i]);
    }
    return c;
  }
};

Node* Build(Rng& rng, int depth) {
  if (depth == 0) return nullptr;
  Node* n = gofin::New<Node>();
  n->value = rng.Next();
  n->left = Build(rng, depth - 1);
  n->right = (rng.Below(4) != 0) ? Build(rng, depth - 1) : nullptr;
  if ((n->value & 7) == 0) {
    auto* p = static_cast<std::uint64_t*>(gofin::AllocNoScan(Node::kPayloadWords * 8));
    for (int i = 0; i < Node::kPayloadWords; ++i)
      p[i] = Mix(n->value, static_cast<std::uint64_t>(i));
    n->payload = p;
  }
  n->checksum = n->Expected();
  return n;
}

// Counts the nodes of a tree whose checksums and magic all hold; -1 on the first bad node.
long Verify(const Node* n) {
  if (n == nullptr) return 0;
  if (n->magic != kAlive || n->checksum != n->Expected()) return -1;
  if (n->payload != nullptr) {
    for (int i = 0; i < Node::kPayloadWords; ++i) {
      if (n->payload[i] != Mix(n->value, static_cast<std::uint64_t>(i))) return -1;
    }
  }
  const long l = Verify(n->left);
  const long r = Verify(n->right);
  if (l < 0 || r < 0) return -1;
  return 1 + l + r;
}

}  // namespace

// ---------------------------------------------------------------------------------------------

TEST(GCStress, ConcurrentTreeBuildersWithAutomaticAndExplicitCollections) {
  Watchdog wd("ConcurrentTreeBuildersWithAutomaticAndExplicitCollections");
  GCPercentGuard gogc(10);
  CollectClean();
  const long constructed0 = g_constructed.load();
  const long destroyed0 = g_destroyed.load();
  const gofin::MemStats m0 = gofin::ReadMemStats();

  constexpr int kWorkers = 3;
  constexpr int kSlots = 32;
  const int iterations = 30000 / kScaleDiv;
  std::atomic<int> corrupt{0};
  std::atomic<long> verified_nodes{0};
  std::atomic<int> progress{0};
  std::atomic<int> workers_left{kWorkers};

  // Explicit collections, paced by the workers' progress (every 150 iterations of anyone).
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  int explicit_gcs = 0;
  std::thread collector([&] {
    int seen = 0;
    for (;;) {
      {
        std::unique_lock lock(mu);
        cv.wait(lock, [&] { return done || progress.load() >= seen + 150; });
        if (done) return;
      }
      seen = progress.load();
      gofin::GC();
      ++explicit_gcs;
    }
  });

  std::vector<std::thread> workers;
  for (int w = 0; w < kWorkers; ++w) {
    workers.emplace_back([&, w] {
      Rng rng{0x1234567ULL + static_cast<std::uint64_t>(w) * 0x9e3779b97f4a7c15ULL};
      // The kept trees hang off a scanned GC array that only this stack references.
      Node** kept = gofin::NewArray<Node*>(kSlots);
      for (int it = 0; it < iterations; ++it) {
        const int depth = 1 + rng.Below(8);
        Node* t = Build(rng, depth);
        switch (rng.Below(4)) {
          case 0:  // dropped at once
            break;
          default:
            kept[rng.Below(kSlots)] = t;  // the tree it replaces becomes garbage
            break;
        }
        if (rng.Below(64) == 0) {
          // Sometimes a large noscan buffer, verified and dropped.
          const std::size_t words = 8192 + static_cast<std::size_t>(rng.Below(32768));
          auto* big = static_cast<std::uint64_t*>(gofin::AllocNoScan(words * 8));
          for (std::size_t i = 0; i < words; ++i) big[i] = i * 31;
          for (std::size_t i = 0; i < words; ++i) {
            if (big[i] != i * 31) {
              corrupt.fetch_add(1);
              break;
            }
          }
        }
        if (it % 16 == 15) {
          for (int s = 0; s < kSlots; ++s) {
            const long n = Verify(kept[s]);
            if (n < 0) {
              corrupt.fetch_add(1);
            } else {
              verified_nodes.fetch_add(n, std::memory_order_relaxed);
            }
          }
        }
        if (progress.fetch_add(1) % 150 == 149) cv.notify_one();
      }
      for (int s = 0; s < kSlots; ++s) {
        if (Verify(kept[s]) < 0) corrupt.fetch_add(1);
      }
      workers_left.fetch_sub(1);  // and exits, possibly while another worker collects
    });
  }
  for (auto& t : workers) t.join();
  {
    std::lock_guard lock(mu);
    done = true;
  }
  cv.notify_one();
  collector.join();

  EXPECT_EQ(corrupt.load(), 0) << "a live node was freed or corrupted";
  EXPECT_GT(verified_nodes.load(), 0);
  const gofin::MemStats m1 = gofin::ReadMemStats();
  EXPECT_GT(explicit_gcs, 0);
  EXPECT_GT((m1.NumGC - m0.NumGC) - (m1.NumForcedGC - m0.NumForcedGC), 0U)
      << "GOGC=10 started no automatic collection";
  // Destructors run only for freed nodes: never more than were made.
  EXPECT_LE(g_destroyed.load() - destroyed0, g_constructed.load() - constructed0);

  std::printf(
      "[ stats    ] %ld nodes made, %ld verified, %llu cycles (%llu forced, %d by the "
      "GC thread)\n",
      g_constructed.load() - constructed0, verified_nodes.load(),
      static_cast<unsigned long long>(m1.NumGC - m0.NumGC),
      static_cast<unsigned long long>(m1.NumForcedGC - m0.NumForcedGC), explicit_gcs);
  // The workers are gone: every node they made is garbage, each destroyed exactly once.
  CollectClean();
  CollectClean();
  EXPECT_EQ(g_destroyed.load() - destroyed0, g_constructed.load() - constructed0);
}

// ---------------------------------------------------------------------------------------------

namespace steady {
std::atomic<long> g_dtors{0};
struct KiB {
  std::uint64_t words[127] = {};
  KiB* next = nullptr;
  ~KiB() { g_dtors.fetch_add(1, std::memory_order_relaxed); }
};
static_assert(sizeof(KiB) == 1024);
// One MiB of garbage: a linked list of 1024 one-KiB objects (scanned, with destructors).
[[gnu::noinline]] void OneMiBOfGarbage() {
  KiB* head = nullptr;
  for (int i = 0; i < 1024; ++i) {
    KiB* k = gofin::New<KiB>();
    k->words[0] = static_cast<std::uint64_t>(i);
    k->next = head;
    head = k;
  }
  asm volatile("" : : "r"(head) : "memory");
}
}  // namespace steady

TEST(GCStress, SteadyStateAllocationKeepsTheHeapBounded) {
  Watchdog wd("SteadyStateAllocationKeepsTheHeapBounded");
  GCPercentGuard gogc(100);
  CollectClean();
  const gofin::MemStats m0 = gofin::ReadMemStats();
  const long dtors0 = steady::g_dtors.load();
  const int iterations = 500 / (kScaleDiv > 1 ? 2 : 1);
  std::uint64_t max_inuse = 0;
  for (int i = 0; i < iterations; ++i) {
    steady::OneMiBOfGarbage();
    if (i % 10 == 9) {
      const gofin::MemStats m = gofin::ReadMemStats();
      max_inuse = std::max(max_inuse, m.HeapInuse);
    }
  }
  const gofin::MemStats m1 = gofin::ReadMemStats();
  max_inuse = std::max(max_inuse, m1.HeapInuse);
  EXPECT_LT(max_inuse, 64 * kMiB) << "HeapInuse reached " << (max_inuse >> 20) << " MiB after "
                                  << iterations << " MiB of garbage";
  // HeapSys never shrinks (and earlier tests may have grown it): only growth counts.
  EXPECT_LE(m1.HeapSys, m0.HeapSys + 64 * kMiB) << "the heap kept growing";
  EXPECT_GE(m1.NumGC - m0.NumGC, static_cast<std::uint64_t>(iterations / 16))
      << "too few automatic collections for " << iterations << " MiB of garbage";
  EXPECT_EQ(m1.NumForcedGC, m0.NumForcedGC);
  std::printf("[ stats    ] max HeapInuse %llu MiB, HeapSys %llu MiB, %llu cycles\n",
              static_cast<unsigned long long>(max_inuse >> 20),
              static_cast<unsigned long long>(m1.HeapSys >> 20),
              static_cast<unsigned long long>(m1.NumGC - m0.NumGC));
  // Most of the garbage was destroyed along the way.
  EXPECT_GE(steady::g_dtors.load() - dtors0, static_cast<long>(iterations - 64) * 1024);
}
