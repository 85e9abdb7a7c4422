// Full-collection time on gofin: build a live binary tree of N MiB of 16-byte nodes, then
// time gofin::GC() three times and report the median, also per GiB of live heap.
// Same work as bdwgc/gc_pause.cpp and go/gc_pause/main.go.
//
// pause_ms is the wall time of the whole GC() call (mark + sweep, as Go's runtime.GC());
// stw_ms is the growth of MemStats.PauseTotalNs over that call (the stop-the-world part).
// The number of GC workers comes from GOFIN_GCWORKERS (run.sh runs 1 and 2).
// Usage: compare_gofin_gc_pause [live_MiB=256]
#include <cstdint>
#include <gofin/gofin.hpp>

#include "compare_common.hpp"

namespace {

const char* const kWorkload = "gc_pause";
const char* const kImpl = "gofin";

struct Node {
  Node* left;
  Node* right;
};
static_assert(sizeof(Node) == 16);

// A tree of exactly n nodes (as balanced as possible).
Node* build(std::size_t n) {
  if (n == 0) return nullptr;
  const std::size_t rest = n - 1;
  Node* left = build(rest / 2);
  Node* right = build(rest - rest / 2);
  Node* x = gofin::New<Node>();
  x->left = left;
  x->right = right;
  return x;
}

std::size_t count(const Node* n) {
  std::size_t c = 0;
  while (n != nullptr) {  // recurse left, loop right
    c += 1 + count(n->left);
    n = n->right;
  }
  return c;
}

}  // namespace

// Nothing here points one past a node's end: it keeps Go's and bdwgc's 16 bytes (without
// this, New pads an exact-fit scanned type into the next class: README, "Finalizers on C++
// objects").
template <>
struct gofin::NoPastTheEndPointers<Node> : std::true_type {};

int main(int argc, char** argv) {
  const long mib = cmp::arg_long(argc, argv, 1, 256);
  const std::size_t live_bytes = static_cast<std::size_t>(mib) << 20;
  const std::size_t nodes = live_bytes / sizeof(Node);
  std::printf("INFO gofin gc_pause live=%ld MiB nodes=%zu GOFIN_GCWORKERS=%s\n", mib, nodes,
              cmp::env_or("GOFIN_GCWORKERS", "(default)"));

  const double b0 = cmp::now_ms();
  Node* root = build(nodes);
  const double b1 = cmp::now_ms();

  std::vector<double> pause, stw;
  for (int i = 0; i < 3; ++i) {
    const std::uint64_t p0 = gofin::ReadMemStats().PauseTotalNs;
    const double t0 = cmp::now_ms();
    gofin::GC();
    const double t1 = cmp::now_ms();
    const std::uint64_t p1 = gofin::ReadMemStats().PauseTotalNs;
    pause.push_back(t1 - t0);
    stw.push_back(static_cast<double>(p1 - p0) / 1e6);
    std::printf("INFO gofin gc %d: %.3f ms (stw %.3f ms)\n", i, t1 - t0, stw.back());
  }

  const std::size_t found = count(root);
  gofin::KeepAlive(root);
  if (found != nodes) {
    std::printf("ERROR gofin gc_pause: tree has %zu nodes after GC, expected %zu\n", found, nodes);
    return 1;
  }

  const double med = cmp::median(pause);
  const double gib = static_cast<double>(live_bytes) / (1024.0 * 1024.0 * 1024.0);
  cmp::result(kWorkload, kImpl, "live", static_cast<double>(mib), "MiB", 0);
  cmp::result(kWorkload, kImpl, "build_ms", b1 - b0, "ms");
  cmp::result(kWorkload, kImpl, "pause_ms", med, "ms");
  cmp::result(kWorkload, kImpl, "pause_ms_per_gib", med / gib, "ms/GiB");
  cmp::result(kWorkload, kImpl, "stw_ms", cmp::median(stw), "ms");
  cmp::result_rss(kWorkload, kImpl);
  return 0;
}
