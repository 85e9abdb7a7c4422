// Package common holds the helpers shared by the Go comparison programs
// (bench/compare/go/<workload>): RESULT lines and peak RSS.
package common

import (
	"bufio"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Result prints one machine-readable line: RESULT <workload> <impl> <metric> <value> <unit>.
func Result(workload, metric string, value float64, unit string) {
	fmt.Printf("RESULT %s go %s %.3f %s\n", workload, metric, value, unit)
}

// PeakRSSKiB returns VmHWM from /proc/self/status, in KiB (-1 if unavailable).
func PeakRSSKiB() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return -1
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "VmHWM:") {
			fields := strings.Fields(line[len("VmHWM:"):])
			if len(fields) >= 1 {
				v, err := strconv.ParseInt(fields[0], 10, 64)
				if err == nil {
					return v
				}
			}
		}
	}
	return -1
}

// ResultRSS prints the peak_rss RESULT line.
func ResultRSS(workload string) {
	fmt.Printf("RESULT %s go peak_rss %d KiB\n", workload, PeakRSSKiB())
}

// Ms converts a duration to float milliseconds.
func Ms(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e6 }

// Median of a slice of float64 (the slice is sorted in place).
func Median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	sort.Float64s(v)
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

// ArgInt returns os.Args[i] as a positive integer, or def when absent.
func ArgInt(i int, def int64) int64 {
	if i >= len(os.Args) {
		return def
	}
	v, err := strconv.ParseInt(os.Args[i], 10, 64)
	if err != nil || v <= 0 {
		fmt.Fprintf(os.Stderr, "ERROR bad numeric argument %q\n", os.Args[i])
		os.Exit(2)
	}
	return v
}
