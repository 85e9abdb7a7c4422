#pragma once
// Helpers several test files share: a watchdog that turns a hang into an abort with a name,
// and a wipe of the dead stack below the caller (conservative scanning: a stale word there
// would keep an object alive).
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>

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

}  // namespace gofin_test
