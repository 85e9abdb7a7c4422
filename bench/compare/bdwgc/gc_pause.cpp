// Full-collection time on bdwgc: build a live binary tree of N MiB of 16-byte nodes, then
// time GC_gcollect() three times and report the median, also per GiB of live heap.
// Same work as gofin/gc_pause.cpp and go/gc_pause/main.go.
//
// bdwgc is stop-the-world here (not incremental), so the whole GC_gcollect() is a pause
// and stw_ms is the same number.  Note that bdwgc sweeps lazily: GC_gcollect() marks and
// only prepares the sweep, which later allocations do.  Parallel markers: GC_MARKERS
// (run.sh runs 1 and 2).
// Usage: compare_bdwgc_gc_pause [live_MiB=256]
#include <gc.h>

#include "compare_common.hpp"

namespace {

const char* const kWorkload = "gc_pause";
const char* const kImpl = "bdwgc";

struct Node {
  Node* left;
  Node* right;
};
static_assert(sizeof(Node) == 16);

Node* build(std::size_t n) {
  if (n == 0) return nullptr;
  const std::size_t rest = n - 1;
  Node* left = build(rest / 2);
  Node* right = build(rest - rest / 2);
  Node* x = static_cast<Node*>(GC_MALLOC(sizeof(Node)));
  x->left = left;
  x->right = right;
  return x;
}

std::size_t count(const Node* n) {
  std::size_t c = 0;
  while (n != nullptr) {
    c += 1 + count(n->left);
    n = n->right;
  }
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  GC_INIT();
  GC_start_mark_threads();  // parallel marking (GC_MARKERS, default: cores), as gofin and Go mark
                            // in parallel
  const long mib = cmp::arg_long(argc, argv, 1, 256);
  const std::size_t live_bytes = static_cast<std::size_t>(mib) << 20;
  const std::size_t nodes = live_bytes / sizeof(Node);
  std::printf("INFO bdwgc gc_pause live=%ld MiB nodes=%zu GC_MARKERS=%s parallel=%d\n", mib, nodes,
              cmp::env_or("GC_MARKERS", "(default)"), GC_get_parallel());

  const double b0 = cmp::now_ms();
  Node* root = build(nodes);
  const double b1 = cmp::now_ms();

  std::vector<double> pause;
  for (int i = 0; i < 3; ++i) {
    const double t0 = cmp::now_ms();
    GC_gcollect();
    const double t1 = cmp::now_ms();
    pause.push_back(t1 - t0);
    std::printf("INFO bdwgc gc %d: %.3f ms\n", i, t1 - t0);
  }

  const std::size_t found = count(root);
  if (found != nodes) {
    std::printf("ERROR bdwgc gc_pause: tree has %zu nodes after GC, expected %zu\n", found, nodes);
    return 1;
  }

  const double med = cmp::median(pause);
  const double gib = static_cast<double>(live_bytes) / (1024.0 * 1024.0 * 1024.0);
  cmp::result(kWorkload, kImpl, "live", static_cast<double>(mib), "MiB", 0);
  cmp::result(kWorkload, kImpl, "build_ms", b1 - b0, "ms");
  cmp::result(kWorkload, kImpl, "pause_ms", med, "ms");
  cmp::result(kWorkload, kImpl, "pause_ms_per_gib", med / gib, "ms/GiB");
  cmp::result(kWorkload, kImpl, "stw_ms", med, "ms");
  cmp::result_rss(kWorkload, kImpl);
  return 0;
}
