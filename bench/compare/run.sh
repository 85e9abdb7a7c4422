#!/usr/bin/env bash
# Side-by-side comparison: gofin vs bdwgc vs Go, same work in each.
#
# usage: bench/compare/run.sh [build-dir]      (default: build/release)
#
#   - builds the compare_gofin_* / compare_bdwgc_* CMake targets in build-dir when it is a
#     configured CMake tree (skip with GOFIN_COMPARE_NOBUILD=1), and the Go programs
#     (bench/compare/go/<workload>) with the `go` on the PATH (the cleanups program needs Go
#     1.24+: runtime.AddCleanup, package weak), or /usr/lib/go-1.19/bin/go when there is
#     none (override: GO=...), into <build-dir>/bench/compare/go-bin, GOCACHE/GOPATH under
#     <build-dir>/bench/compare, with GOTOOLCHAIN=local and GOPROXY=off (no downloads);
#   - runs every workload once per implementation, each under `timeout 300`;
#   - prints one table per workload: each implementation's numbers and the ratios
#     gofin/bdwgc and gofin/go (for times: > 1 means gofin is slower);
#   - draws a chart of each workload's headline metric relative to gofin with plot.sh
#     (gnuplot) into <build-dir>/bench/compare/compare.svg (skipped with a note when gnuplot
#     is not installed).
#
# Environment:
#   GOFIN_COMPARE_BIG=1     also run the pause workload with 1 GiB live (default 256 MiB only)
#   GOFIN_COMPARE_ONLY="binary_trees gc_pause fin_set_remove fin_alloc_set fin_e2e fin_gc_heap
#                       cleanup_add_stop cleanup_e2e weak_make_value weak_gc"
#                           run only these workloads
#   GOFIN_COMPARE_DEPTH=18  binary-trees depth
#   GOFIN_COMPARE_TIMEOUT=300  seconds per program run
#   GOFIN_COMPARE_NOBUILD=1 do not build the C++ targets (use what is in build-dir)
#   GOFIN_COMPARE_JOBS=2    parallel jobs of that build
#   GO=/path/to/go          the Go toolchain (default: `command -v go`, else Go 1.19's)
#   GOFIN_COMPARE_SVG=path  also copy the chart there (e.g. docs/figures/compare.svg)
#
# Raw program output: <build-dir>/bench/compare/logs/.
set -u -o pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

BUILD=${1:-build/release}
if [[ ! -d $BUILD && $BUILD != /* && -d $ROOT/$BUILD ]]; then BUILD=$ROOT/$BUILD; fi
if [[ ! -d $BUILD ]]; then
  echo "note: build dir '$BUILD' does not exist; creating it for the Go programs and logs" >&2
fi
mkdir -p "$BUILD/bench/compare" || exit 1
BUILD=$(cd "$BUILD" && pwd)
OUT=$BUILD/bench/compare
LOGS=$OUT/logs
rm -rf "$LOGS"
mkdir -p "$LOGS"
RESULTS=$LOGS/results.txt     # <workload> <config> <impl> <metric> <value> <unit>
STATUS=$LOGS/status.txt       # <workload> <config> <impl> <status> <log>
META=$LOGS/meta.txt           # key=value: date, nproc, cpu, go, bdwgc (the chart's title)
SVG=$OUT/compare.svg
: >"$RESULTS"
: >"$STATUS"
rm -f "$SVG"
{
  echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "nproc=$(nproc)"
  echo "cpu=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo | head -n 1)"
  echo "bdwgc=$(pkg-config --modversion bdw-gc 2>/dev/null)"
} >"$META"

TIMEOUT_S=${GOFIN_COMPARE_TIMEOUT:-300}
DEPTH=${GOFIN_COMPARE_DEPTH:-18}
JOBS=${GOFIN_COMPARE_JOBS:-2}
if [[ -z ${GO:-} ]]; then
  GO=$(command -v go 2>/dev/null || true)
  [[ -n $GO ]] || GO=/usr/lib/go-1.19/bin/go
fi
WORKLOADS=(binary_trees gc_pause fin_set_remove fin_alloc_set fin_e2e fin_gc_heap
  cleanup_add_stop cleanup_e2e weak_make_value weak_gc)
ONLY=${GOFIN_COMPARE_ONLY:-}

want() {  # want <workload>
  [[ -z $ONLY ]] && return 0
  local w
  for w in $ONLY; do [[ $w == "$1" ]] && return 0; done
  return 1
}

echo "gofin comparison benchmarks  ($(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(nproc) cores)"
echo "build dir: $BUILD"
load=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$load" 'BEGIN { exit !(l > 0.5) }'; then
  echo "warning: load average is $load: something else is running, numbers will be noisy"
fi

# ------------------------------------------------------------------ build C++ targets
CXX_TARGETS=()
for w in binary_trees gc_pause finalizers cleanups; do
  CXX_TARGETS+=("compare_bdwgc_$w" "compare_gofin_$w")
done
if [[ -f $BUILD/CMakeCache.txt && ${GOFIN_COMPARE_NOBUILD:-0} != 1 ]]; then
  keep_going=()
  gen=$(sed -n 's/^CMAKE_GENERATOR:INTERNAL=//p' "$BUILD/CMakeCache.txt")
  case $gen in
    Ninja*) keep_going=(-- -k 0) ;;
    *Makefiles*) keep_going=(-- -k) ;;
  esac
  # Only targets that exist in this tree (gofin ones are skipped when gofin::gofin is absent).
  present=()
  if ! all_targets=$(cmake --build "$BUILD" --target help 2>&1); then
    # Typically a re-configure that failed: the list is not to be trusted.
    printf '%s\n' "$all_targets" >"$LOGS/cmake-build.log"
    echo "note: cmake could not list the targets of $BUILD (configure failed?); using the" \
      "compare_* executables already built; see $LOGS/cmake-build.log (tail below)"
    tail -n 8 "$LOGS/cmake-build.log" | sed 's/^/    /'
  else
    for t in "${CXX_TARGETS[@]}"; do
      if grep -qw -- "$t" <<<"$all_targets"; then present+=("$t"); fi
    done
    if ((${#present[@]} == 0)); then
      echo "note: no compare_* targets in $BUILD (was bench/compare added to the CMake project?)"
    fi
  fi
  if ((${#present[@]} > 0)); then
    echo "building ${present[*]} ..."
    if ! cmake --build "$BUILD" --target "${present[@]}" -j "$JOBS" "${keep_going[@]}" \
      >"$LOGS/cmake-build.log" 2>&1; then
      echo "note: some C++ targets failed to build; see $LOGS/cmake-build.log (tail below)"
      tail -n 15 "$LOGS/cmake-build.log" | sed 's/^/    /'
    fi
  fi
elif [[ ! -f $BUILD/CMakeCache.txt ]]; then
  echo "note: $BUILD is not a configured CMake tree; using whatever compare_* executables it holds"
fi

find_exe() {  # find_exe <name>: path of the executable in the build tree, or nothing
  local name=$1 p
  for p in "$OUT/$name" "$BUILD/$name" "$BUILD/bin/$name"; do
    [[ -x $p && -f $p ]] && { echo "$p"; return; }
  done
  find "$BUILD" -maxdepth 5 -type f -name "$name" -perm -u+x 2>/dev/null | head -n 1
}

# ------------------------------------------------------------------ build Go programs
GO_OK=0
GO_NOTE=""
if [[ -x $GO ]]; then
  mkdir -p "$OUT/go-bin" "$OUT/go-cache" "$OUT/go-path"
  GO_OK=1
  for w in binary_trees gc_pause finalizers cleanups; do
    if ! (cd "$HERE/go" && env GOCACHE="$OUT/go-cache" GOPATH="$OUT/go-path" GOPROXY=off \
      GOFLAGS= GO111MODULE=on GOTOOLCHAIN=local "$GO" build -o "$OUT/go-bin/$w" "./$w") \
      >"$LOGS/go-build-$w.log" 2>&1; then
      echo "note: go build of $w failed; see $LOGS/go-build-$w.log"
      rm -f "$OUT/go-bin/$w"
    fi
  done
  GO_VERSION=$("$GO" version 2>/dev/null)
  echo "go: $GO_VERSION ($GO)"
  GO_VERSION=${GO_VERSION#go version }
  echo "go=${GO_VERSION%% *}" >>"$META"
else
  GO_NOTE="Go not found at $GO: Go column skipped"
  echo "note: $GO_NOTE"
fi

# ------------------------------------------------------------------ running
# run_one <workload> <config> <impl> <exe-or-empty> [env VAR=..]... -- args...
run_one() {
  local wl=$1 cfg=$2 impl=$3 exe=$4
  shift 4
  local envs=()
  while (($#)) && [[ $1 != -- ]]; do envs+=("$1"); shift; done
  [[ ${1:-} == -- ]] && shift
  local log="$LOGS/$wl.${cfg//\//_}.$impl.out"
  if [[ $impl == go && $GO_OK != 1 ]]; then
    echo "$wl $cfg $impl SKIPPED -" >>"$STATUS"
    return
  fi
  if [[ -z $exe || ! -x $exe ]]; then
    echo "$wl $cfg $impl MISSING -" >>"$STATUS"
    return
  fi
  printf '  %-16s %-9s %-6s ' "$wl" "$cfg" "$impl"
  local t0 t1 rc
  t0=$(date +%s.%N)
  # In a subshell (not exec'd) so that bash's "Segmentation fault" notice lands in the log.
  (
    env "${envs[@]}" timeout -k 10 "$TIMEOUT_S" "$exe" "$@" >"$log" </dev/null
    exit $?
  ) 2>"$log.err"
  rc=$?
  t1=$(date +%s.%N)
  local st
  case $rc in
    0) st=ok ;;
    124 | 137) st=TIMEOUT ;;
    1[3-9][0-9]) st="FAIL(SIG$(kill -l $((rc - 128)) 2>/dev/null || echo $((rc - 128))))" ;;
    *) st="FAIL(rc=$rc)" ;;
  esac
  if [[ $st == ok ]] && ! grep -q '^RESULT ' "$log"; then st=NO_RESULT; fi
  printf '%-12s %6.1f s\n' "$st" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')"
  echo "$wl $cfg $impl $st $log" >>"$STATUS"
  # RESULT <workload> <impl> <metric> <value> <unit>
  awk -v wl="$wl" -v cfg="$cfg" -v impl="$impl" \
    '$1 == "RESULT" && NF >= 6 { print wl, cfg, impl, $4, $5, $6 }' "$log" >>"$RESULTS"
}

GOFIN_BIN() { find_exe "compare_gofin_$1"; }
BDWGC_BIN() { find_exe "compare_bdwgc_$1"; }
GO_BIN() { [[ -x $OUT/go-bin/$1 ]] && echo "$OUT/go-bin/$1"; }

echo
echo "running (timeout ${TIMEOUT_S}s each):"

if want binary_trees; then
  run_one binary_trees default gofin "$(GOFIN_BIN binary_trees)" -- "$DEPTH"
  run_one binary_trees default bdwgc "$(BDWGC_BIN binary_trees)" -- "$DEPTH"
  run_one binary_trees default go "$(GO_BIN binary_trees)" GOMAXPROCS=2 -- "$DEPTH"
fi

if want gc_pause; then
  sizes=(256)
  [[ ${GOFIN_COMPARE_BIG:-0} == 1 ]] && sizes+=(1024)
  for mib in "${sizes[@]}"; do
    for w in 1 2; do
      cfg="${mib}M-w$w"
      run_one gc_pause "$cfg" gofin "$(GOFIN_BIN gc_pause)" GOFIN_GCWORKERS=$w -- "$mib"
      run_one gc_pause "$cfg" bdwgc "$(BDWGC_BIN gc_pause)" GC_MARKERS=$w -- "$mib"
      run_one gc_pause "$cfg" go "$(GO_BIN gc_pause)" GOMAXPROCS=$w -- "$mib"
    done
  done
fi

for sub in set_remove alloc_set e2e gc_heap; do
  want "fin_$sub" || continue
  run_one "fin_$sub" default gofin "$(GOFIN_BIN finalizers)" -- "$sub"
  run_one "fin_$sub" default bdwgc "$(BDWGC_BIN finalizers)" -- "$sub"
  run_one "fin_$sub" default go "$(GO_BIN finalizers)" GOMAXPROCS=2 -- "$sub"
done

# Cleanups and weak pointers (Go 1.24+). add_stop and weak_make_value are single-threaded.
if want cleanup_add_stop; then
  run_one cleanup_add_stop default gofin "$(GOFIN_BIN cleanups)" -- add_stop
  run_one cleanup_add_stop default bdwgc "$(BDWGC_BIN cleanups)" -- add_stop
  run_one cleanup_add_stop default go "$(GO_BIN cleanups)" GOMAXPROCS=2 -- add_stop
fi
# e2e: gofin starts at most max(GOFIN_GCWORKERS/4, 1) cleanup threads, Go max(GOMAXPROCS/4, 1)
# cleanup goroutines: config ct<n> allows n. bdwgc runs its finalizers on the main thread
# (GC_invoke_finalizers) in its defaults, the same in both configs.
if want cleanup_e2e; then
  for ct in 1 2; do
    run_one cleanup_e2e "ct$ct" gofin "$(GOFIN_BIN cleanups)" GOFIN_GCWORKERS=$((4 * ct)) -- e2e
    run_one cleanup_e2e "ct$ct" bdwgc "$(BDWGC_BIN cleanups)" -- e2e
    run_one cleanup_e2e "ct$ct" go "$(GO_BIN cleanups)" GOMAXPROCS=$((4 * ct)) -- e2e
  done
fi
if want weak_make_value; then
  run_one weak_make_value default gofin "$(GOFIN_BIN cleanups)" -- weak_make_value
  run_one weak_make_value default bdwgc "$(BDWGC_BIN cleanups)" -- weak_make_value
  run_one weak_make_value default go "$(GO_BIN cleanups)" GOMAXPROCS=2 -- weak_make_value
fi
if want weak_gc; then
  run_one weak_gc default gofin "$(GOFIN_BIN cleanups)" -- weak_gc
  run_one weak_gc default bdwgc "$(BDWGC_BIN cleanups)" -- weak_gc
  run_one weak_gc default go "$(GO_BIN cleanups)" GOMAXPROCS=2 -- weak_gc
fi

# ------------------------------------------------------------------ tables
describe() {
  case $1 in
    binary_trees) echo "binary-trees, depth $DEPTH, single-threaded mutator (collectors may use their worker threads); gofin default workers, bdwgc default markers, Go GOMAXPROCS=2" ;;
    gc_pause) echo "full collection of a live tree of 16-byte nodes: median of 3 (gofin::GC / GC_gcollect / runtime.GC); config <live>/w<n>: GOFIN_GCWORKERS=n, GC_MARKERS=n, GOMAXPROCS=n; stw_ms: stop-the-world part (bdwgc: all of it)" ;;
    fin_set_remove) echo "2 threads x own 1000 8-byte objects: set finalizer on all, then remove all (Go BenchmarkFinalizer); time per 1000-pair batch" ;;
    fin_alloc_set) echo "2 threads: allocate 8-byte object + set finalizer (Go BenchmarkFinalizerRun); bdwgc runs finalizers inside allocation, gofin/Go on a finalizer thread" ;;
    fin_e2e) echo "2^20 16-byte objects with finalizers dropped: time until the last finalizer ran (gc_ms: the collection call alone)" ;;
    fin_gc_heap) echo "one full collection (median of 3) of a heap of 1M live 16-byte objects, without and then with a finalizer on each" ;;
    cleanup_add_stop) echo "AddCleanup + Stop on one live 16-byte object (Go BenchmarkAddCleanupAndStop), ns per pair; set_remove_ns: SetFinalizer set + remove on it; bdwgc: GC_register_finalizer + unregister for both" ;;
    cleanup_e2e) echo "2^20 16-byte objects with a cleanup each dropped: time until the last cleanup ran (bdwgc: GC_register_finalizer_ignore_self, GC_invoke_finalizers); config ct<n>: at most n cleanup threads/goroutines (GOFIN_GCWORKERS=4n, GOMAXPROCS=4n; bdwgc defaults); gofin fin_*: the same with SetFinalizer; threads_started: threads gofin started from the drop to the last cleanup (a 2nd cleanup thread would count)" ;;
    weak_make_value) echo "weak Make + Value on one live 16-byte object, ns per pair (bdwgc: register + unregister a disappearing link); value_ns: Value alone (bdwgc: GC_REVEAL_POINTER under the allocation lock)" ;;
    weak_gc) echo "one full collection (median of 3) of 1M live 16-byte objects, without and then with a weak pointer to each (Go issue 71779; bdwgc: disappearing links); weak_extra_ms: the weak pointers' cost; not_cleared: weak pointers still set 5 GCs after the objects were dropped (bdwgc may keep a few, <= 64, by conservative roots)" ;;
  esac
}

echo
[[ -n $GO_NOTE ]] && echo "note: $GO_NOTE"
for wl in "${WORKLOADS[@]}"; do
  want "$wl" || continue
  echo
  echo "== $wl: $(describe "$wl")"
  awk -v wl="$wl" '
    function isnum(x) { return x ~ /^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$/ }
    function fmt(x) {
      if (!isnum(x)) return x
      x += 0
      if (x == int(x) && (x >= 1000 || x <= -1000)) return sprintf("%d", x)
      if (x >= 100 || x <= -100) return sprintf("%.1f", x)
      if (x >= 1 || x <= -1) return sprintf("%.2f", x)
      return sprintf("%.3f", x)
    }
    function ratio(a, b) {
      if (!isnum(a) || !isnum(b) || b + 0 == 0) return "-"
      return sprintf("%.2f", a / b)
    }
    FNR == NR {  # status file: wl cfg impl status log
      if ($1 != wl) next
      st[$2, $3] = $4
      if (!($2 in cfgseen)) { cfgseen[$2] = 1; cfgs[++ncfg] = $2 }
      next
    }
    {  # results file: wl cfg impl metric value unit
      if ($1 != wl) next
      val[$2, $3, $4] = $5
      unit[$4] = $6
      if (!($4 in mseen)) { mseen[$4] = 1; metrics[++nm] = $4 }
    }
    END {
      if (ncfg == 0) { print "   (not run)"; exit }
      n = split("gofin bdwgc go", impls, " ")
      hdr = sprintf("   %-10s %-18s %-7s %14s %14s %14s %12s %10s", "config", "metric", "unit",
                    "gofin", "bdwgc", "go", "gofin/bdwgc", "gofin/go")
      print hdr
      for (c = 1; c <= ncfg; c++) {
        cfg = cfgs[c]
        # A config where every run failed still gets a row.
        if (nm == 0) { metrics[1] = "(none)"; nm = 1 }
        for (m = 1; m <= nm; m++) {
          met = metrics[m]
          for (i = 1; i <= n; i++) {
            im = impls[i]
            s = ((cfg, im) in st) ? st[cfg, im] : "-"
            if (s != "ok") cell[im] = s
            else if ((cfg, im, met) in val) cell[im] = val[cfg, im, met]
            else cell[im] = "n/a"
          }
          rb = ratio(cell["gofin"], cell["bdwgc"])
          rg = ratio(cell["gofin"], cell["go"])
          if (met == "objects" || met == "live" || met == "not_cleared" ||
              unit[met] == "threads" ||
              unit[met] == "rounds") { rb = "-"; rg = "-" }
          printf "   %-10s %-18s %-7s %14s %14s %14s %12s %10s\n", cfg, met,
                 (met in unit ? unit[met] : ""), fmt(cell["gofin"]), fmt(cell["bdwgc"]),
                 fmt(cell["go"]), rb, rg
        }
      }
    }' "$STATUS" "$RESULTS"

  # Failures: show where to look and the last lines of stderr.
  while read -r swl scfg simpl sst slog; do
    [[ $swl == "$wl" ]] || continue
    case $sst in
      ok | SKIPPED) ;;
      MISSING) echo "   $simpl ($scfg): executable not found (not built?)" ;;
      *)
        echo "   $simpl ($scfg): $sst; output: $slog and $slog.err"
        { grep -h '^ERROR' "$slog" 2>/dev/null; tail -n 3 "$slog.err" 2>/dev/null; } |
          head -n 5 | sed 's/^/      | /'
        ;;
    esac
  done <"$STATUS"

  # binary-trees: the check lines must be identical in all three.
  if [[ $wl == binary_trees ]]; then
    ref="" refimpl="" same=1 compared=0
    for impl in gofin bdwgc go; do
      log=$LOGS/binary_trees.default.$impl.out
      grep -q "^binary_trees default $impl ok " "$STATUS" || continue
      cur=$(grep -v -e '^RESULT ' -e '^INFO ' "$log")
      compared=$((compared + 1))
      if [[ -z $refimpl ]]; then
        ref=$cur refimpl=$impl
      elif [[ $cur != "$ref" ]]; then
        same=0
        echo "   OUTPUT MISMATCH: $impl's check lines differ from $refimpl's (see $LOGS)"
      fi
    done
    if ((compared > 1 && same)); then
      echo "   check lines identical across the $compared implementations that ran"
    fi
  fi
done

echo
echo "raw output: $LOGS"
if awk '$4 != "ok" && $4 != "SKIPPED" { bad = 1 } END { exit !bad }' "$STATUS"; then
  echo "some runs did not succeed:"
  awk '$4 != "ok" && $4 != "SKIPPED" { printf "   %s %s %s: %s\n", $1, $2, $3, $4 }' "$STATUS"
fi

# ------------------------------------------------------------------ chart
if [[ ! -s $RESULTS ]]; then
  echo "chart: no results, so no chart"
elif ! command -v "${GNUPLOT:-gnuplot}" >/dev/null 2>&1; then
  echo "note: gnuplot is not installed (apt-get install gnuplot-nox, or scripts/setup.sh bench): no chart"
elif bash "$HERE/plot.sh" "$RESULTS" "$SVG" >"$LOGS/plot.log" 2>&1; then
  echo "chart: $SVG"
  if [[ -n ${GOFIN_COMPARE_SVG:-} ]]; then
    if mkdir -p "$(dirname "$GOFIN_COMPARE_SVG")" && cp "$SVG" "$GOFIN_COMPARE_SVG"; then
      echo "chart copied to $GOFIN_COMPARE_SVG"
    else
      echo "note: could not copy the chart to $GOFIN_COMPARE_SVG"
    fi
  fi
else
  echo "note: plot.sh failed, no chart; see $LOGS/plot.log"
fi
exit 0
