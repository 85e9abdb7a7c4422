// binary-trees (Benchmarks Game) on bdwgc.  Same work and output as
// gofin/binary_trees.cpp and go/binary_trees/main.go.
//
// Single-threaded mutator (bdwgc may use its parallel marker threads).
// Usage: compare_bdwgc_binary_trees [max_depth=18]
#include <gc.h>

#include "compare_common.hpp"

namespace {

const char* const kWorkload = "binary_trees";
const char* const kImpl = "bdwgc";

struct Node {
  Node* left;
  Node* right;
};

Node* new_node() { return static_cast<Node*>(GC_MALLOC(sizeof(Node))); }  // zeroed

Node* bottom_up(int depth) {
  if (depth <= 0) return new_node();
  Node* left = bottom_up(depth - 1);
  Node* right = bottom_up(depth - 1);
  Node* n = new_node();
  n->left = left;
  n->right = right;
  return n;
}

long item_check(const Node* n) {
  if (n->left == nullptr) return 1;
  return 1 + item_check(n->left) + item_check(n->right);
}

}  // namespace

int main(int argc, char** argv) {
  GC_INIT();
  GC_start_mark_threads();  // parallel marking (GC_MARKERS, default: cores), as gofin and Go mark
                            // in parallel
  const int n = static_cast<int>(cmp::arg_long(argc, argv, 1, 18));
  const int min_depth = 4;
  const int max_depth = n < min_depth + 2 ? min_depth + 2 : n;

  const double t0 = cmp::now_ms();
  {
    const int stretch = max_depth + 1;
    std::printf("stretch tree of depth %d\t check: %ld\n", stretch, item_check(bottom_up(stretch)));
  }

  Node* long_lived = bottom_up(max_depth);

  for (int d = min_depth; d <= max_depth; d += 2) {
    const long iterations = 1L << (max_depth - d + min_depth);
    long check = 0;
    for (long i = 0; i < iterations; ++i) check += item_check(bottom_up(d));
    std::printf("%ld\t trees of depth %d\t check: %ld\n", iterations, d, check);
  }

  std::printf("long lived tree of depth %d\t check: %ld\n", max_depth, item_check(long_lived));
  const double t1 = cmp::now_ms();

  cmp::result(kWorkload, kImpl, "wall_ms", t1 - t0, "ms");
  cmp::result_rss(kWorkload, kImpl);
  return 0;
}
