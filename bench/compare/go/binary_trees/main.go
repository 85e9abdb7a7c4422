// binary-trees (Benchmarks Game) in Go.  Same work and output as
// bench/compare/gofin/binary_trees.cpp and bench/compare/bdwgc/binary_trees.cpp.
//
// Single-threaded mutator (one goroutine); the runtime's GC workers run as usual.
// Usage: binary_trees [max_depth=18]
package main

import (
	"fmt"
	"time"

	"gofincompare/common"
)

const workload = "binary_trees"

type Node struct{ left, right *Node }

func bottomUp(depth int) *Node {
	if depth <= 0 {
		return &Node{}
	}
	return &Node{bottomUp(depth - 1), bottomUp(depth - 1)}
}

func (n *Node) itemCheck() int {
	if n.left == nil {
		return 1
	}
	return 1 + n.left.itemCheck() + n.right.itemCheck()
}

func main() {
	n := int(common.ArgInt(1, 18))
	const minDepth = 4
	maxDepth := n
	if minDepth+2 > n {
		maxDepth = minDepth + 2
	}

	t0 := time.Now()
	{
		stretch := maxDepth + 1
		fmt.Printf("stretch tree of depth %d\t check: %d\n", stretch, bottomUp(stretch).itemCheck())
	}

	longLived := bottomUp(maxDepth)

	for d := minDepth; d <= maxDepth; d += 2 {
		iterations := 1 << uint(maxDepth-d+minDepth)
		check := 0
		for i := 0; i < iterations; i++ {
			check += bottomUp(d).itemCheck()
		}
		fmt.Printf("%d\t trees of depth %d\t check: %d\n", iterations, d, check)
	}

	fmt.Printf("long lived tree of depth %d\t check: %d\n", maxDepth, longLived.itemCheck())
	elapsed := time.Since(t0)

	common.Result(workload, "wall_ms", common.Ms(elapsed), "ms")
	common.ResultRSS(workload)
}
