// Cleanup and weak-pointer workloads on bdwgc, with its nearest analogues of Go's
// runtime.AddCleanup and package weak. Same work as gofin/cleanups.cpp and
// go/cleanups/main.go.
//
// Usage: compare_bdwgc_cleanups <sub> [size]
//   add_stop        [ops=1048576]  GC_register_finalizer(x, fn) + GC_register_finalizer(x, NULL)
//                                  on one long-lived 16-byte object (bdwgc has no cleanups:
//                                  register + unregister a finalizer is the nearest analogue of
//                                  AddCleanup + Stop): ns_per_pair. The same pair timed again
//                                  as set_remove_ns, the analogue of SetFinalizer set + remove.
//                                  Check: every unregister returned the finalizer just set.
//   e2e             [log2n=20]     GC_set_finalize_on_demand(1); 2^n 16-byte objects (GC_MALLOC)
//                                  with GC_register_finalizer_ignore_self (unordered with respect
//                                  to self-references, like a cleanup) made garbage; time until
//                                  every one ran: GC_gcollect(), then GC_invoke_finalizers() on
//                                  this thread until the counter reaches 2^n (another
//                                  GC_gcollect() only if nothing is left to invoke: gc_rounds > 1).
//   weak_make_value [ops=4194304]  GC_general_register_disappearing_link(link, x) +
//                                  GC_unregister_disappearing_link(link) on one live object, the
//                                  link a hidden pointer in a pointer-free block (bdwgc's weak
//                                  pointer; a pair registers and removes, where weak.Make finds
//                                  the existing handle): ns_per_pair. Then the read alone
//                                  (GC_REVEAL_POINTER under GC_call_with_alloc_lock, as bdwgc
//                                  requires): value_ns.
//   weak_gc         [n=1048576]    one full GC_gcollect() (median of 3) of n live 16-byte objects,
//                                  then of the same after giving each a disappearing link in an
//                                  8-byte pointer-free block of its own (the layout of Go's and
//                                  gofin's weak handles). Check: every link reveals its object
//                                  while live and is cleared once the objects are dropped, but
//                                  for at most kConservativeSlack (bdwgc scans every thread's
//                                  stack, its marker threads' included, and the data segments
//                                  conservatively; a few of 2^20 stay reachable from stale
//                                  words, differing from run to run): not_cleared.
#include <gc.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include "compare_common.hpp"

namespace {

const char* const kImpl = "bdwgc";
constexpr long kConservativeSlack = 64;

struct Obj {
  Obj* next;
  long value;
};
static_assert(sizeof(Obj) == 16);

Obj* new_obj() { return static_cast<Obj*>(GC_MALLOC(sizeof(Obj))); }  // zeroed, scanned

std::atomic<long> g_cleaned{0};

void count_fin(void*, void*) { g_cleaned.fetch_add(1, std::memory_order_relaxed); }
void empty_fin(void*, void*) {}

// A weak pointer: one word holding the hidden address, in a pointer-free block.
using Link = GC_hidden_pointer;

Link* new_link(Obj* target) {
  auto* link = static_cast<Link*>(GC_MALLOC_ATOMIC(sizeof(Link)));
  *link = GC_HIDE_POINTER(target);
  return link;
}

bool register_link(Link* link, Obj* target) {
  return GC_general_register_disappearing_link(reinterpret_cast<void**>(link), target) ==
         GC_SUCCESS;
}

void* reveal_locked(void* link) {
  const Link h = *static_cast<Link*>(link);
  return h != 0 ? GC_REVEAL_POINTER(h) : nullptr;
}

// bdwgc's weak read: under the allocation lock, so that no collection clears the link between
// the load and the use.
Obj* link_value(Link* link) {
  return static_cast<Obj*>(GC_call_with_alloc_lock(reveal_locked, link));
}

// ---------------------------------------------------------------- (a) register + unregister
double register_pairs(Obj* x, long ops, long* bad) {
  GC_finalization_proc ofn = nullptr;
  void* ocd = nullptr;
  const double t0 = cmp::now_ns();
  for (long i = 0; i < ops; ++i) {
    GC_register_finalizer(x, empty_fin, nullptr, &ofn, &ocd);
    GC_register_finalizer(x, nullptr, nullptr, &ofn, &ocd);
    *bad += ofn != empty_fin;
  }
  return (cmp::now_ns() - t0) / static_cast<double>(ops);
}

int add_stop(long ops) {
  const char* wl = "cleanup_add_stop";
  Obj* x = new_obj();
  long bad = 0;
  (void)register_pairs(x, ops / 16 + 1, &bad);
  const double pair_ns = register_pairs(x, ops, &bad);
  const double set_remove_ns = register_pairs(x, ops, &bad);
  GC_finalization_proc ofn = nullptr;
  void* ocd = nullptr;
  GC_register_finalizer(x, nullptr, nullptr, &ofn, &ocd);  // none must be left
  if (bad != 0 || ofn != nullptr) {
    std::printf(
        "ERROR bdwgc cleanup_add_stop: %ld unregisters did not find the finalizer just "
        "registered; one left at the end: %s\n",
        bad, ofn != nullptr ? "yes" : "no");
    return 1;
  }
  cmp::result(wl, kImpl, "ns_per_pair", pair_ns, "ns");
  cmp::result(wl, kImpl, "set_remove_ns", set_remove_ns, "ns");
  cmp::result_rss(wl, kImpl);
  return 0;
}

// ---------------------------------------------------------------- (b) end to end
[[gnu::noinline]] Obj** make_with_finalizers(long n) {
  auto** arr = static_cast<Obj**>(GC_MALLOC(sizeof(Obj*) * static_cast<std::size_t>(n)));
  for (long i = 0; i < n; ++i) {
    Obj* p = new_obj();
    GC_register_finalizer_ignore_self(p, count_fin, nullptr, nullptr, nullptr);
    arr[i] = p;
  }
  return arr;
}

int e2e(long log2n) {
  const char* wl = "cleanup_e2e";
  const long n = 1L << log2n;
  GC_set_finalize_on_demand(1);
  const double s0 = cmp::now_ms();
  Obj** arr = make_with_finalizers(n);
  const double s1 = cmp::now_ms();
  GC_invoke_finalizers();  // nothing should be pending: they are all reachable
  if (g_cleaned.load() != 0) {
    std::printf("ERROR bdwgc cleanup_e2e: %ld finalizers ran while the objects were reachable\n",
                g_cleaned.load());
    return 1;
  }

  std::memset(static_cast<void*>(arr), 0, sizeof(Obj*) * static_cast<std::size_t>(n));
  const double t0 = cmp::now_ms();
  GC_gcollect();
  const double t_gc = cmp::now_ms();
  int rounds = 1;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (g_cleaned.load() < n) {
    if (GC_invoke_finalizers() != 0) continue;
    if (rounds >= 5 || std::chrono::steady_clock::now() > deadline) break;
    std::printf("INFO bdwgc cleanup_e2e: nothing to invoke at %ld/%ld, collecting again\n",
                g_cleaned.load(), n);
    GC_gcollect();
    ++rounds;
  }
  const double t_done = cmp::now_ms();
  if (g_cleaned.load() != n) {
    std::printf("ERROR bdwgc cleanup_e2e: %ld of %ld finalizers ran (%d GC rounds)\n",
                g_cleaned.load(), n, rounds);
    return 1;
  }
  cmp::result(wl, kImpl, "objects", static_cast<double>(n), "objs", 0);
  cmp::result(wl, kImpl, "setup_ms", s1 - s0, "ms");
  cmp::result(wl, kImpl, "gc_ms", t_gc - t0, "ms");
  cmp::result(wl, kImpl, "total_ms", t_done - t0, "ms");
  cmp::result(wl, kImpl, "ns_per_object", (t_done - t0) * 1e6 / static_cast<double>(n), "ns");
  cmp::result(wl, kImpl, "gc_rounds", rounds, "rounds", 0);
  cmp::result_rss(wl, kImpl);
  return 0;
}

// ---------------------------------------------------------------- (c) weak: register + read
int weak_make_value(long ops) {
  const char* wl = "weak_make_value";
  Obj* x = new_obj();
  Link* link = new_link(x);
  long bad = 0;
  auto pairs = [&](long k) {
    for (long i = 0; i < k; ++i) {
      bad += !register_link(link, x);
      bad += GC_unregister_disappearing_link(reinterpret_cast<void**>(link)) != 1;
    }
  };
  pairs(ops / 16 + 1);
  const double t0 = cmp::now_ns();
  pairs(ops);
  const double t1 = cmp::now_ns();
  bad += !register_link(link, x);
  for (long i = 0; i < ops / 16 + 1; ++i) bad += link_value(link) != x;
  const double t2 = cmp::now_ns();
  for (long i = 0; i < ops; ++i) bad += link_value(link) != x;
  const double t3 = cmp::now_ns();
  GC_reachable_here(x);
  if (bad != 0) {
    std::printf("ERROR bdwgc weak_make_value: %ld registrations or reads failed\n", bad);
    return 1;
  }
  cmp::result(wl, kImpl, "ns_per_pair", (t1 - t0) / static_cast<double>(ops), "ns");
  cmp::result(wl, kImpl, "value_ns", (t3 - t2) / static_cast<double>(ops), "ns");
  cmp::result_rss(wl, kImpl);
  return 0;
}

// ---------------------------------------------------------------- (d) GC with weak links
double median_gc_ms() {
  std::vector<double> v;
  for (int i = 0; i < 3; ++i) {
    const double t0 = cmp::now_ms();
    GC_gcollect();
    v.push_back(cmp::now_ms() - t0);
  }
  return cmp::median(v);
}

[[gnu::noinline]] Obj** make_objects(long n) {
  auto** arr = static_cast<Obj**>(GC_MALLOC(sizeof(Obj*) * static_cast<std::size_t>(n)));
  for (long i = 0; i < n; ++i) arr[i] = new_obj();
  return arr;
}

// Returns nullptr if a registration failed.
[[gnu::noinline]] Link** make_links(Obj** arr, long n) {
  auto** links = static_cast<Link**>(GC_MALLOC(sizeof(Link*) * static_cast<std::size_t>(n)));
  for (long i = 0; i < n; ++i) {
    links[i] = new_link(arr[i]);
    if (!register_link(links[i], arr[i])) return nullptr;
  }
  return links;
}

[[gnu::noinline]] long count_wrong(Link** links, Obj** arr, long n) {
  long bad = 0;
  for (long i = 0; i < n; ++i) bad += link_value(links[i]) != arr[i];
  return bad;
}

[[gnu::noinline]] long count_not_cleared(Link** links, long n) {
  long left = 0;
  for (long i = 0; i < n; ++i) left += link_value(links[i]) != nullptr;
  return left;
}

int weak_gc(long n) {
  const char* wl = "weak_gc";
  Obj** arr = make_objects(n);
  const double plain = median_gc_ms();
  const double s0 = cmp::now_ms();
  Link** links = make_links(arr, n);
  const double s1 = cmp::now_ms();
  if (links == nullptr) {
    std::printf("ERROR bdwgc weak_gc: GC_general_register_disappearing_link failed\n");
    return 1;
  }
  const double with_weak = median_gc_ms();
  if (const long bad = count_wrong(links, arr, n); bad != 0) {
    std::printf("ERROR bdwgc weak_gc: %ld of %ld links to live objects are wrong\n", bad, n);
    return 1;
  }
  std::memset(static_cast<void*>(arr), 0, sizeof(Obj*) * static_cast<std::size_t>(n));
  int rounds = 0;
  long left = n;
  while (left != 0 && rounds < 5) {
    GC_gcollect();
    ++rounds;
    left = count_not_cleared(links, n);
    if (left != 0) {
      std::printf("INFO bdwgc weak_gc: %ld of %ld links not cleared after %d GCs\n", left, n,
                  rounds);
    }
  }
  GC_reachable_here(arr);
  GC_reachable_here(links);
  if (left > kConservativeSlack) {
    std::printf("ERROR bdwgc weak_gc: %ld of %ld links still not cleared after %d GCs\n", left, n,
                rounds);
    return 1;
  }
  if (left != 0) {
    std::printf("INFO bdwgc weak_gc: %ld of %ld objects kept by conservative roots (<= %ld)\n",
                left, n, kConservativeSlack);
  }
  cmp::result(wl, kImpl, "objects", static_cast<double>(n), "objs", 0);
  cmp::result(wl, kImpl, "gc_plain_ms", plain, "ms");
  cmp::result(wl, kImpl, "gc_weak_ms", with_weak, "ms");
  cmp::result(wl, kImpl, "weak_extra_ms", with_weak - plain, "ms");
  cmp::result(wl, kImpl, "ns_per_weak", (with_weak - plain) * 1e6 / static_cast<double>(n), "ns");
  cmp::result(wl, kImpl, "weak_over_plain", with_weak / plain, "x");
  cmp::result(wl, kImpl, "make_all_ms", s1 - s0, "ms");
  cmp::result(wl, kImpl, "clear_gc_rounds", rounds, "rounds", 0);
  cmp::result(wl, kImpl, "not_cleared", static_cast<double>(left), "objs", 0);
  cmp::result_rss(wl, kImpl);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  GC_INIT();
  GC_allow_register_threads();
  GC_start_mark_threads();  // parallel marking (GC_MARKERS, default: cores), as gofin and Go mark
                            // in parallel
  const std::string sub = argc > 1 ? argv[1] : "";
  if (sub == "add_stop") return add_stop(cmp::arg_long(argc, argv, 2, 1L << 20));
  if (sub == "e2e") return e2e(cmp::arg_long(argc, argv, 2, 20));
  if (sub == "weak_make_value") return weak_make_value(cmp::arg_long(argc, argv, 2, 1L << 22));
  if (sub == "weak_gc") return weak_gc(cmp::arg_long(argc, argv, 2, 1L << 20));
  std::fprintf(stderr, "usage: %s add_stop|e2e|weak_make_value|weak_gc [size]\n", argv[0]);
  return 2;
}
