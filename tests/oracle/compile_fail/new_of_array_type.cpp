// Must NOT compile: New<T[N]> (use NewArray<T>(n)).
#include <gofin/gofin.hpp>
int main() { (void)gofin::New<int[4]>(); }
