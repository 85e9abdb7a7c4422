// Built by the consumer_package test against an installed gofin (find_package).
#include <gofin/gofin.hpp>

int main() {
  int* p = gofin::New<int>(42);
  gofin::GC();
  return *p == 42 ? 0 : 1;
}
