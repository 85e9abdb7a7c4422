// Built by the consumer_package test with `pkg-config --cflags --libs gofin`. Writing a heap
// profile links the library's own dependencies (zlib) through the .pc file.
#include <gofin/gofin.hpp>
#include <sstream>

int main() {
  int* p = gofin::New<int>(7);
  gofin::GC();
  std::ostringstream profile;
  gofin::pprof::WriteHeapProfile(profile);
  if (profile.str().size() < 2) return 2;
  return *p == 7 ? 0 : 1;
}
