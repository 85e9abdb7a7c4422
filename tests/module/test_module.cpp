// A shared library that test_real_programs loads and unloads in a loop while collections run:
// its writable segments are roots while it is loaded (and must not be scanned once unloaded).
#include <cstddef>

namespace {
// Large .data and .bss, so that a collection scanning them after the unmap faults at once.
char g_data[4 << 20] = {1};
void* g_bss[1 << 19];
}  // namespace

extern "C" [[gnu::visibility("default")]] void gofin_test_module_set(void* p) {
  g_bss[0] = p;
  g_data[0] = 2;
  asm volatile("" : : "r"(g_data), "r"(g_bss) : "memory");
}
