// Must NOT compile: a cleanup must be a callable, not NULL.
#include <gofin/gofin.hpp>
#include <cstddef>
struct Foo { int x; };
int main() {
  Foo* f = gofin::New<Foo>();
  gofin::AddCleanup(f, NULL, 0);
}
