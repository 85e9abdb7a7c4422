// Must NOT compile: gofin supports alignments up to 8192 bytes.
#include <gofin/gofin.hpp>
struct alignas(16384) Big { char c; };
int main() { (void)gofin::New<Big>(); }
