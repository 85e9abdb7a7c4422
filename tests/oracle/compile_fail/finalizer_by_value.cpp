// Must NOT compile: the finalizer's parameter is a value a pointer converts to (bool).
#include <gofin/gofin.hpp>
struct Foo { int x; };
int main() {
  Foo* f = gofin::New<Foo>();
  gofin::SetFinalizer(f, [](bool) {});
}
