// binary-trees (Benchmarks Game) on gofin.  Same work and output as
// bdwgc/binary_trees.cpp and go/binary_trees/main.go.
//
// Single-threaded mutator (the collector may use its own worker threads, as Go's does).
// Usage: compare_gofin_binary_trees [max_depth=18]
#include <gofin/gofin.hpp>

#include "compare_common.hpp"

namespace {

const char* const kWorkload = "binary_trees";
const char* const kImpl = "gofin";

struct Node {
  Node* left;
  Node* right;
};

// Children first (held in locals: stack/registers are roots), then the parent node,
// exactly like Go's &Node{bottomUp(d-1), bottomUp(d-1)}.
Node* bottom_up(int depth) {
  if (depth <= 0) return gofin::New<Node>();
  Node* left = bottom_up(depth - 1);
  Node* right = bottom_up(depth - 1);
  Node* n = gofin::New<Node>();
  n->left = left;
  n->right = right;
  return n;
}

long item_check(const Node* n) {
  if (n->left == nullptr) return 1;
  return 1 + item_check(n->left) + item_check(n->right);
}

}  // namespace

// Nothing here points one past a node's end, so a 16-byte node may fill its size class exactly
// (without this, New<Node> pads it into the 24-byte class: README, "One-past-the-end pointers").
template <>
struct gofin::NoPastTheEndPointers<Node> : std::true_type {};

int main(int argc, char** argv) {
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
  gofin::KeepAlive(long_lived);
  const double t1 = cmp::now_ms();

  cmp::result(kWorkload, kImpl, "wall_ms", t1 - t0, "ms");
  cmp::result_rss(kWorkload, kImpl);
  return 0;
}
