#!/usr/bin/env bash
# Chart of bench/compare/run.sh's results: small multiples, one panel per workload's
# headline metric (PANELS below: 12 by default, gc_pause with three), a bar per
# implementation (gofin, bdwgc, go), each bar the metric divided by gofin's, so gofin = 1.0
# and, every headline metric being a time or a memory size, lower is better. Each panel
# has its own scale; above each bar: that ratio and the measured value with its unit.
#
# usage: bench/compare/plot.sh [results.txt [out.svg|out.png]]
#   results.txt  default: build/release/bench/compare/logs/results.txt
#   out          default: compare.svg in the directory above results.txt's (i.e.
#                <build-dir>/bench/compare/compare.svg); a name ending in .png gives a PNG
#                (gnuplot's pngcairo terminal) of the same chart, for a quick look.
#
# Reads, when they sit next to results.txt: status.txt (a run that did not succeed is
# marked in its panel) and meta.txt (key=value lines written by run.sh: date, nproc, cpu,
# go, bdwgc; without it the date is results.txt's mtime and the machine this one).
# An implementation without a result is absent from its panel (labelled n/a, or with the
# run's status); a panel with no result at all is left out. Needs gnuplot (5.x; the
# gnuplot-nox package is enough; GNUPLOT=... picks another binary, GOFIN_PLOT_KEEP=file
# keeps the generated gnuplot script). Exit status: 0 chart written (its path printed),
# 1 nothing to plot or gnuplot failed, 2 gnuplot not installed.
set -u -o pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

RESULTS=${1:-$ROOT/build/release/bench/compare/logs/results.txt}
if [[ ! -s $RESULTS ]]; then
  echo "plot.sh: no results in $RESULTS" >&2
  exit 1
fi
LOGDIR=$(cd "$(dirname "$RESULTS")" && pwd)
OUTFILE=${2:-$(dirname "$LOGDIR")/compare.svg}
GNUPLOT=${GNUPLOT:-gnuplot}
if ! command -v "$GNUPLOT" >/dev/null 2>&1; then
  echo "plot.sh: gnuplot not found (apt-get install gnuplot-nox, or scripts/setup.sh bench)" >&2
  exit 2
fi

# The headline metric of each panel, in the order shown:
#   workload | config | metric | what the metric is (shown under the workload's name)
# gc_pause's 1024M configs exist only with GOFIN_COMPARE_BIG=1; absent panels are skipped.
PANELS='binary_trees|default|wall_ms|whole run, one mutator thread
gc_pause|256M-w1|pause_ms|full GC, 256 MiB live, 1 worker
gc_pause|256M-w2|pause_ms|full GC, 256 MiB live, 2 workers
gc_pause|1024M-w1|pause_ms|full GC, 1 GiB live, 1 worker
gc_pause|1024M-w2|pause_ms|full GC, 1 GiB live, 2 workers
gc_pause|256M-w2|peak_rss|process peak, 256 MiB live
fin_set_remove|default|ns_per_pair|SetFinalizer set + remove, 2 threads
fin_alloc_set|default|ns_per_op|allocate + SetFinalizer, 2 threads
fin_e2e|default|total_ms|2^20 finalizers: drop to last one run
fin_gc_heap|default|gc_fin_ms|full GC, 1M objects with finalizers
cleanup_add_stop|default|ns_per_pair|AddCleanup + Stop, one live object
cleanup_e2e|ct1|total_ms|2^20 cleanups: drop to last one run
weak_make_value|default|ns_per_pair|weak Make + Value, one live object
weak_gc|default|gc_weak_ms|full GC, 1M objects, a weak pointer each'

STATUS=$LOGDIR/status.txt
META=$LOGDIR/meta.txt
[[ -f $STATUS ]] || STATUS=/dev/null
[[ -f $META ]] || META=/dev/null

# Defaults for the title when run.sh left no meta.txt.
DEF_DATE=$(date -u -r "$RESULTS" '+%Y-%m-%d %H:%M UTC' 2>/dev/null || date -u '+%Y-%m-%d %H:%M UTC')
DEF_NPROC=$(nproc 2>/dev/null || echo '?')
DEF_CPU=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo 2>/dev/null | head -n 1)
[[ -n $DEF_CPU ]] || DEF_CPU=$(uname -m)

case $OUTFILE in
  *.png | *.PNG) TERM_LINE='set terminal pngcairo size %d,%d enhanced font "DejaVu Sans,11" fontscale 0.75 background rgb "white"' ;;
  *) TERM_LINE='set terminal svg size %d,%d dynamic enhanced font "DejaVu Sans,Arial,Helvetica,sans-serif,11" background rgb "white"' ;;
esac

TMP=$(mktemp -d "${TMPDIR:-/tmp}/gofin-plot.XXXXXX") || exit 1
trap 'rm -rf "$TMP"' EXIT
SCRIPT=$TMP/compare.gp

# Panels file, then status, meta, results: awk writes the whole gnuplot script.
printf '%s\n' "$PANELS" >"$TMP/panels"
awk -v out="$OUTFILE" -v termfmt="$TERM_LINE" -v def_date="$DEF_DATE" \
  -v def_nproc="$DEF_NPROC" -v def_cpu="$DEF_CPU" '
  function isnum(x) { return x ~ /^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$/ }
  function q(s) {  # a gnuplot double-quoted string (enhanced text: escape its specials)
    return "\"" esc(s) "\""
  }
  function fmtval(x,   a) {
    a = x < 0 ? -x : x
    if (a >= 10000) return sprintf("%.0f", x)
    if (a >= 100) return sprintf("%.0f", x)
    if (a >= 10) return sprintf("%.1f", x)
    if (a >= 1) return sprintf("%.2f", x)
    return sprintf("%.3g", x)
  }
  function fmtratio(r) {
    if (r >= 100) return sprintf("%.0f×", r)
    if (r >= 10) return sprintf("%.1f×", r)
    if (r >= 0.1) return sprintf("%.2f×", r)
    return sprintf("%.2g×", r)
  }
  FILENAME ~ /panels$/ {
    split($0, f, "|")
    np++; pw[np] = f[1]; pc[np] = f[2]; pm[np] = f[3]; pd[np] = f[4]
    next
  }
  FILENAME ~ /status\.txt$/ { st[$1, $2, $3] = $4; next }
  FILENAME ~ /meta\.txt$/ {
    k = $0; sub(/=.*/, "", k); v = $0; sub(/^[^=]*=/, "", v); meta[k] = v
    next
  }
  NF >= 6 && isnum($5) { val[$1, $2, $3, $4] = $5 + 0; unit[$1, $2, $3, $4] = $6 }
  END {
    ni = split("gofin bdwgc go", impl, " ")
    color["gofin"] = "#6A3D9A"; color["bdwgc"] = "#E66101"; color["go"] = "#00ADD8"
    label["gofin"] = "gofin"; label["bdwgc"] = "bdwgc (Boehm GC)"; label["go"] = "Go"
    # Which panels have anything to show.
    n = 0
    for (p = 1; p <= np; p++) {
      ref = ""
      for (i = 1; i <= ni; i++) {
        k = pw[p] SUBSEP pc[p] SUBSEP impl[i] SUBSEP pm[p]
        if ((k in val) && val[k] > 0 && ref == "") ref = impl[i]
      }
      if (ref == "") continue
      n++; sel[n] = p; refimpl[n] = ref
    }
    if (n == 0) { print "plot.sh: none of the headline metrics is in the results" > "/dev/stderr"; exit 1 }
    cols = n >= 4 ? 4 : n
    rows = int((n + cols - 1) / cols)
    # Layout in pixels (the SVG is scaled as a whole where it is shown: fonts are sized for
    # a page about 900 px wide, the width GitHub gives to the images in a README).
    pw_px = 300; ph_px = 230; top_px = 150; bottom_px = 62; gap_px = 100; side_px = 20
    W = cols * pw_px + 2 * side_px; if (W < 1000) W = 1000   # room for the title and footnote
    H = rows * ph_px + (rows - 1) * gap_px + top_px + bottom_px
    printf(termfmt "\n", W, H)
    o = out; gsub(/\\/, "\\\\", o); gsub(/"/, "\\\"", o)   # a file name: no enhanced-text escapes
    printf("set output \"%s\"\n", o)
    print "set encoding utf8"
    date = meta["date"] != "" ? meta["date"] : def_date
    nproc = meta["nproc"] != "" ? meta["nproc"] : def_nproc
    cpu = meta["cpu"] != "" ? meta["cpu"] : def_cpu
    vers = ""
    if (meta["go"] != "") vers = vers ", " meta["go"]
    if (meta["bdwgc"] != "") vers = vers ", bdwgc " meta["bdwgc"]
    t1 = "gofin vs bdwgc vs Go, relative to gofin (= 1.0): lower is better"
    t2 = date ", " nproc " CPUs (nproc), " cpu vers
    # Title, subtitle and legend in screen coordinates, drawn with the first panel only.
    printf("set label 1 %s at screen 0.5, screen %.4f center font \",19\"\n", q(t1), 1 - 26 / H)
    printf("set label 2 %s at screen 0.5, screen %.4f center font \",12\" tc rgb \"#444444\"\n", q(t2), 1 - 52 / H)
    lw_px[1] = 90; lw_px[2] = 190; lw_px[3] = 60   # legend entries: swatch + text widths
    lx = W / 2 - (lw_px[1] + lw_px[2] + lw_px[3]) / 2
    for (i = 1; i <= ni; i++) {
      printf("set object %d rect from screen %.4f, screen %.4f to screen %.4f, screen %.4f fc rgb \"%s\" fs solid 1.0 noborder front\n",
             90 + i, lx / W, 1 - 88 / H, (lx + 16) / W, 1 - 72 / H, color[impl[i]])
      printf("set label %d %s at screen %.4f, screen %.4f left font \",13\"\n", 2 + i, q(label[impl[i]]),
             (lx + 22) / W, 1 - 80 / H)
      lx += lw_px[i]
    }
    printf("set label 6 %s at screen 0.5, screen %.4f center font \",11\" tc rgb \"#666666\"\n",
           q("above each bar: its ratio to gofin and the measured value; dashed line: gofin. As text: run.sh'"'"'s tables (docs/figures/compare.txt)"),
           14 / H)
    print "set style fill solid 0.9 border rgb \"#333333\""
    print "set boxwidth 0.62"
    print "set style textbox opaque fillcolor rgb \"white\" noborder margins 1.0, 0.3"
    print "unset key"
    print "set xrange [-0.6:2.6]"
    print "set xtics (\"gofin\" 0, \"bdwgc\" 1, \"go\" 2) scale 0 font \",13\" tc rgb \"#222222\""
    print "set ytics nomirror font \",10\" tc rgb \"#555555\""
    print "set format y \"%g×\""
    print "set border 3 lc rgb \"#888888\""
    print "set grid ytics lc rgb \"#dddddd\" lt 1"
    printf("set multiplot layout %d,%d margins screen %.4f, screen %.4f, screen %.4f, screen %.4f spacing screen %.4f, screen %.4f\n",
           rows, cols, (side_px + 40) / W, 1 - side_px / W, bottom_px / H, 1 - top_px / H, 52 / W, gap_px / H)
    for (j = 1; j <= n; j++) {
      p = sel[j]; r = refimpl[j]
      rk = pw[p] SUBSEP pc[p] SUBSEP r SUBSEP pm[p]
      refv = val[rk]
      ymax = 1
      printf("$d%d << EOD\n", j)
      for (i = 1; i <= ni; i++) {
        k = pw[p] SUBSEP pc[p] SUBSEP impl[i] SUBSEP pm[p]
        if (!(k in val)) continue
        v = val[k]; u = unit[k]
        if (u == "KiB") { v = v / 1024; u = "MiB" }
        rv = val[k] / refv
        if (rv > ymax) ymax = rv
        printf("%d %.6g %d \"%s\" \"%s %s\"\n", i - 1, rv, hex(color[impl[i]]), fmtratio(rv), fmtval(v), u)
      }
      print "EOD"
      # Implementations without a result: a grey note at their slot.
      printf("$m%d << EOD\n", j)
      nm = 0
      for (i = 1; i <= ni; i++) {
        k = pw[p] SUBSEP pc[p] SUBSEP impl[i] SUBSEP pm[p]
        if (k in val) continue
        s = ((pw[p], pc[p], impl[i]) in st) ? st[pw[p], pc[p], impl[i]] : "not run"
        if (s == "ok") s = "n/a"
        else if (s == "SKIPPED" || s == "MISSING") s = "not run"
        printf("%d 0 \"%s\"\n", i - 1, s)
        nm++
      }
      if (nm == 0) print "-9 0 \"\""
      print "EOD"
      name = pw[p] (pc[p] != "default" ? " (" pc[p] ")" : "")
      u0 = unit[rk] == "KiB" ? "MiB" : unit[rk]
      printf("set title \"{/:Bold %s}  %s\\n{/=12 %s}\" font \",14\"\n", esc(name), esc(pm[p] " [" u0 "]"), esc(pd[p]))
      printf("set yrange [0:%.4g]\n", ymax * 1.32)
      if (r != "gofin")
        printf("set label 7 %s at graph 0.03, graph 0.95 left font \",11\" tc rgb \"#aa0000\"\n",
               q("no gofin result: relative to " r))
      else
        print "unset label 7"
      printf("set arrow 1 from -0.6, 1 to 2.6, 1 nohead dt 2 lw 1.2 lc rgb \"#333333\" back\n")
      printf("plot $d%d using 1:2:3 with boxes lc rgb variable, \\\n", j)
      printf("     $d%d using 1:2:4 with labels boxed offset 0, char 2.0 font \",14\" tc rgb \"#111111\", \\\n", j)
      printf("     $d%d using 1:2:5 with labels boxed offset 0, char 0.75 font \",12\" tc rgb \"#555555\", \\\n", j)
      printf("     $m%d using 1:2:3 with labels offset 0, char 0.8 font \",11\" tc rgb \"#999999\"\n", j)
      if (j == 1) {
        print "unset label 1; unset label 2; unset label 3; unset label 4; unset label 5; unset label 6"
        for (i = 1; i <= ni; i++) printf("unset object %d\n", 90 + i)
      }
    }
    print "unset multiplot"
    print "unset output"
  }
  function esc(s) {  # text for an enhanced-mode title inside a double-quoted string
    gsub(/\\/, "\\\\\\\\", s); gsub(/"/, "\\\"", s)
    gsub(/[_^@&~{}]/, "\\\\\\\\&", s)
    return s
  }
  function hex(c,   i, d, v) {
    v = 0; c = tolower(substr(c, 2))
    for (i = 1; i <= length(c); i++) v = v * 16 + index("0123456789abcdef", substr(c, i, 1)) - 1
    return v
  }
' "$TMP/panels" "$STATUS" "$META" "$RESULTS" >"$SCRIPT" || exit 1

mkdir -p "$(dirname "$OUTFILE")" || exit 1
if ! "$GNUPLOT" "$SCRIPT" 2>"$TMP/gnuplot.err"; then
  echo "plot.sh: gnuplot failed:" >&2
  sed 's/^/  /' "$TMP/gnuplot.err" >&2
  [[ -n ${GOFIN_PLOT_KEEP:-} ]] && cp "$SCRIPT" "$GOFIN_PLOT_KEEP"
  exit 1
fi
grep -v -e '^$' "$TMP/gnuplot.err" >&2 || true
[[ -n ${GOFIN_PLOT_KEEP:-} ]] && cp "$SCRIPT" "$GOFIN_PLOT_KEEP"
echo "$OUTFILE"
