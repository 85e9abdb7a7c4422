#include "heap/options.hpp"

#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

namespace gofin::internal {

namespace {

// Whole decimal number, all of s; false on anything else (empty, trailing junk, overflow).
bool ParseWhole(std::string_view s, std::int64_t& out) {
  if (s.empty()) return false;
  const std::string copy(s);
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(copy.c_str(), &end, 10);
  if (errno != 0 || end != copy.c_str() + copy.size()) return false;
  out = v;
  return true;
}

}  // namespace

const char* EnvRaw(const char* name) { return secure_getenv(name); }

void WarnMalformedEnv(const char* name, const char* value, const char* why) {
  std::fprintf(stderr, "gofin: ignoring %s=%s: %s\n", name, value, why);
}

std::string EnvPath(const char* name) {
  const char* raw = EnvRaw(name);
  std::string path = raw == nullptr ? "" : raw;
  const std::string pid = std::to_string(getpid());
  for (std::size_t at = path.find("%p"); at != std::string::npos; at = path.find("%p", at)) {
    path.replace(at, 2, pid);
    at += pid.size();
  }
  return path;
}

std::optional<std::int64_t> EnvInteger(const char* name, std::int64_t lo, std::int64_t hi) {
  const char* v = EnvRaw(name);
  if (v == nullptr) return std::nullopt;
  std::int64_t n = 0;
  if (!ParseWhole(v, n)) {
    WarnMalformedEnv(name, v, "not a whole number");
    return std::nullopt;
  }
  if (n < lo || n > hi) {
    char why[96];
    std::snprintf(why, sizeof(why), "out of range [%lld, %lld]", static_cast<long long>(lo),
                  static_cast<long long>(hi));
    WarnMalformedEnv(name, v, why);
    return std::nullopt;
  }
  return n;
}

std::optional<bool> EnvBool(const char* name) {
  const char* v = EnvRaw(name);
  if (v == nullptr) return std::nullopt;
  const std::string_view s(v);
  if (s == "1" || s == "on" || s == "true" || s == "yes") return true;
  if (s == "0" || s == "off" || s == "false" || s == "no") return false;
  WarnMalformedEnv(name, v, "expected 1/0, on/off, true/false or yes/no");
  return std::nullopt;
}

std::optional<int> EnvPercent(const char* name) {
  const char* v = EnvRaw(name);
  if (v == nullptr) return std::nullopt;
  if (std::strcmp(v, "off") == 0) return -1;
  std::int64_t n = 0;
  if (!ParseWhole(v, n) || n < INT_MIN || n > INT_MAX) {
    WarnMalformedEnv(name, v, "expected \"off\" or a whole number");
    return std::nullopt;
  }
  return static_cast<int>(n < 0 ? -1 : n);
}

std::int64_t ParseByteCount(const char* s) {
  const std::string_view all(s);
  std::size_t digits = 0;
  while (digits < all.size() && all[digits] >= '0' && all[digits] <= '9') ++digits;
  std::int64_t v = 0;
  if (!ParseWhole(all.substr(0, digits), v)) return -1;
  const std::string_view unit = all.substr(digits);
  std::int64_t mult = 1;
  if (unit.empty() || unit == "B") {
    mult = 1;
  } else if (unit == "KiB") {
    mult = std::int64_t{1} << 10;
  } else if (unit == "MiB") {
    mult = std::int64_t{1} << 20;
  } else if (unit == "GiB") {
    mult = std::int64_t{1} << 30;
  } else if (unit == "TiB") {
    mult = std::int64_t{1} << 40;
  } else {
    return -1;
  }
  if (v > INT64_MAX / mult) return INT64_MAX;
  return v * mult;
}

std::optional<std::int64_t> EnvByteCount(const char* name) {
  const char* v = EnvRaw(name);
  if (v == nullptr) return std::nullopt;
  if (std::strcmp(v, "off") == 0) return INT64_MAX;
  const std::int64_t n = ParseByteCount(v);
  if (n < 0) {
    WarnMalformedEnv(name, v, "expected \"off\" or a byte count such as 512MiB");
    return std::nullopt;
  }
  return n;
}

std::optional<std::int64_t> EnvDebugKey(const char* name, const char* key, std::int64_t lo,
                                        std::int64_t hi) {
  const char* v = EnvRaw(name);
  if (v == nullptr) return std::nullopt;
  const std::string_view all(v);
  const std::string_view want(key);
  std::size_t pos = 0;
  while (pos <= all.size()) {
    std::size_t comma = all.find(',', pos);
    if (comma == std::string_view::npos) comma = all.size();
    const std::string_view item = all.substr(pos, comma - pos);
    const std::size_t eq = item.find('=');
    if (eq != std::string_view::npos && item.substr(0, eq) == want) {
      std::int64_t n = 0;
      if (!ParseWhole(item.substr(eq + 1), n) || n < lo || n > hi) {
        const std::string bad(item);
        WarnMalformedEnv(name, bad.c_str(), "expected key=number, e.g. gctrace=1");
        return std::nullopt;
      }
      return n;
    }
    pos = comma + 1;
  }
  return std::nullopt;
}

}  // namespace gofin::internal
