// fd_finalizer: a file descriptor owned by a garbage-collected object and closed by its
// finalizer when the program forgets to close it.
//
// Go idiom: os.File. os.NewFile does runtime.SetFinalizer(f, (*file).close), so a *os.File
// that becomes unreachable without Close() still gives its descriptor back; Close() itself
// calls runtime.SetFinalizer(f, nil), because there is nothing left for the finalizer to do.
// The finalizer is a safety net, not the way to close files: it runs only after a collection,
// on another thread, at a time the program does not choose.
#include <dirent.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <gofin/gofin.hpp>

namespace {

using namespace std::chrono_literals;

// Finalizers run on gofin's finalizer thread: what they share with the program is atomic.
std::atomic<int> g_closed_by_finalizer{0};

// The GC object that owns the descriptor (Go: os.file). Trivially destructible: the finalizer,
// not a destructor, releases the descriptor, exactly as in Go.
struct File {
  int fd = -1;
};

void CloseFromFinalizer(File* f) {
  close(f->fd);
  f->fd = -1;
  g_closed_by_finalizer.fetch_add(1, std::memory_order_relaxed);
}

// Go: os.Open. The finalizer is set right after the descriptor exists.
File* Open(const char* path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return nullptr;
  auto* f = gofin::New<File>();  // must be the start of a gofin block for SetFinalizer
  f->fd = fd;
  gofin::SetFinalizer(f, &CloseFromFinalizer);
  return f;
}

// Go: (*os.File).Close. Closing by hand removes the finalizer.
void Close(File* f) {
  gofin::SetFinalizer(f, nullptr);
  close(f->fd);
  f->fd = -1;
}

// Go: (*os.File).Read. Once the code has copied f->fd, nothing else may use f: the compiler
// is free to drop f from every register and stack slot, a collection may then find the File
// unreachable, and its finalizer could close the descriptor while read() still uses it.
// KeepAlive(f) after the last use of the descriptor forbids that (Go: runtime.KeepAlive).
long Read(File* f, char* buf, std::size_t n) {
  const long got = read(f->fd, buf, n);
  gofin::KeepAlive(f);
  return got;
}

// Open descriptors of this process.
int CountOpenFds() {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int n = 0;
  while (readdir(dir) != nullptr) ++n;
  closedir(dir);
  return n - 3;  // ".", ".." and the directory's own descriptor
}

// Opens n files and forgets them. In a function of its own (noinline) so that its pointers
// die with its frame: gofin scans stacks conservatively, and a stale pointer left in a live
// frame or a register would keep its File alive.
[[gnu::noinline]] int OpenAndForget(int n) {
  int opened = 0;
  for (int i = 0; i < n; ++i) {
    if (Open("/dev/null") != nullptr) ++opened;
  }
  return opened;
}

}  // namespace

int main() {
  std::printf("fd_finalizer: descriptors released by finalizers (Go: os.File)\n");

  // Stay well below the descriptor limit: every forgotten file holds one until a collection.
  rlimit lim{};
  getrlimit(RLIMIT_NOFILE, &lim);
  const int n = static_cast<int>(std::min<rlim_t>(1000, lim.rlim_cur / 2));

  // The explicit path first: Close() and no finalizer left to run.
  File* f = Open("/dev/null");
  if (f == nullptr) {
    std::perror("open /dev/null");
    return 1;
  }
  char byte = 0;
  std::printf("1. read %ld bytes from /dev/null, then Close() removes the finalizer\n",
              Read(f, &byte, 1));
  Close(f);

  // One collection before counting, so that whatever gofin opens for itself is open already.
  gofin::GC();
  const int before = CountOpenFds();

  const int opened = OpenAndForget(n);
  const int during = CountOpenFds();
  std::printf("2. opened %d files and dropped every pointer: %d descriptors open (%d before)\n",
              opened, during, before);

  // GC() finds the Files unreachable and queues their finalizers; they run on the finalizer
  // thread, so wait for the queue to drain (bounded). A second round catches a File a stale
  // word kept alive during the first.
  for (int round = 1; round <= 3 && g_closed_by_finalizer.load() < opened; ++round) {
    gofin::GC();
    if (!gofin::testing::BlockUntilEmptyFinalizerQueue(30s)) {
      std::printf("FAIL: the finalizer queue did not drain within 30 s\n");
      return 1;
    }
    std::printf("3. after GC #%d: %d closed by finalizers\n", round, g_closed_by_finalizer.load());
  }

  const int after = CountOpenFds();
  const int closed = during - after;
  std::printf("4. %d descriptors open now: %d of %d closed (finalizer stats: %llu run)\n", after,
              closed, opened,
              static_cast<unsigned long long>(gofin::ReadFinalizerStats().Executed));

  // Conservative scanning may keep a few Files alive: require 90%, not all.
  if (opened != n || closed * 10 < opened * 9 || g_closed_by_finalizer.load() * 10 < opened * 9) {
    std::printf("FAIL: expected at least 90%% of %d descriptors closed\n", n);
    return 1;
  }
  std::printf("OK\n");
  return 0;
}
