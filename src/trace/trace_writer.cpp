#include "trace/trace_writer.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <ctime>

namespace gofin::internal::trace {

namespace {

constinit std::atomic<bool> g_locked{false};

// A flush at most this often from FlushIfDue: a few kilobytes per write, and a trace that is
// at most this stale when the program is killed.
constexpr std::uint64_t kFlushIntervalNs = 10'000'000;
constinit std::atomic<std::uint64_t> g_next_flush{0};

// The output buffer: mmap'd, not a static array, so that the collector never scans it as
// part of the data segment (it is text: no word of it looks like a pointer, but it is 256 KiB
// of roots for nothing).
constexpr std::size_t kOutBytes = std::size_t{256} << 10;
// Room for one event: every line below is far shorter (names are 15 characters at most).
constexpr std::size_t kLineRoom = 1024;

// Everything below is under the writer's lock.
struct File {
  int fd = -1;
  int pid = 0;
  std::uint32_t session = 0;
  bool first = true;    // no event written yet: the next one has no comma before it
  bool failed = false;  // a write failed (disk full...): the rest is dropped, not retried
  char* out = nullptr;
  std::size_t used = 0;
  char process[16] = {};             // the process's comm, for telling mutators from named threads
  std::uint64_t dropped_before = 0;  // DroppedRecords() when this file was opened
};
constinit File g_file{};

void WriteOut() {
  std::size_t done = 0;
  while (done < g_file.used && !g_file.failed) {
    const ssize_t n = write(g_file.fd, g_file.out + done, g_file.used - done);
    if (n > 0) {
      done += static_cast<std::size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;  // a stop signal (or the program's) arrived mid-write
    } else {
      g_file.failed = true;
    }
  }
  g_file.used = 0;
}

void Room() {
  if (kOutBytes - g_file.used < kLineRoom) WriteOut();
}

void Put(const char* s) {
  const std::size_t n = std::strlen(s);
  std::memcpy(g_file.out + g_file.used, s, n);
  g_file.used += n;
}

void PutChar(char c) { g_file.out[g_file.used++] = c; }

void PutU64(std::uint64_t v) {
  char digits[20];
  int n = 0;
  do {
    digits[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0);
  while (n > 0) PutChar(digits[--n]);
}

// Nanoseconds as the format's microseconds, with three decimals (exact: no floating point).
void PutMicros(std::uint64_t ns) {
  PutU64(ns / 1000);
  const auto frac = static_cast<unsigned>(ns % 1000);
  PutChar('.');
  PutChar(static_cast<char>('0' + frac / 100));
  PutChar(static_cast<char>('0' + frac / 10 % 10));
  PutChar(static_cast<char>('0' + frac % 10));
}

// A JSON string; thread and process names are the program's to choose.
void PutString(const char* s) {
  static constexpr char kHex[] = "0123456789abcdef";
  PutChar('"');
  for (; *s != '\0'; ++s) {
    const auto c = static_cast<unsigned char>(*s);
    if (c == '"' || c == '\\') {
      PutChar('\\');
      PutChar(static_cast<char>(c));
    } else if (c < 0x20) {
      Put("\\u00");
      PutChar(kHex[c >> 4]);
      PutChar(kHex[c & 15]);
    } else {
      PutChar(static_cast<char>(c));
    }
  }
  PutChar('"');
}

void BeginEvent() {
  Room();
  if (!g_file.first) Put(",\n");
  g_file.first = false;
}

void PutArg(const char* key, std::uint64_t v) {
  Put(R"(,")");
  Put(key);
  Put(R"(":)");
  PutU64(v);
}

void PutArg(const char* key, const char* v) {
  Put(R"(,")");
  Put(key);
  Put(R"(":)");
  PutString(v);
}

void PutBoolArg(const char* key, std::uint64_t v) {
  Put(R"(,")");
  Put(key);
  Put(v != 0 ? R"(":true)" : R"(":false)");
}

// The label a thread gets in the viewer: "main", gofin's own names, "mutator" for threads
// that kept the name they inherited from the process, or the name the program gave them.
const char* ThreadLabel(const ThreadInfo& t) {
  if (t.tid == g_file.pid) return "main";
  if (t.name == nullptr || t.name[0] == '\0' || std::strcmp(t.name, g_file.process) == 0) {
    return "mutator";
  }
  return t.name;
}

void PutMetadata(const char* what, int tid, const char* name) {
  BeginEvent();
  Put(R"({"name":")");
  Put(what);
  Put(R"(","ph":"M","pid":)");
  PutU64(static_cast<std::uint64_t>(g_file.pid));
  Put(R"(,"tid":)");
  PutU64(static_cast<std::uint64_t>(tid));
  Put(R"(,"args":{"name":)");
  PutString(name);
  Put("}}");
}

const char* EventName(Event e) {
  switch (e) {
    case Event::kStopTheWorld:
      return "stop the world";
    case Event::kMark:
      return "mark";
    case Event::kMarkTermination:
      return "mark termination";
    case Event::kSweep:
      return "sweep";
    case Event::kFinalizers:
      return "finalizers";
    case Event::kCleanups:
      return "cleanups";
    case Event::kDestructors:
      return "destructors";
    case Event::kHeapCounter:
      return "heap";
  }
  return "?";
}

const char* StopReasonName(std::uint8_t why) {
  switch (static_cast<StopReason>(why)) {
    case StopReason::kCollection:
      return "collection";
    case StopReason::kRead:
      return "read";
    case StopReason::kCollectorWork:
      return "collector work";
  }
  return "?";
}

const char* SweepByName(std::uint8_t by) {
  switch (static_cast<SweepBy>(by)) {
    case SweepBy::kLazy:
      return "lazy";
    case SweepBy::kBackground:
      return "background";
    case SweepBy::kFinish:
      return "finish";
  }
  return "?";
}

// The JSON of one record (a line of the array), preceded by its thread's name the first time.
void PutRecord(const ThreadInfo& t, const Record& r) {
  if (t.name_new) PutMetadata("thread_name", t.tid, ThreadLabel(t));
  BeginEvent();
  Put(R"({"name":")");
  Put(EventName(r.event));
  const bool counter = r.event == Event::kHeapCounter;
  Put(counter ? R"(","cat":"gc","ph":"C","ts":)" : R"(","cat":"gc","ph":"X","ts":)");
  PutMicros(r.start & ~kTimeTag);
  if (!counter) {
    Put(R"(,"dur":)");
    PutMicros(r.end > r.start ? r.end - r.start : 0);
  }
  Put(R"(,"pid":)");
  PutU64(static_cast<std::uint64_t>(g_file.pid));
  Put(R"(,"tid":)");
  PutU64(static_cast<std::uint64_t>(t.tid));
  if (counter) {
    // One track per argument in the viewers: "heap live" and "heap goal".
    Put(R"(,"args":{"live":)");
    PutU64(r.arg[0]);
    PutArg("goal", r.arg[1]);
    Put("}}");
    return;
  }
  Put(R"(,"args":{"cycle":)");
  PutU64(r.cycle);
  switch (r.event) {
    case Event::kStopTheWorld:
      PutArg("reason", StopReasonName(r.sub));
      if (static_cast<StopReason>(r.sub) == StopReason::kCollection) {
        PutArg("kind", r.arg[3] != 0 ? "minor" : "full");
        PutBoolArg("forced", r.arg[4]);
      }
      PutArg("stopping_ns", r.arg[0]);
      PutArg("restarting_ns", r.arg[1]);
      PutArg("threads", r.arg[2]);
      break;
    case Event::kMark:
      PutArg("worker", r.arg[0]);
      PutArg("bytes_marked", r.arg[1]);
      PutBoolArg("rescan", r.arg[2]);
      break;
    case Event::kMarkTermination:
      PutArg("kind", r.arg[2] != 0 ? "minor" : "full");
      PutArg("heap_live", r.arg[0]);
      PutArg("heap_goal", r.arg[1]);
      break;
    case Event::kSweep:
      PutArg("by", SweepByName(r.sub));
      PutArg("spans", r.arg[0]);
      PutArg("spans_freed", r.arg[1]);
      PutArg("objects_freed", r.arg[2]);
      PutArg("bytes_freed", r.arg[3]);
      PutArg("sweeping_ns", r.arg[4]);
      break;
    case Event::kFinalizers:
      PutArg("finalizers", r.arg[0]);
      PutArg("blocks", r.arg[1]);
      break;
    case Event::kCleanups:
      PutArg("cleanups", r.arg[0]);
      PutArg("blocks", r.arg[1]);
      break;
    case Event::kDestructors:
      PutArg("destructors", r.arg[0]);
      PutArg("blocks", r.arg[1]);
      break;
    case Event::kHeapCounter:
      break;
  }
  Put("}}");
}

void ReadProcessName() {
  std::memset(g_file.process, 0, sizeof(g_file.process));
  // The main thread's name, which other threads inherit unless they set their own.
  const int fd = open("/proc/self/comm", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  const ssize_t n = read(fd, g_file.process, sizeof(g_file.process) - 1);
  close(fd);
  if (n <= 0) {
    g_file.process[0] = '\0';
    return;
  }
  g_file.process[n] = '\0';
  if (char* nl = std::strchr(g_file.process, '\n')) *nl = '\0';
}

void Drain(bool final) { DrainBuffers(g_file.session, final, &PutRecord); }

}  // namespace

bool TryLockWriter() { return !g_locked.exchange(true, std::memory_order_acquire); }

void LockWriter() {
  while (!TryLockWriter()) {
    timespec ts{0, 20'000};
    nanosleep(&ts, nullptr);
  }
}

void UnlockWriter() { g_locked.store(false, std::memory_order_release); }

bool FileOpen() { return g_file.fd >= 0 && g_file.pid == getpid(); }

std::uint32_t FileSession() { return g_file.session; }

bool OpenFile(const char* path) {
  if (g_file.out == nullptr) {
    void* p = mmap(nullptr, kOutBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return false;  // errno: ENOMEM
    g_file.out = static_cast<char*>(p);
  }
  const int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return false;
  g_file.fd = fd;
  g_file.pid = getpid();
  g_file.session = g_session.load(std::memory_order_relaxed) + 1;
  g_file.first = true;
  g_file.failed = false;
  g_file.used = 0;
  g_file.dropped_before = DroppedRecords();
  ReadProcessName();
  // The array's start and the process's name, on disk at once: from here on the file is a
  // loadable trace, however the program ends.
  Put("[\n");
  PutMetadata("process_name", g_file.pid, g_file.process[0] != '\0' ? g_file.process : "gofin");
  WriteOut();
  return true;
}

void WriteBuffered() {
  Drain(false);
  WriteOut();
}

void CloseFile() {
  Drain(true);
  if (const std::uint64_t dropped = DroppedRecords() - g_file.dropped_before; dropped != 0) {
    // Only when the kernel refused buffer memory: said in the file rather than silently.
    BeginEvent();
    Put(R"({"name":"gofin trace: records dropped","ph":"i","s":"g","ts":)");
    PutMicros(Now() & ~kTimeTag);
    Put(R"(,"pid":)");
    PutU64(static_cast<std::uint64_t>(g_file.pid));
    Put(R"(,"tid":0,"args":{"dropped":)");
    PutU64(dropped);
    Put("}}");
  }
  Room();
  Put("\n]\n");
  WriteOut();
  close(g_file.fd);
  g_file.fd = -1;
}

void AbandonFileAfterFork() {
  g_locked.store(false, std::memory_order_relaxed);  // its holder did not survive the fork
  if (g_file.fd >= 0) close(g_file.fd);
  g_file.fd = -1;
  g_file.used = 0;
}

void FlushIfDueSlow() {
  const std::uint64_t now = Now();
  if (now < g_next_flush.load(std::memory_order_relaxed)) return;
  if (!TryLockWriter()) return;
  if (FileOpen()) WriteBuffered();
  g_next_flush.store(now + kFlushIntervalNs, std::memory_order_relaxed);
  UnlockWriter();
}

}  // namespace gofin::internal::trace
