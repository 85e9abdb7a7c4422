// Finalizer workloads in Go.  Same work as bench/compare/gofin/finalizers.cpp and
// bench/compare/bdwgc/finalizers.cpp.
//
// Usage: finalizers <sub> [size]
//
//	set_remove [batches=2000]  2 goroutines, each with its own 1000 new(int64), per batch:
//	                           SetFinalizer on all, then SetFinalizer(p, nil) on all (the
//	                           runtime's BenchmarkFinalizer).  us_per_batch = wall/(2*batches).
//	alloc_set  [ops=1048576]   2 goroutines, each ops times: v := new(int64);
//	                           SetFinalizer(v, f) (BenchmarkFinalizerRun). ns_per_op = wall/(2*ops).
//	e2e        [log2n=20]      2^n 16-byte objects (Obj) with finalizers made garbage; time
//	                           from dropping them until every finalizer has run: runtime.GC(),
//	                           then wait on the counter (bounded; another runtime.GC() only if
//	                           no progress for 1 s: gc_rounds > 1).
//	gc_heap    [n=1048576]     one runtime.GC() of a heap of n live 16-byte objects (median of
//	                           3) before and after setting a finalizer on each of them.
//
// (a) and (b) use new(int64) (tiny allocator), as the runtime's benchmarks do; (c) and (d)
// use a 16-byte scanned Obj, like the gofin and bdwgc versions.
//
// run.sh runs it with GOMAXPROCS=2.
package main

import (
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"gofincompare/common"
)

const (
	threads = 2
	batch   = 1000
)

var finalized int64

func emptyFin(*int64) {}

func countFin(*int64) { atomic.AddInt64(&finalized, 1) }

// startTogether runs body on `threads` goroutines, each after its setup, and returns the
// wall time from releasing them all to the last one finishing.
func startTogether(setup func() func()) time.Duration {
	var ready, done sync.WaitGroup
	start := make(chan struct{})
	ready.Add(threads)
	done.Add(threads)
	for t := 0; t < threads; t++ {
		go func() {
			defer done.Done()
			body := setup()
			ready.Done()
			<-start
			body()
		}()
	}
	ready.Wait()
	t0 := time.Now()
	close(start)
	done.Wait()
	return time.Since(t0)
}

// ---------------------------------------------------------------- (a) set + remove
func setRemove(batches int64) int {
	const wl = "fin_set_remove"
	wall := startTogether(func() func() {
		var data [batch]*int64
		for i := range data {
			data[i] = new(int64)
		}
		return func() {
			for b := int64(0); b < batches; b++ {
				for i := 0; i < batch; i++ {
					runtime.SetFinalizer(data[i], emptyFin)
				}
				for i := 0; i < batch; i++ {
					runtime.SetFinalizer(data[i], nil)
				}
			}
		}
	})
	perBatchNs := float64(wall.Nanoseconds()) / float64(batches*threads)
	common.Result(wl, "us_per_batch", perBatchNs/1e3, "us")
	common.Result(wl, "ns_per_pair", perBatchNs/batch, "ns")
	common.ResultRSS(wl)
	return 0
}

// ---------------------------------------------------------------- (b) alloc + set
func allocSet(ops int64) int {
	const wl = "fin_alloc_set"
	wall := startTogether(func() func() {
		return func() {
			for i := int64(0); i < ops; i++ {
				v := new(int64)
				runtime.SetFinalizer(v, countFin)
			}
		}
	})
	common.Result(wl, "ns_per_op", float64(wall.Nanoseconds())/float64(ops*threads), "ns")
	fmt.Printf("RESULT %s go finalized_by_end %d objs\n", wl, atomic.LoadInt64(&finalized))
	common.ResultRSS(wl)
	return 0
}

// ---------------------------------------------------------------- (c) end to end

// Obj is 16 bytes with a pointer field: scanned, never in a tiny block (a tiny block shared
// with a live object would keep its neighbours, and their finalizers, alive).
type Obj struct {
	next  *Obj
	value int64
}

func e2e(log2n int64) int {
	const wl = "fin_e2e"
	n := int64(1) << uint(log2n)
	done := make(chan struct{})
	fin := func(*Obj) {
		if atomic.AddInt64(&finalized, 1) == n {
			close(done)
		}
	}
	s0 := time.Now()
	arr := make([]*Obj, n)
	for i := range arr {
		p := new(Obj)
		runtime.SetFinalizer(p, fin)
		arr[i] = p
	}
	setupMs := common.Ms(time.Since(s0))
	if c := atomic.LoadInt64(&finalized); c != 0 {
		fmt.Printf("ERROR go fin_e2e: %d finalizers ran while the objects were reachable\n", c)
		return 1
	}

	for i := range arr {
		arr[i] = nil
	}
	t0 := time.Now()
	runtime.GC()
	gcMs := common.Ms(time.Since(t0))
	rounds := 1
	deadline := time.After(120 * time.Second)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	last := int64(-1)
wait:
	for {
		select {
		case <-done:
			break wait
		case <-tick.C:
			// No progress for a whole second: collect again (at most 5 rounds).
			if c := atomic.LoadInt64(&finalized); c == last && rounds < 5 {
				fmt.Printf("INFO go fin_e2e: stuck at %d/%d finalized, collecting again\n", c, n)
				runtime.GC()
				rounds++
			} else {
				last = c
			}
		case <-deadline:
			fmt.Printf("ERROR go fin_e2e: timed out: %d of %d finalizers ran (%d GC rounds)\n",
				atomic.LoadInt64(&finalized), n, rounds)
			return 1
		}
	}
	totalMs := common.Ms(time.Since(t0))
	runtime.KeepAlive(arr)
	common.Result(wl, "objects", float64(n), "objs")
	common.Result(wl, "setup_ms", setupMs, "ms")
	common.Result(wl, "gc_ms", gcMs, "ms")
	common.Result(wl, "total_ms", totalMs, "ms")
	common.Result(wl, "ns_per_object", totalMs*1e6/float64(n), "ns")
	common.Result(wl, "gc_rounds", float64(rounds), "rounds")
	common.ResultRSS(wl)
	return 0
}

// ---------------------------------------------------------------- (d) GC with finalizers
func medianGCMs() float64 {
	var v []float64
	for i := 0; i < 3; i++ {
		t0 := time.Now()
		runtime.GC()
		v = append(v, common.Ms(time.Since(t0)))
	}
	return common.Median(v)
}

func gcHeap(n int64) int {
	const wl = "fin_gc_heap"
	arr := make([]*Obj, n)
	for i := range arr {
		arr[i] = new(Obj)
	}
	plain := medianGCMs()
	fin := func(*Obj) { atomic.AddInt64(&finalized, 1) }
	s0 := time.Now()
	for _, p := range arr {
		runtime.SetFinalizer(p, fin)
	}
	setMs := common.Ms(time.Since(s0))
	withFin := medianGCMs()
	runtime.KeepAlive(arr)
	if c := atomic.LoadInt64(&finalized); c != 0 {
		fmt.Printf("ERROR go fin_gc_heap: %d finalizers of live objects ran\n", c)
		return 1
	}
	common.Result(wl, "objects", float64(n), "objs")
	common.Result(wl, "gc_nofin_ms", plain, "ms")
	common.Result(wl, "gc_fin_ms", withFin, "ms")
	common.Result(wl, "fin_over_nofin", withFin/plain, "x")
	common.Result(wl, "set_all_ms", setMs, "ms")
	common.ResultRSS(wl)
	return 0
}

func main() {
	sub := ""
	if len(os.Args) > 1 {
		sub = os.Args[1]
	}
	switch sub {
	case "set_remove":
		os.Exit(setRemove(common.ArgInt(2, 2000)))
	case "alloc_set":
		os.Exit(allocSet(common.ArgInt(2, 1<<20)))
	case "e2e":
		os.Exit(e2e(common.ArgInt(2, 20)))
	case "gc_heap":
		os.Exit(gcHeap(common.ArgInt(2, 1<<20)))
	}
	fmt.Fprintf(os.Stderr, "usage: %s set_remove|alloc_set|e2e|gc_heap [size]\n", os.Args[0])
	os.Exit(2)
}
