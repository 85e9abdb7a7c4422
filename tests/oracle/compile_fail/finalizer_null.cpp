// Must NOT compile: NULL is an integer in C++; removing a finalizer takes nullptr.
#include <gofin/gofin.hpp>
#include <cstddef>
struct Foo { int x; };
int main() {
  Foo* f = gofin::New<Foo>();
  gofin::SetFinalizer(f, NULL);
}
