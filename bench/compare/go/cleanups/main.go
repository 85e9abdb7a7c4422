// Cleanup and weak-pointer workloads in Go (1.24+: runtime.AddCleanup, package weak). Same
// work as bench/compare/gofin/cleanups.cpp and bench/compare/bdwgc/cleanups.cpp.
//
// Usage: cleanups <sub> [size]
//
//	add_stop        [ops=1048576]  runtime.AddCleanup(x, f, 14).Stop() on one long-lived
//	                               16-byte object (the runtime's BenchmarkAddCleanupAndStop):
//	                               ns_per_pair. Then SetFinalizer(x, f) + SetFinalizer(x, nil)
//	                               on the same object: set_remove_ns. Check: once x is dropped,
//	                               only a control cleanup added after the loops runs.
//	e2e             [log2n=20]     2^n 16-byte objects (Obj) with a cleanup each made garbage;
//	                               time until every cleanup ran: runtime.GC(), then wait on the
//	                               counter (bounded; another runtime.GC() only if no progress
//	                               for 1 s: gc_rounds > 1). Cleanup goroutines: at most
//	                               max(GOMAXPROCS/4, 1) (run.sh: GOMAXPROCS=4 and 8).
//	weak_make_value [ops=4194304]  weak.Make(x).Value() on one live object: ns_per_pair; then
//	                               Value() alone on one weak pointer: value_ns.
//	weak_gc         [n=1048576]    one runtime.GC() (median of 3) of n live 16-byte objects,
//	                               then of the same after weak.Make on each (issue 71779):
//	                               gc_plain_ms, gc_weak_ms and the difference. Check: every
//	                               Value() is its object while live, nil once dropped.
//
// Objects are a 16-byte scanned Obj (never tiny), as in the finalizer workloads.
package main

import (
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"time"
	"unsafe"
	"weak"

	"gofincompare/common"
)

// Obj is 16 bytes with a pointer field: scanned, never in a tiny block.
type Obj struct {
	next  *Obj
	value int64
}

// T is BenchmarkAddCleanupAndStop's type.
type T struct {
	v int
	p unsafe.Pointer
}

var (
	cleaned   atomic.Int64
	finalized atomic.Int64
	control   atomic.Int64
)

// ---------------------------------------------------------------- (a) AddCleanup + Stop

// addStopLoops runs the timed loops on *holder; x is dead in the caller once it returns.
//
//go:noinline
func addStopLoops(holder *[1]*T, ops int64) (cleanupNs, finalizerNs float64) {
	x := holder[0]
	cleanup := func(int) { cleaned.Add(1) }
	fin := func(*T) { finalized.Add(1) }
	warm := ops/16 + 1
	for i := int64(0); i < warm; i++ {
		runtime.AddCleanup(x, cleanup, 14).Stop()
	}
	t0 := time.Now()
	for i := int64(0); i < ops; i++ {
		runtime.AddCleanup(x, cleanup, 14).Stop()
	}
	t1 := time.Now()
	for i := int64(0); i < warm; i++ {
		runtime.SetFinalizer(x, fin)
		runtime.SetFinalizer(x, nil)
	}
	t2 := time.Now()
	for i := int64(0); i < ops; i++ {
		runtime.SetFinalizer(x, fin)
		runtime.SetFinalizer(x, nil)
	}
	t3 := time.Now()
	runtime.AddCleanup(x, func(int) { control.Add(1) }, 1) // the one that must run
	return float64(t1.Sub(t0).Nanoseconds()) / float64(ops),
		float64(t3.Sub(t2).Nanoseconds()) / float64(ops)
}

func addStop(ops int64) int {
	const wl = "cleanup_add_stop"
	holder := new([1]*T)
	holder[0] = new(T)
	cleanupNs, finalizerNs := addStopLoops(holder, ops)
	holder[0] = nil // drop x
	rounds := 0
	for control.Load() == 0 && rounds < 5 {
		runtime.GC()
		rounds++
		// Cleanups run on their own goroutines: give them a moment.
		for i := 0; i < 100 && control.Load() == 0; i++ {
			time.Sleep(10 * time.Millisecond)
		}
	}
	time.Sleep(50 * time.Millisecond) // let any wrongly queued cleanup or finalizer show
	if control.Load() != 1 || cleaned.Load() != 0 || finalized.Load() != 0 {
		fmt.Printf("ERROR go cleanup_add_stop: after dropping x (%d GC rounds): control cleanup "+
			"ran %d times (want 1), stopped cleanups ran %d (want 0), removed finalizers ran %d "+
			"(want 0)\n", rounds, control.Load(), cleaned.Load(), finalized.Load())
		return 1
	}
	common.Result(wl, "ns_per_pair", cleanupNs, "ns")
	common.Result(wl, "set_remove_ns", finalizerNs, "ns")
	common.ResultRSS(wl)
	return 0
}

// ---------------------------------------------------------------- (b) end to end
func e2e(log2n int64) int {
	const wl = "cleanup_e2e"
	n := int64(1) << uint(log2n)
	done := make(chan struct{})
	count := func(int64) {
		if cleaned.Add(1) == n {
			close(done)
		}
	}
	s0 := time.Now()
	arr := make([]*Obj, n)
	for i := range arr {
		p := new(Obj)
		runtime.AddCleanup(p, count, int64(i))
		arr[i] = p
	}
	setupMs := common.Ms(time.Since(s0))
	if c := cleaned.Load(); c != 0 {
		fmt.Printf("ERROR go cleanup_e2e: %d cleanups ran while the objects were reachable\n", c)
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
			if c := cleaned.Load(); c == last && rounds < 5 {
				fmt.Printf("INFO go cleanup_e2e: stuck at %d/%d cleanups, collecting again\n", c, n)
				runtime.GC()
				rounds++
			} else {
				last = c
			}
		case <-deadline:
			fmt.Printf("ERROR go cleanup_e2e: timed out: %d of %d cleanups ran (%d GC rounds)\n",
				cleaned.Load(), n, rounds)
			return 1
		}
	}
	totalMs := common.Ms(time.Since(t0))
	runtime.KeepAlive(arr)
	if c := cleaned.Load(); c != n {
		fmt.Printf("ERROR go cleanup_e2e: %d cleanups ran, want %d\n", c, n)
		return 1
	}
	common.Result(wl, "objects", float64(n), "objs")
	common.Result(wl, "setup_ms", setupMs, "ms")
	common.Result(wl, "gc_ms", gcMs, "ms")
	common.Result(wl, "total_ms", totalMs, "ms")
	common.Result(wl, "ns_per_object", totalMs*1e6/float64(n), "ns")
	common.Result(wl, "gc_rounds", float64(rounds), "rounds")
	common.ResultRSS(wl)
	return 0
}

// ---------------------------------------------------------------- (c) weak Make + Value
func weakMakeValue(ops int64) int {
	const wl = "weak_make_value"
	x := new(Obj)
	bad := 0
	warm := ops/16 + 1
	for i := int64(0); i < warm; i++ {
		if weak.Make(x).Value() != x {
			bad++
		}
	}
	t0 := time.Now()
	for i := int64(0); i < ops; i++ {
		if weak.Make(x).Value() != x {
			bad++
		}
	}
	t1 := time.Now()
	w := weak.Make(x)
	for i := int64(0); i < warm; i++ {
		if w.Value() != x {
			bad++
		}
	}
	t2 := time.Now()
	for i := int64(0); i < ops; i++ {
		if w.Value() != x {
			bad++
		}
	}
	t3 := time.Now()
	if weak.Make(x) != w {
		bad++
	}
	runtime.KeepAlive(x)
	if bad != 0 {
		fmt.Printf("ERROR go weak_make_value: %d Value()s were not the object (or Makes differed)\n", bad)
		return 1
	}
	common.Result(wl, "ns_per_pair", float64(t1.Sub(t0).Nanoseconds())/float64(ops), "ns")
	common.Result(wl, "value_ns", float64(t3.Sub(t2).Nanoseconds())/float64(ops), "ns")
	common.ResultRSS(wl)
	return 0
}

// ---------------------------------------------------------------- (d) GC with weak pointers
func medianGCMs() float64 {
	var v []float64
	for i := 0; i < 3; i++ {
		t0 := time.Now()
		runtime.GC()
		v = append(v, common.Ms(time.Since(t0)))
	}
	return common.Median(v)
}

func weakGC(n int64) int {
	const wl = "weak_gc"
	arr := make([]*Obj, n)
	for i := range arr {
		arr[i] = new(Obj)
	}
	plain := medianGCMs()
	s0 := time.Now()
	wps := make([]weak.Pointer[Obj], n)
	for i, p := range arr {
		wps[i] = weak.Make(p)
	}
	makeMs := common.Ms(time.Since(s0))
	withWeak := medianGCMs()
	bad := 0
	for i, w := range wps {
		if w.Value() != arr[i] {
			bad++
		}
	}
	if bad != 0 {
		fmt.Printf("ERROR go weak_gc: %d of %d weak pointers to live objects are wrong\n", bad, n)
		return 1
	}
	for i := range arr {
		arr[i] = nil
	}
	rounds := 0
	left := n
	for left != 0 && rounds < 5 {
		runtime.GC()
		rounds++
		left = 0
		for _, w := range wps {
			if w.Value() != nil {
				left++
			}
		}
		if left != 0 {
			fmt.Printf("INFO go weak_gc: %d of %d weak pointers not nil after %d GCs\n", left, n, rounds)
		}
	}
	runtime.KeepAlive(arr)
	runtime.KeepAlive(wps)
	if left != 0 {
		fmt.Printf("ERROR go weak_gc: %d of %d weak pointers still not nil after %d GCs\n", left, n, rounds)
		return 1
	}
	common.Result(wl, "objects", float64(n), "objs")
	common.Result(wl, "gc_plain_ms", plain, "ms")
	common.Result(wl, "gc_weak_ms", withWeak, "ms")
	common.Result(wl, "weak_extra_ms", withWeak-plain, "ms")
	common.Result(wl, "ns_per_weak", (withWeak-plain)*1e6/float64(n), "ns")
	common.Result(wl, "weak_over_plain", withWeak/plain, "x")
	common.Result(wl, "make_all_ms", makeMs, "ms")
	common.Result(wl, "clear_gc_rounds", float64(rounds), "rounds")
	common.Result(wl, "not_cleared", float64(left), "objs")
	common.ResultRSS(wl)
	return 0
}

func main() {
	sub := ""
	if len(os.Args) > 1 {
		sub = os.Args[1]
	}
	switch sub {
	case "add_stop":
		os.Exit(addStop(common.ArgInt(2, 1<<20)))
	case "e2e":
		os.Exit(e2e(common.ArgInt(2, 20)))
	case "weak_make_value":
		os.Exit(weakMakeValue(common.ArgInt(2, 1<<22)))
	case "weak_gc":
		os.Exit(weakGC(common.ArgInt(2, 1<<20)))
	}
	fmt.Fprintf(os.Stderr, "usage: %s add_stop|e2e|weak_make_value|weak_gc [size]\n", os.Args[0])
	os.Exit(2)
}
