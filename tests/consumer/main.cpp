// Built by the consumer_package test against an installed gofin (find_package). Writing a
// heap profile links the library's own dependencies (zlib) through the package.
#include <gofin/gofin.hpp>
#include <sstream>

int main() {
  gofin::SetMemProfileRate(1);
  int* p = gofin::New<int>(42);
  gofin::GC();
  std::ostringstream profile;
  gofin::pprof::WriteHeapProfile(profile);
  // gzip's magic number first.
  const std::string s = profile.str();
  if (s.size() < 2 || static_cast<unsigned char>(s[0]) != 0x1f ||
      static_cast<unsigned char>(s[1]) != 0x8b) {
    return 2;
  }
  return *p == 42 ? 0 : 1;
}
