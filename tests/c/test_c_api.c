/* The C API (gofin/gofin.h) from C11: every call, its semantics, threads, and every misuse
 * with Go's message. Built three ways: in the tree (ctest c_api, also under the sanitizers),
 * and by the consumer_package test against the installed package through CMake and through
 * pkg-config.
 *
 * Conservative scanning: a GC pointer left in this thread's stack or registers keeps its
 * object alive, so objects that must die are made and dropped on short-lived threads
 * (run_on_thread), whose stacks are gone when they are joined. */
#include <gofin/gofin.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int g_failures;

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++g_failures;                                                            \
    }                                                                          \
  } while (0)

#define CHECK_ERROR(text)                                                                       \
  do {                                                                                          \
    if (strcmp(gofin_last_error(), (text)) != 0) {                                              \
      fprintf(stderr, "%s:%d: gofin_last_error() is \"%s\", want \"%s\"\n", __FILE__, __LINE__, \
              gofin_last_error(), (text));                                                      \
      ++g_failures;                                                                             \
    }                                                                                           \
  } while (0)

static const int64_t kSecond = 1000000000;

static void* call(void* arg) {
  void (*fn)(void) = (void (*)(void))(uintptr_t)arg;
  fn();
  return NULL;
}

/* Runs fn on a thread of its own and waits for it: what it allocated and dropped is not in
 * any live stack afterwards. */
static void run_on_thread(void (*fn)(void)) {
  pthread_t t;
  if (pthread_create(&t, NULL, call, (void*)(uintptr_t)fn) != 0) {
    perror("pthread_create");
    exit(2);
  }
  pthread_join(t, NULL);
}

/* Collects and drains both queues until done() holds, at most 20 cycles. */
static int cycle_until(int (*done)(void)) {
  for (int i = 0; i < 20; ++i) {
    gofin_gc();
    gofin_wait_finalizers(5 * kSecond);
    gofin_wait_cleanups(5 * kSecond);
    if (done()) return 1;
  }
  return 0;
}

/* ---- allocation ------------------------------------------------------------------------ */

static void test_allocation(void) {
  unsigned char* p = gofin_malloc(100);
  CHECK(p != NULL);
  for (int i = 0; i < 100; ++i) CHECK(p[i] == 0);
  char* s = gofin_malloc_noscan(32);
  CHECK(s != NULL);
  strcpy(s, "hello, gofin");
  CHECK(gofin_malloc(0) != NULL);

  char* t = gofin_realloc(s, 4096);
  CHECK(t != NULL && strcmp(t, "hello, gofin") == 0);
  CHECK(t != NULL && t[4095] == 0);
  char* u = gofin_realloc(t, 4);
  CHECK(u != NULL && memcmp(u, "hell", 4) == 0);
  CHECK(gofin_realloc(NULL, 8) != NULL);

  /* A scanned block stays scanned through realloc: what it points to stays alive. */
  void** holder = gofin_malloc(sizeof(void*));
  holder[0] = gofin_malloc(16);
  holder = gofin_realloc(holder, 64 * sizeof(void*));
  CHECK(holder[0] != NULL);

  /* Small pointer-free blocks each start their own slot: each reallocs, and the new block
     holds that block's bytes, zeros after them. */
  char* small[8];
  for (int i = 0; i < 8; ++i) {
    small[i] = gofin_malloc_noscan(3);
    memcpy(small[i], "XY", 2);
  }
  for (int i = 0; i < 8; ++i) {
    char* r = gofin_realloc(small[i], 64);
    CHECK(r != NULL && memcmp(r, "XY", 2) == 0);
    for (int j = 16; r != NULL && j < 64; ++j) CHECK(r[j] == 0);
  }
  CHECK(gofin_realloc(u, 100) != NULL); /* a realloc'd block reallocs again */

  int local = 0;
  CHECK(gofin_realloc(&local, 8) == NULL);
  CHECK_ERROR("gofin_realloc: pointer not at beginning of allocated block");
  CHECK(gofin_realloc(p + 1, 8) == NULL);
  CHECK_ERROR("gofin_realloc: pointer not at beginning of allocated block");

  /* Out of memory is NULL and a message, never an abort. */
  CHECK(gofin_malloc(SIZE_MAX) == NULL);
  CHECK_ERROR("gofin: out of memory");
  CHECK(gofin_malloc_noscan(SIZE_MAX / 2) == NULL);
  gofin_keep_alive(p);
}

/* ---- finalizers ------------------------------------------------------------------------ */

typedef struct Payload {
  uint64_t magic;
} Payload;
enum { kMagic = 0x600df1a1 };

static atomic_int g_finalized;
static atomic_int g_data_intact;

static void finalize(void* obj, void* data) {
  (void)obj;
  const Payload* d = data;
  if (d != NULL && d->magic == kMagic) atomic_fetch_add(&g_data_intact, 1);
  atomic_fetch_add(&g_finalized, 1);
}

static void make_finalized_garbage(void) {
  for (int i = 0; i < 100; ++i) {
    void* obj = gofin_malloc(48);
    /* data lives only in the finalizer's box: the finalizer keeps it alive. */
    Payload* data = gofin_malloc(sizeof(Payload));
    data->magic = kMagic;
    CHECK(gofin_set_finalizer(obj, finalize, data) == 0);
  }
}

static int all_finalized(void) { return atomic_load(&g_finalized) == 100; }

static void test_finalizers(void) {
  run_on_thread(make_finalized_garbage);
  CHECK(cycle_until(all_finalized));
  if (atomic_load(&g_finalized) != 100) {
    fprintf(stderr, "finalized %d of 100\n", atomic_load(&g_finalized));
  }
  CHECK(atomic_load(&g_finalized) == 100);
  CHECK(atomic_load(&g_data_intact) == 100);
  /* Once each: more cycles run nothing more. */
  gofin_gc();
  gofin_wait_finalizers(5 * kSecond);
  CHECK(atomic_load(&g_finalized) == 100);
}

static void* volatile g_kept; /* a global root */
static atomic_int g_kept_finalized;
static void finalize_kept(void* obj, void* data) {
  (void)obj;
  (void)data;
  atomic_fetch_add(&g_kept_finalized, 1);
}

static atomic_int g_removed_ran;
static void finalize_removed(void* obj, void* data) {
  (void)obj;
  (void)data;
  atomic_fetch_add(&g_removed_ran, 1);
}
static void make_removed(void) {
  for (int i = 0; i < 10; ++i) {
    void* obj = gofin_malloc(32);
    CHECK(gofin_set_finalizer(obj, finalize_removed, NULL) == 0);
    CHECK(gofin_remove_finalizer(obj) == 0);
    /* NULL fn removes too (Go: SetFinalizer(obj, nil)). */
    void* other = gofin_malloc(32);
    CHECK(gofin_set_finalizer(other, finalize_removed, NULL) == 0);
    CHECK(gofin_set_finalizer(other, NULL, NULL) == 0);
  }
}

static int g_global_object[4];

static void test_finalizer_semantics_and_misuse(void) {
  g_kept = gofin_malloc(64);
  CHECK(gofin_set_finalizer(g_kept, finalize_kept, NULL) == 0);
  CHECK(gofin_set_finalizer(g_kept, finalize_kept, NULL) == -1);
  CHECK_ERROR("runtime.SetFinalizer: finalizer already set");
  for (int i = 0; i < 3; ++i) gofin_gc();
  gofin_wait_finalizers(5 * kSecond);
  CHECK(atomic_load(&g_kept_finalized) == 0);

  run_on_thread(make_removed);
  for (int i = 0; i < 3; ++i) gofin_gc();
  gofin_wait_finalizers(5 * kSecond);
  CHECK(atomic_load(&g_removed_ran) == 0);

  CHECK(gofin_set_finalizer(NULL, finalize, NULL) == -1);
  CHECK_ERROR("runtime.SetFinalizer: first argument is nil");
  char* block = gofin_malloc(64);
  CHECK(gofin_set_finalizer(block + 8, finalize, NULL) == -1);
  CHECK_ERROR("runtime.SetFinalizer: pointer not at beginning of allocated block");
  void* m = malloc(64);
  CHECK(gofin_set_finalizer(m, finalize, NULL) == -1);
  CHECK_ERROR("runtime.SetFinalizer: pointer not in allocated block");
  CHECK(gofin_remove_finalizer(m) == -1);
  CHECK_ERROR("runtime.SetFinalizer: pointer not in allocated block");
  free(m);
  /* A global never becomes unreachable: Go makes it a no-op, not an error. */
  CHECK(gofin_set_finalizer(g_global_object, finalize, NULL) == 0);
  /* The plain function too, without the file:line macro. */
  CHECK((gofin_set_finalizer)(block, finalize_kept, NULL) == 0);
  CHECK((gofin_set_finalizer)(block, NULL, NULL) == 0);
  gofin_keep_alive(block);
}

/* ---- cleanups -------------------------------------------------------------------------- */

static atomic_int g_cleaned;
static atomic_int g_arg_intact;
static void cleanup(void* arg) {
  const Payload* p = arg;
  if (p != NULL && p->magic == kMagic) atomic_fetch_add(&g_arg_intact, 1);
  atomic_fetch_add(&g_cleaned, 1);
}
static atomic_int g_stopped_ran;
static void cleanup_stopped(void* arg) {
  (void)arg;
  atomic_fetch_add(&g_stopped_ran, 1);
}

static void make_cleanup_garbage(void) {
  for (int i = 0; i < 100; ++i) {
    char* obj = gofin_malloc(40);
    Payload* arg = gofin_malloc(sizeof(Payload));
    arg->magic = kMagic;
    /* Any number per object, at interior addresses too. */
    CHECK(gofin_add_cleanup(obj, cleanup, arg) != 0);
    CHECK(gofin_add_cleanup(obj + 16, cleanup, arg) != 0);
    gofin_cleanup c = gofin_add_cleanup(obj, cleanup_stopped, NULL);
    CHECK(c != 0);
    gofin_cleanup_stop(c);
    gofin_cleanup_stop(c); /* twice: harmless */
  }
}

static int all_cleaned(void) { return atomic_load(&g_cleaned) == 200; }

static void test_cleanups(void) {
  run_on_thread(make_cleanup_garbage);
  CHECK(cycle_until(all_cleaned));
  CHECK(atomic_load(&g_cleaned) == 200);
  CHECK(atomic_load(&g_arg_intact) == 200);
  CHECK(atomic_load(&g_stopped_ran) == 0);
  gofin_cleanup_stop(0);
}

static void test_cleanup_misuse(void) {
  char* obj = gofin_malloc(64);
  CHECK(gofin_add_cleanup(NULL, cleanup, NULL) == 0);
  CHECK_ERROR("runtime.AddCleanup: ptr is nil");
  CHECK(gofin_add_cleanup(obj, cleanup, obj) == 0);
  CHECK_ERROR("runtime.AddCleanup: ptr is equal to arg, cleanup will never run");
  CHECK(gofin_add_cleanup(obj, cleanup, obj + 8) == 0);
  CHECK_ERROR("runtime.AddCleanup: ptr is within arg, cleanup will never run");
  CHECK(gofin_add_cleanup(obj, NULL, NULL) == 0);
  CHECK_ERROR("runtime.AddCleanup: cleanup is nil");
  void* m = malloc(16);
  CHECK(gofin_add_cleanup(m, cleanup, NULL) == 0);
  CHECK_ERROR("runtime.AddCleanup: ptr not in allocated block");
  free(m);
  /* A global: a valid id that nothing runs; Stop is harmless. */
  gofin_cleanup g = gofin_add_cleanup(g_global_object, cleanup_stopped, NULL);
  CHECK(g != 0);
  gofin_cleanup_stop(g);
  gofin_keep_alive(obj);
}

/* ---- weak pointers --------------------------------------------------------------------- */

static gofin_weak g_weak[50];
static atomic_int g_weak_checks_ok;

static void make_weak_garbage(void) {
  int ok = 1;
  for (int i = 0; i < 50; ++i) {
    int* obj = gofin_malloc(sizeof(int) * 4);
    obj[0] = i;
    g_weak[i] = gofin_weak_make(obj);
    gofin_weak again = gofin_weak_make(obj);
    ok &= g_weak[i] != 0 && again == g_weak[i];
    ok &= gofin_weak_value(g_weak[i]) == obj;
    gofin_weak_release(again);
  }
  atomic_store(&g_weak_checks_ok, ok);
}

static int all_weak_nil(void) {
  for (int i = 0; i < 50; ++i) {
    if (gofin_weak_value(g_weak[i]) != NULL) return 0;
  }
  return 1;
}

static void test_weak(void) {
  CHECK(gofin_weak_make(NULL) == 0);
  CHECK(gofin_weak_value(0) == NULL);
  gofin_weak_release(0);

  run_on_thread(make_weak_garbage);
  CHECK(atomic_load(&g_weak_checks_ok) == 1);
  CHECK(cycle_until(all_weak_nil));
  for (int i = 0; i < 50; ++i) gofin_weak_release(g_weak[i]);

  /* A live object's weak pointer stays non-nil across collections. */
  int* live = gofin_malloc(sizeof(int));
  gofin_weak w = gofin_weak_make(live);
  gofin_gc();
  gofin_gc();
  CHECK(gofin_weak_value(w) == live);
  gofin_keep_alive(live);
  gofin_weak_release(w);

  /* A global's handle is immortal. */
  gofin_weak gw = gofin_weak_make(g_global_object);
  gofin_gc();
  CHECK(gofin_weak_value(gw) == g_global_object);
  gofin_weak_release(gw);
}

/* ---- roots ----------------------------------------------------------------------------- */

static void** g_table; /* malloc memory: not scanned unless added as roots */
enum { kTable = 64 };
static atomic_int g_root_finalized;
static void finalize_rooted(void* obj, void* data) {
  (void)obj;
  (void)data;
  atomic_fetch_add(&g_root_finalized, 1);
}
static void fill_table(void) {
  for (int i = 0; i < kTable; ++i) {
    g_table[i] = gofin_malloc(24);
    CHECK(gofin_set_finalizer(g_table[i], finalize_rooted, NULL) == 0);
  }
}
static int all_root_finalized(void) { return atomic_load(&g_root_finalized) == kTable; }

static void test_roots(void) {
  g_table = calloc(kTable, sizeof(void*));
  gofin_add_roots(g_table, g_table + kTable);
  run_on_thread(fill_table);
  for (int i = 0; i < 3; ++i) gofin_gc();
  gofin_wait_finalizers(5 * kSecond);
  CHECK(atomic_load(&g_root_finalized) == 0);
  gofin_remove_roots(g_table, g_table + kTable);
  CHECK(cycle_until(all_root_finalized));
  free(g_table);
}

/* ---- threads --------------------------------------------------------------------------- */

enum { kThreads = 4, kPerThread = 2000 };
static atomic_int g_thread_finalized;
static void finalize_thread_obj(void* obj, void* data) {
  (void)data;
  if (((uint64_t*)obj)[0] == 7) atomic_fetch_add(&g_thread_finalized, 1);
}

static void* mutator(void* arg) {
  (void)arg;
  gofin_register_thread();
  void* keep = NULL;
  for (int i = 0; i < kPerThread; ++i) {
    uint64_t* obj = gofin_malloc(32);
    obj[0] = 7;
    if (gofin_set_finalizer(obj, finalize_thread_obj, NULL) != 0) abort();
    if (i % 500 == 0) gofin_gc();
    /* A list that survives collections while its neighbours die. */
    void** cell = gofin_malloc(2 * sizeof(void*));
    cell[0] = keep;
    keep = cell;
  }
  int n = 0;
  for (void** c = keep; c != NULL; c = c[0]) ++n;
  gofin_unregister_thread();
  return (void*)(intptr_t)n;
}

static int threads_done(void) {
  /* Conservative scanning may keep a few; nearly all must be finalized. */
  return atomic_load(&g_thread_finalized) >= kThreads * kPerThread * 9 / 10;
}

static void test_threads(void) {
  pthread_t t[kThreads];
  for (int i = 0; i < kThreads; ++i) CHECK(pthread_create(&t[i], NULL, mutator, NULL) == 0);
  for (int i = 0; i < kThreads; ++i) {
    void* n = NULL;
    pthread_join(t[i], &n);
    CHECK((intptr_t)n == kPerThread);
  }
  CHECK(cycle_until(threads_done));
}

static void* fresh_thread_error(void* arg) {
  (void)arg;
  return (void*)(uintptr_t)(strcmp(gofin_last_error(), "") == 0);
}

/* ---- collection and memstats ----------------------------------------------------------- */

static void test_memstats(void) {
  gofin_memstats before;
  gofin_memstats after;
  gofin_read_memstats(&before);
  gofin_gc();
  gofin_read_memstats(&after);
  CHECK(after.num_gc >= before.num_gc + 1);
  CHECK(after.heap_alloc > 0 && after.alloc == after.heap_alloc);
  CHECK(after.sys >= after.heap_sys && after.heap_sys >= after.heap_alloc);
  CHECK(after.mallocs >= after.frees);
  CHECK(after.heap_objects == after.mallocs - after.frees);
  CHECK(after.total_alloc >= after.heap_alloc);
  CHECK(after.next_gc > 0);
  CHECK(after.pause_total_ns > 0);

  gofin_read_memstats(NULL); /* misuse: nothing written, a message */
  CHECK_ERROR("gofin_read_memstats: out is nil");

  const int prev = gofin_set_gc_percent(50);
  CHECK(gofin_set_gc_percent(prev) == 50);
  const int64_t limit = gofin_set_memory_limit(-1);
  CHECK(limit > 0);
  CHECK(gofin_set_memory_limit(limit) == limit);

  /* The error message is per thread: a new thread starts with none. */
  pthread_t t;
  void* ok = NULL;
  CHECK(pthread_create(&t, NULL, fresh_thread_error, NULL) == 0);
  pthread_join(t, &ok);
  CHECK(ok == (void*)1);
}

int main(void) {
  test_allocation();
  test_finalizers();
  test_finalizer_semantics_and_misuse();
  test_cleanups();
  test_cleanup_misuse();
  test_weak();
  test_roots();
  test_threads();
  test_memstats();
  if (g_failures != 0) {
    fprintf(stderr, "c_api: %d check(s) failed\n", g_failures);
    return 1;
  }
  printf("c_api: all checks passed\n");
  return 0;
}
