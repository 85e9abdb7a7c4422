// Helpers shared by the gofin and bdwgc comparison programs (bench/compare).
// Header-only, no dependency on either collector.
//
// Every program prints machine-readable lines
//   RESULT <workload> <impl> <metric> <value> <unit>
// which bench/compare/run.sh collects into its tables.  Anything else a program prints
// (INFO lines, the binary-trees check lines) is for humans or for output comparison.
#pragma once

#include <dirent.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace cmp {

// Monotonic wall clock in nanoseconds.
inline double now_ns() {
  return static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                 std::chrono::steady_clock::now().time_since_epoch())
                                 .count());
}
inline double now_ms() { return now_ns() / 1e6; }

// Peak resident set size of this process in KiB (getrusage ru_maxrss is KiB on Linux).
inline long peak_rss_kib() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

// Threads of this process (entries of /proc/self/task), -1 if unavailable.
inline long os_threads() {
  DIR* d = opendir("/proc/self/task");
  if (d == nullptr) return -1;
  long n = 0;
  while (const dirent* e = readdir(d)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(d);
  return n;
}

inline void result(const char* workload, const char* impl, const char* metric, double value,
                   const char* unit, int precision = 3) {
  std::printf("RESULT %s %s %s %.*f %s\n", workload, impl, metric, precision, value, unit);
  std::fflush(stdout);
}

inline void result_rss(const char* workload, const char* impl) {
  result(workload, impl, "peak_rss", static_cast<double>(peak_rss_kib()), "KiB", 0);
}

inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// argv[i] as a positive integer, or def when absent; exits with a message when malformed.
inline long arg_long(int argc, char** argv, int i, long def) {
  if (i >= argc) return def;
  char* end = nullptr;
  long v = std::strtol(argv[i], &end, 10);
  if (end == argv[i] || *end != '\0' || v <= 0) {
    std::fprintf(stderr, "ERROR bad numeric argument '%s'\n", argv[i]);
    std::exit(2);
  }
  return v;
}

inline const char* env_or(const char* name, const char* def) {
  const char* v = std::getenv(name);
  return v && *v ? v : def;
}

}  // namespace cmp
