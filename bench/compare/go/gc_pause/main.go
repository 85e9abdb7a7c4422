// Full-collection time in Go: build a live binary tree of N MiB of 16-byte nodes, then time
// runtime.GC() three times and report the median, also per GiB of live heap.
// Same work as bench/compare/gofin/gc_pause.cpp and bench/compare/bdwgc/gc_pause.cpp.
//
// pause_ms is the wall time of runtime.GC() (mark, then a full sweep before it returns);
// stw_ms is the growth of MemStats.PauseTotalNs over that call (Go marks concurrently, so
// only this part stops the world).  run.sh runs it with GOMAXPROCS=1 and 2.
// Usage: gc_pause [live_MiB=256]
package main

import (
	"fmt"
	"os"
	"runtime"
	"time"
	"unsafe"

	"gofincompare/common"
)

const workload = "gc_pause"

type Node struct{ left, right *Node }

func build(n int) *Node {
	if n == 0 {
		return nil
	}
	rest := n - 1
	left := build(rest / 2)
	right := build(rest - rest/2)
	return &Node{left, right}
}

func count(n *Node) int {
	c := 0
	for n != nil {
		c += 1 + count(n.left)
		n = n.right
	}
	return c
}

func main() {
	mib := common.ArgInt(1, 256)
	liveBytes := mib << 20
	nodes := int(liveBytes / int64(unsafe.Sizeof(Node{})))
	gmp := os.Getenv("GOMAXPROCS")
	if gmp == "" {
		gmp = "(default)"
	}
	fmt.Printf("INFO go gc_pause live=%d MiB nodes=%d GOMAXPROCS=%s (runtime %d)\n",
		mib, nodes, gmp, runtime.GOMAXPROCS(0))

	b0 := time.Now()
	root := build(nodes)
	buildMs := common.Ms(time.Since(b0))

	var pause, stw []float64
	var ms runtime.MemStats
	for i := 0; i < 3; i++ {
		runtime.ReadMemStats(&ms)
		p0 := ms.PauseTotalNs
		t0 := time.Now()
		runtime.GC()
		d := common.Ms(time.Since(t0))
		runtime.ReadMemStats(&ms)
		s := float64(ms.PauseTotalNs-p0) / 1e6
		pause = append(pause, d)
		stw = append(stw, s)
		fmt.Printf("INFO go gc %d: %.3f ms (stw %.3f ms)\n", i, d, s)
	}

	if found := count(root); found != nodes {
		fmt.Printf("ERROR go gc_pause: tree has %d nodes after GC, expected %d\n", found, nodes)
		os.Exit(1)
	}
	runtime.KeepAlive(root)

	med := common.Median(pause)
	gib := float64(liveBytes) / (1 << 30)
	common.Result(workload, "live", float64(mib), "MiB")
	common.Result(workload, "build_ms", buildMs, "ms")
	common.Result(workload, "pause_ms", med, "ms")
	common.Result(workload, "pause_ms_per_gib", med/gib, "ms/GiB")
	common.Result(workload, "stw_ms", common.Median(stw), "ms")
	common.ResultRSS(workload)
}
