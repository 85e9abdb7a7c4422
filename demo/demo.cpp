// gofin's demo: objects with finalizers, cleanups and weak pointers going through GC cycles,
// with a gctrace (`make run` sets GOFIN_DEBUG=gctrace=1). Each scene is one of Go's semantics.
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <gofin/gofin.hpp>
#include <map>
#include <string>
#include <thread>

namespace {

using namespace std::chrono_literals;

void Drain() {
  gofin::GC();
  gofin::testing::BlockUntilEmptyFinalizerQueue(10s);
}

void PrintStats(const char* when) {
  const gofin::MemStats m = gofin::ReadMemStats();
  const gofin::FinalizerStats f = gofin::ReadFinalizerStats();
  std::printf(
      "  [%s] HeapObjects=%llu HeapInuse=%llu KiB NumGC=%llu (minor %llu) finalizers run=%llu\n",
      when, static_cast<unsigned long long>(m.HeapObjects),
      static_cast<unsigned long long>(m.HeapInuse >> 10), static_cast<unsigned long long>(m.NumGC),
      static_cast<unsigned long long>(m.NumMinorGC), static_cast<unsigned long long>(f.Executed));
}

// Scene 1: a native resource owned by a GC object, released by its finalizer (Go: os.File).
struct File {
  int fd = -1;
};
std::atomic<int> g_closed{0};

[[gnu::noinline]] void OpenFiles(int n) {
  for (int i = 0; i < n; ++i) {
    auto* f = gofin::New<File>();
    f->fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    gofin::SetFinalizer(f, [](File* file) {
      close(file->fd);
      g_closed.fetch_add(1);
    });
  }
}

// Scene 2: resurrection. The finalizer stores the object; it lives on, intact.
struct Phoenix {
  long canary = 0x600d;
};
gofin::Root<Phoenix> g_reborn;

[[gnu::noinline]] void MakePhoenix() {
  auto* p = gofin::New<Phoenix>();
  gofin::SetFinalizer(p, [](Phoenix* self) {
    std::printf("  phoenix finalizer: storing the object again (canary %#lx)\n", self->canary);
    g_reborn = self;
  });
}

// Scene 3: a chain A -> B, both with finalizers: A's runs in one cycle, B's in a later one,
// because B is reachable from A until A is gone.
struct Link {
  Link* next = nullptr;
  const char* name = "";
};

[[gnu::noinline]] void MakeChain() {
  auto* a = gofin::New<Link>();
  auto* b = gofin::New<Link>();
  a->name = "A";
  b->name = "B";
  a->next = b;
  auto say = [](Link* l) { std::printf("    finalizer for %s\n", l->name); };
  gofin::SetFinalizer(a, say);
  gofin::SetFinalizer(b, say);
}

// Scene 5: minor collections (gofin's addition, debug::SetGenerational). A long-lived table
// survives its first collection and is old from then on: the collections the pacer starts
// skip it, and rescan only the old objects on pages written since the last one (here: the
// table slots that churn refreshes with young objects). GC() is always a full collection.
struct Entry {
  Link* value = nullptr;
};
constexpr int kEntries = 200000;
gofin::Root<Entry> g_table;
std::atomic<int> g_old_finalized{0};

[[gnu::noinline]] void FillTable() {
  auto* t = gofin::NewArray<Entry>(kEntries);
  for (int i = 0; i < kEntries; ++i) t[i].value = gofin::New<Link>();
  // An old object that will become garbage: only a full collection finds it.
  gofin::SetFinalizer(t[0].value, [](Link*) { g_old_finalized.fetch_add(1); });
  g_table = t;
}

[[gnu::noinline]] void Churn(int rounds) {
  Entry* t = g_table.get();
  for (int r = 0; r < rounds; ++r) {
    for (int i = 0; i < 1000; ++i) gofin::New<Link>();    // young garbage
    t[(r * 7919) % kEntries].value = gofin::New<Link>();  // an old slot gets a young object
  }
}

// Scene 6: cleanups and weak pointers (Go 1.24: runtime.AddCleanup, package weak). A cache
// maps names to weak pointers, so it never keeps a document alive; each document's cleanup
// closes its descriptor once the document is freed, and takes the descriptor as its argument
// (a cleanup must not reach the object itself: that would keep it alive forever).
struct Document {
  std::string name;
  int fd = -1;
};
std::atomic<int> g_cleaned{0};
std::map<std::string, gofin::weak::Pointer<Document>>* g_cache = nullptr;  // malloc'd: not a root

[[gnu::noinline]] Document* OpenDocument(const std::string& name) {
  if (auto it = g_cache->find(name); it != g_cache->end()) {
    if (Document* d = it->second.Value()) return d;  // still alive: shared
  }
  auto* d = gofin::New<Document>();
  d->name = name;
  d->fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  gofin::AddCleanup(
      d,
      [](int fd) {
        close(fd);
        g_cleaned.fetch_add(1);
      },
      d->fd);
  (*g_cache)[name] = gofin::weak::Make(d);
  return d;
}

[[gnu::noinline]] int LiveCacheEntries() {
  int n = 0;
  for (const auto& [name, w] : *g_cache) n += w.Value() != nullptr ? 1 : 0;
  return n;
}

gofin::Root<Document> g_pinned;

[[gnu::noinline]] void UseDocuments() {
  for (int i = 0; i < 1000; ++i) OpenDocument("doc-" + std::to_string(i));
  g_pinned = OpenDocument("doc-7");  // one stays in use
  Document* again = OpenDocument("doc-7");
  std::printf("  opening doc-7 twice gives the same object: %s\n",
              again == g_pinned.get() ? "yes" : "no");
}

}  // namespace

int main() {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // interleave with the gctrace on stderr
  std::printf(
      "gofin demo: Go's finalizers, cleanups and weak pointers in C++ (gctrace lines go to "
      "stderr)\n\n");

  std::printf("1. 10000 files whose descriptors are closed by finalizers\n");
  std::printf(
      "   A finalizer runs after a GC finds its object unreachable; the object itself is\n"
      "   freed by the next GC, since the finalizer could have stored it again.\n");
  std::thread(OpenFiles, 10000).join();
  PrintStats("opened");
  Drain();
  std::printf("  closed by finalizers: %d\n", g_closed.load());
  PrintStats("after GC: finalized, still allocated");
  Drain();
  PrintStats("after the next GC: freed");

  std::printf("\n2. resurrection\n");
  std::printf(
      "   A finalizer may make its object reachable again; it is then an ordinary object\n"
      "   with no finalizer, collected normally once dropped again.\n");
  std::thread(MakePhoenix).join();
  Drain();
  std::printf("  reborn object canary: %#lx\n", g_reborn ? g_reborn->canary : 0L);
  g_reborn.reset();
  Drain();
  std::printf("  dropped again and collected (no finalizer the second time)\n");

  std::printf("\n3. a chain A -> B: one finalizer per cycle\n");
  std::printf(
      "   B's finalizer waits until A's has run and A is gone: A's finalizer could still\n"
      "   use B. So a chain of n finalized objects takes n cycles.\n");
  std::thread(MakeChain).join();
  for (int cycle = 1; cycle <= 2; ++cycle) {
    std::printf("  cycle %d:\n", cycle);
    Drain();
  }

  std::printf("\n4. garbage churn with automatic collections\n");
  std::printf(
      "   Nobody calls GC() here: the pacer starts a cycle whenever the heap has grown by\n"
      "   GOFIN_GOGC percent (default 100) over what the last one kept.\n");
  for (int i = 0; i < 2000000; ++i) gofin::New<Link>();
  PrintStats("after churn");

  std::printf("\n5. minor collections: a long-lived table, young garbage, old slots refreshed\n");
  std::printf(
      "   gofin's addition to Go: paced cycles may mark only young objects and old ones on\n"
      "   pages written since; an old object dropped waits for the next full cycle.\n");
  std::printf("  generational collection in effect: %s\n",
              gofin::debug::GenerationalActive() ? "yes" : "no (every collection is full)");
  std::thread(FillTable).join();
  gofin::GC();  // the table is old from here on
  std::thread(Churn, 4000).join();
  PrintStats("after churn with an old table");
  std::printf("  finalizer of the dropped old entry: %s after minor cycles\n",
              g_old_finalized.load() == 0 ? "not run" : "run");
  Drain();
  std::printf("  ... and %s after a full GC()\n", g_old_finalized.load() == 1 ? "run" : "not run");
  g_table.reset();
  Drain();
  PrintStats("table dropped, full GC");

  std::printf("\n6. a weak-pointer cache and cleanups closing descriptors\n");
  std::printf(
      "   Weak pointers never keep their object alive; a cleanup runs after its object is\n"
      "   freed, in the same cycle, with no resurrection (Go 1.24's AddCleanup).\n");
  std::map<std::string, gofin::weak::Pointer<Document>> cache;
  g_cache = &cache;
  std::thread(UseDocuments).join();
  std::printf("  cache entries alive while in use: %d\n", LiveCacheEntries());
  gofin::GC();  // frees the unused documents and queues their cleanups
  gofin::testing::BlockUntilEmptyCleanupQueue(10s);
  const gofin::CleanupStats c = gofin::ReadCleanupStats();
  std::printf(
      "  after one GC: %d alive in the cache, %d descriptors closed by cleanups "
      "(queued %llu, run %llu)\n",
      LiveCacheEntries(), g_cleaned.load(), static_cast<unsigned long long>(c.Queued),
      static_cast<unsigned long long>(c.Executed));
  g_pinned.reset();
  gofin::GC();
  gofin::testing::BlockUntilEmptyCleanupQueue(10s);
  std::printf("  doc-7 dropped too: %d alive, %d closed\n", LiveCacheEntries(), g_cleaned.load());
  g_cache = nullptr;
  return 0;
}
