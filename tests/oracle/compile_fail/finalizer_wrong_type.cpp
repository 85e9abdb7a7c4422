// Must NOT compile: the finalizer takes a pointer to an unrelated type.
#include <gofin/gofin.hpp>
struct Foo { int x; };
struct Bar { int y; };
int main() {
  Foo* f = gofin::New<Foo>();
  gofin::SetFinalizer(f, [](Bar*) {});
}
