#!/usr/bin/env bash
# Installs the Debian packages a make target needs, and only the missing ones. The Makefile
# runs it before `make run`, `make test` and the others, and .ci/run before CI's steps, so
# that a fresh machine needs nothing but the two commands of the README.
#
#   scripts/setup.sh run|test|bench|docs|ci
#
# As root it runs `apt-get update` and `apt-get install` for what is missing; otherwise it
# prints the exact command to run and fails. GOFIN_NO_SETUP=1 skips it (a machine set up by
# other means).
set -euo pipefail

what=${1:-test}
[[ ${GOFIN_NO_SETUP:-0} == 1 ]] && exit 0

run=(build-essential cmake ninja-build zlib1g-dev)
test=("${run[@]}" libgtest-dev libgmock-dev googletest pkg-config nlohmann-json3-dev)
bench=("${test[@]}" libbenchmark-dev libgc-dev gnuplot-nox)
docs=(doxygen)
ci=("${bench[@]}" clang libclang-rt-14-dev)
case $what in
  run) packages=("${run[@]}") ;;
  test) packages=("${test[@]}") ;;
  bench) packages=("${bench[@]}") ;;
  docs) packages=("${docs[@]}") ;;
  ci) packages=("${ci[@]}") ;;
  *) echo "usage: $0 run|test|bench|docs|ci" >&2; exit 2 ;;
esac

if ! command -v dpkg >/dev/null 2>&1; then
  echo "note: not a Debian system: make sure these (or their equivalents) are installed:" \
       "${packages[*]}" >&2
  exit 0
fi

missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
((${#missing[@]} == 0)) && exit 0

if [[ $(id -u) -ne 0 ]]; then
  echo "error: missing packages for 'make $what': ${missing[*]}" >&2
  echo "  install them with: sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "==> installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
