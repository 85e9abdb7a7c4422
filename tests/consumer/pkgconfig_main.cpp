// Built by the consumer_package test with `pkg-config --cflags --libs gofin`.
#include <gofin/gofin.hpp>

int main() {
  int* p = gofin::New<int>(7);
  gofin::GC();
  return *p == 7 ? 0 : 1;
}
