#!/usr/bin/env bash
# Builds the gofin API fuzzer (libFuzzer + ASan + UBSan, the library compiled from source with
# coverage) and runs it for N seconds (default 60) on a copy of tests/fuzz/corpus.
#
#   tests/fuzz/build_and_run.sh [seconds]
#
# Environment: CXX (default clang++-14, else clang++), GOFIN_FUZZ_DIR (build/work directory,
# default build/fuzz), FUZZ_ARGS (extra libFuzzer flags, e.g. "-jobs=2 -workers=2").
# Exits non-zero if the build fails or the fuzzer finds a crash, a violation, a leak of the
# finalizer queue (timeout) or runs out of memory; the reproducer is left in $GOFIN_FUZZ_DIR as
# crash-*/timeout-*/oom-* and can be replayed with: $GOFIN_FUZZ_DIR/fuzz_api <file>.
set -euo pipefail

secs="${1:-60}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out="${GOFIN_FUZZ_DIR:-$root/build/fuzz}"
if [[ -z "${CXX:-}" ]]; then
  if command -v clang++-14 >/dev/null 2>&1; then CXX=clang++-14; else CXX=clang++; fi
fi
mkdir -p "$out/corpus" "$out/obj"

cd "$root"
mapfile -t srcs < <(find src -name '*.cpp' -o -name '*.S' | sort)
# No trace-cmp: libFuzzer records the operands of every instrumented comparison in tables in
# its bss (fuzzer::TPC's TORC), which gofin scans conservatively as a data segment. Heap
# addresses compared by the harness or the library (NodeOk, the marker's range checks) stay
# there and keep unreachable objects alive, and the marker's own compares while it scans the
# table write them back: exact collections then keep objects the model (rightly) says are
# unreachable (found with the cleanup/weak operations: a node only fuzzer::TPC pointed to).
flags=(-std=c++20 -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined
       -fno-sanitize-coverage=trace-cmp
       -fno-sanitize-recover=undefined -I include -I src -pthread)

echo "==> building $out/fuzz_api with $CXX (${#srcs[@]} library sources)"
objs=()
pids=()
for s in "${srcs[@]}" tests/fuzz/fuzz_api.cpp; do
  o="$out/obj/$(echo "$s" | tr '/' '_').o"
  objs+=("$o")
  if [[ ! -f "$o" || "$s" -nt "$o" || tests/oracle/model.hpp -nt "$o" || tests/fuzz/build_and_run.sh -nt "$o" ||
        -n "$(find include src -newer "$o" -print -quit)" ]]; then
    "$CXX" "${flags[@]}" -c "$s" -o "$o" &
    pids+=($!)
    if (( ${#pids[@]} >= 2 )); then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
  fi
done
for p in "${pids[@]}"; do wait "$p"; done
"$CXX" "${flags[@]}" "${objs[@]}" -o "$out/fuzz_api" -ldl -lz

cp -n tests/fuzz/corpus/* "$out/corpus/" 2>/dev/null || true
echo "==> running for ${secs}s"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:detect_stack_use_after_return=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
# shellcheck disable=SC2086
"$out/fuzz_api" -max_total_time="$secs" -timeout=120 -rss_limit_mb=4096 -detect_leaks=0 -print_final_stats=1 \
  -artifact_prefix="$out/" ${FUZZ_ARGS:-} "$out/corpus" tests/fuzz/corpus
