#pragma once
// Helpers several test files share: a watchdog that turns a hang into an abort with a name,
// and a wipe of the dead stack below the caller (conservative scanning: a stale word there
// would keep an object alive).
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <gofin/gofin.hpp>
#include <initializer_list>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace gofin_test {

class Watchdog {
 public:
  explicit Watchdog(const char* what, std::chrono::seconds limit = std::chrono::seconds(300))
      : thread_([this, what, limit] {
          std::unique_lock lock(mu_);
          if (!cv_.wait_for(lock, limit, [this] { return done_; })) {
            std::fprintf(stderr, "WATCHDOG: '%s' did not finish within %lld s; aborting\n", what,
                         static_cast<long long>(limit.count()));
            std::abort();
          }
        }) {}
  ~Watchdog() {
    {
      std::lock_guard lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

// Zeroes 128 KiB of the dead stack below the caller, word by word from the stack pointer down
// (in assembly: an array local would leave the sanitizers' redzones around it unwritten).
// Writing below %rsp is safe here: a signal handler's frame is dead again once it returned.
// The caller-saved registers too: a stopped thread's registers are roots, and a callee may
// have left a pointer in one.
[[gnu::noinline]] inline void ClobberStack() {
  asm volatile(
      "mov %%rsp, %%rdi\n"
      "lea -131072(%%rsp), %%rcx\n"
      "1:\n"
      "sub $8, %%rdi\n"
      "movq $0, (%%rdi)\n"
      "cmp %%rcx, %%rdi\n"
      "ja 1b\n"
      "xor %%eax, %%eax\n"
      "xor %%ecx, %%ecx\n"
      "xor %%edx, %%edx\n"
      "xor %%esi, %%esi\n"
      "xor %%edi, %%edi\n"
      "xor %%r8d, %%r8d\n"
      "xor %%r9d, %%r9d\n"
      "xor %%r10d, %%r10d\n"
      "xor %%r11d, %%r11d\n"
      :
      :
      : "rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "memory", "cc");
}

// Whether the binary runs under ThreadSanitizer (some tests need a signal TSan cannot deliver).
#if defined(__SANITIZE_THREAD__)
inline constexpr bool kThreadSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
inline constexpr bool kThreadSanitizer = true;
#else
inline constexpr bool kThreadSanitizer = false;
#endif
#else
inline constexpr bool kThreadSanitizer = false;
#endif

// Runs f on a short-lived thread: what it allocates and drops leaves no stale word on the test's
// own stack (a dead thread's stack is not scanned).
template <class F>
void InThread(F&& f) {
  std::thread t(std::forward<F>(f));
  t.join();
}

// A test environment that turns pacing off for the whole binary, so that only the tests'
// own GC() calls collect: their counts of finalizers per cycle are exact.
class NoPacingEnvironment : public ::testing::Environment {
 public:
  void SetUp() override { old_ = gofin::debug::SetGCPercent(-1); }
  void TearDown() override { gofin::debug::SetGCPercent(old_); }

 private:
  int old_ = 100;
};

// A full collection that does not scan the test thread's stack: the test thread never holds a
// GC pointer it relies on, so reachability is exact.
inline void ExactGC() { gofin::testing::GC(gofin::testing::StackState::kNoHeapPointers); }

// One exact cycle, then every finalizer, cleanup and destructor it queued has run (each queue
// waited for at most 30 s).
inline void CycleAndDrain() {
  using std::chrono::seconds;
  ExactGC();
  ASSERT_TRUE(gofin::testing::BlockUntilEmptyFinalizerQueue(seconds(30)))
      << "the finalizer queue did not drain within 30 s";
  ASSERT_TRUE(gofin::testing::BlockUntilEmptyCleanupQueue(seconds(30)))
      << "the cleanup queue did not drain within 30 s";
  ASSERT_TRUE(gofin::testing::BlockUntilEmptyDestructorQueue(seconds(30)))
      << "the destructor queue did not drain within 30 s";
}

// Up to max_cycles cycles, until done() holds; returns done().
template <class Done>
bool CycleUntil(int max_cycles, Done done) {
  for (int i = 0; i < max_cycles && !done(); ++i) CycleAndDrain();
  return done();
}

// Addresses handed around without being roots travel XOR this mask (never a heap address).
inline volatile std::uintptr_t g_mask = 0x5a5a000000000000ULL;
inline std::uintptr_t Encode(const volatile void* p) {
  return reinterpret_cast<std::uintptr_t>(p) ^ g_mask;
}

inline int Load(const std::atomic<int>& a) { return a.load(); }

inline void Zero(std::initializer_list<std::atomic<int>*> counters) {
  for (std::atomic<int>* c : counters) c->store(0);
}

// Runs this test binary again on the tests `filter` selects (--gtest_filter), in the
// environment plus `env` ("NAME=value" entries, which replace the inherited ones of the same
// name). Returns the child's exit status, or -1 if it could not start, did not exit within
// `timeout` (it is killed) or died of a signal. The wait blocks on a pidfd (poll with the
// timeout), not in a loop of sleeps; without pidfds it blocks in waitpid.
inline int RunSelfFiltered(const std::string& filter, const std::vector<std::string>& env,
                           std::chrono::milliseconds timeout) {
  std::vector<std::string> storage;
  for (char** e = environ; *e != nullptr; ++e) {
    bool replaced = false;
    for (const std::string& x : env) {
      const std::size_t eq = x.find('=');
      if (std::strncmp(*e, x.c_str(), eq + 1) == 0) replaced = true;
    }
    if (!replaced) storage.emplace_back(*e);
  }
  storage.insert(storage.end(), env.begin(), env.end());
  std::vector<char*> envp;
  for (auto& x : storage) envp.push_back(x.data());
  envp.push_back(nullptr);
  std::string arg = "--gtest_filter=" + filter;
  char self[] = "/proc/self/exe";
  char* argv[] = {self, arg.data(), nullptr};
  pid_t pid = 0;
  if (posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, argv, envp.data()) != 0) return -1;
  const int fd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (fd >= 0) {
    pollfd p{fd, POLLIN, 0};
    int r = 0;
    do {
      r = poll(&p, 1, static_cast<int>(timeout.count()));
    } while (r < 0 && errno == EINTR);  // a collection's stop signal
    close(fd);
    if (r == 0) kill(pid, SIGKILL);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status)) return -1;
  return WEXITSTATUS(status);
}

}  // namespace gofin_test
