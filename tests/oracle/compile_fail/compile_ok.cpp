// Positive control for the compile_fail_* tests: the same headers and flags compile this.
#include <gofin/gofin.hpp>
struct Base { virtual ~Base() = default; int b = 0; };
struct Foo : Base { int x = 0; };
struct alignas(8192) Aligned { char c; };
void Fn(Foo*) {}
int main() {
  Foo* f = gofin::New<Foo>();
  gofin::SetFinalizer(f, &Fn);
  gofin::SetFinalizer(f, nullptr);
  gofin::SetFinalizer(f, [](const Foo*) {});
  gofin::SetFinalizer(f, nullptr);
  gofin::SetFinalizer(f, [](Base*) {});
  gofin::SetFinalizer(f, nullptr);
  gofin::SetFinalizer(f, [](void*) {});
  (void)gofin::New<Aligned>();
  (void)gofin::NewArray<int>(4);
}
