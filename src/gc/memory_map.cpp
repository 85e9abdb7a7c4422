#include "gc/memory_map.hpp"

#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstddef>
#include <cstring>

namespace gofin::internal {

namespace {

// One line of /proc/self/maps is far below this; a read returns whole lines.
constexpr std::size_t kBufferBytes = 16384;
constinit char g_buffer[kBufferBytes];

std::uintptr_t ParseHex(const char*& p, const char* end) {
  std::uintptr_t v = 0;
  for (; p < end; ++p) {
    const char c = *p;
    if (c >= '0' && c <= '9') {
      v = v * 16 + static_cast<std::uintptr_t>(c - '0');
    } else if (c >= 'a' && c <= 'f') {
      v = v * 16 + static_cast<std::uintptr_t>(c - 'a' + 10);
    } else {
      break;
    }
  }
  return v;
}

}  // namespace

bool ForEachMapping(MappingFn fn, void* ctx) {
  const int fd =
      static_cast<int>(syscall(SYS_openat, AT_FDCWD, "/proc/self/maps", O_RDONLY | O_CLOEXEC));
  if (fd < 0) return false;
  std::size_t have = 0;
  bool more = true;
  bool go_on = true;
  while (go_on && (more || have > 0)) {
    if (more && have < kBufferBytes) {
      const long got = syscall(SYS_read, fd, g_buffer + have, kBufferBytes - have);
      if (got <= 0) {
        more = false;
      } else {
        have += static_cast<std::size_t>(got);
      }
    }
    const char* line = g_buffer;
    const char* end = g_buffer + have;
    for (;;) {
      const char* nl = static_cast<const char*>(std::memchr(line, '\n', end - line));
      if (nl == nullptr) {
        if (!more && line < end)
          nl = end;  // the last line without its newline
        else
          break;
      }
      const char* p = line;
      const std::uintptr_t lo = ParseHex(p, nl);
      if (p < nl && *p == '-') ++p;
      const std::uintptr_t hi = ParseHex(p, nl);
      if (p < nl && *p == ' ') ++p;
      const bool readable = p < nl && *p == 'r';
      line = nl < end ? nl + 1 : end;
      if (!fn(ctx, lo, hi, readable)) {
        go_on = false;
        break;
      }
    }
    // Keep the partial line for the next read.
    auto rest = static_cast<std::size_t>(end - line);
    if (rest == kBufferBytes) rest = 0;  // a line longer than the buffer: dropped
    std::memmove(g_buffer, line, rest);
    have = rest;
    if (!more && rest == 0) break;
  }
  syscall(SYS_close, fd);
  return true;
}

bool FindReadableMapping(std::uintptr_t addr, std::uintptr_t& lo, std::uintptr_t& hi) {
  struct Search {
    std::uintptr_t addr = 0;
    std::uintptr_t lo = 0;
    std::uintptr_t hi = 0;
    bool found = false;
  } s{addr};
  ForEachMapping(
      [](void* ctx, std::uintptr_t mlo, std::uintptr_t mhi, bool readable) {
        auto& s = *static_cast<Search*>(ctx);
        if (s.addr >= mhi) return true;
        if (s.addr >= mlo && readable) {
          s.lo = mlo;
          s.hi = mhi;
          s.found = true;
        }
        return false;
      },
      &s);
  if (!s.found) return false;
  lo = s.lo;
  hi = s.hi;
  return true;
}

}  // namespace gofin::internal
