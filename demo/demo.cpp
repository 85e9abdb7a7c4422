// gofin's demo: objects going through GC cycles, with a gctrace (make run sets
// GOFIN_DEBUG=gctrace=1). Grows with every feature.
#include <cstdio>

#include <gofin/gofin.hpp>

namespace {

struct Node {
  Node* left = nullptr;
  Node* right = nullptr;
};

[[gnu::noinline]] Node* Tree(int depth) {
  auto* n = gofin::New<Node>();
  if (depth > 0) {
    n->left = Tree(depth - 1);
    n->right = Tree(depth - 1);
  }
  return n;
}

[[gnu::noinline]] long Count(const Node* n) {
  return n == nullptr ? 0 : 1 + Count(n->left) + Count(n->right);
}

void PrintStats(const char* when) {
  const gofin::MemStats m = gofin::ReadMemStats();
  std::printf("%-28s HeapObjects=%-8llu HeapAlloc=%-6llu KiB HeapInuse=%-6llu KiB NumGC=%llu\n",
              when, static_cast<unsigned long long>(m.HeapObjects),
              static_cast<unsigned long long>(m.HeapAlloc >> 10),
              static_cast<unsigned long long>(m.HeapInuse >> 10),
              static_cast<unsigned long long>(m.NumGC));
}

}  // namespace

int main() {
  std::printf("gofin demo: a long-lived tree, short-lived trees, and collections\n");
  gofin::Root<Node> long_lived(Tree(14));
  PrintStats("after the long-lived tree");
  long total = 0;
  for (int i = 0; i < 40; ++i) total += Count(Tree(12));
  PrintStats("after 40 short-lived trees");
  gofin::GC();
  PrintStats("after GC()");
  std::printf("long-lived tree still has %ld nodes; short-lived trees had %ld\n",
              Count(long_lived.get()), total);
  long_lived.reset();
  gofin::GC();
  PrintStats("after dropping it and GC()");
  return 0;
}
