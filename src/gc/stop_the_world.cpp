#include "gc/stop_the_world.hpp"

#include <cpuid.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <iterator>
#include <mutex>
#include <string_view>

#include "gc/thread_registry.hpp"
#include "heap/heap.hpp"
#include "heap/lock.hpp"
#include "heap/safepoint.hpp"

#if !defined(__x86_64__)
#error "gofin's stop-the-world currently supports x86-64 Linux only"
#endif

// Go: the register spill of a goroutine switch; cppgc: PushAllRegistersAndIterateStack. Only
// the callee-saved registers can hold the caller's values across a call; the XMM registers
// are spilled too, so that no compiler's idea of a call boundary (an inlined caller, a
// hand-written one) can hide a pointer there.
asm(R"(
  .text
  .globl gofin_spill_registers_and_call
  .type gofin_spill_registers_and_call, @function
gofin_spill_registers_and_call:
  .cfi_startproc
  push %rbp
  .cfi_def_cfa_offset 16
  .cfi_offset %rbp, -16
  mov %rsp, %rbp
  .cfi_def_cfa_register %rbp
  push %rbx
  push %r12
  push %r13
  push %r14
  push %r15
  sub $264, %rsp
  movdqu %xmm0, 0(%rsp)
  movdqu %xmm1, 16(%rsp)
  movdqu %xmm2, 32(%rsp)
  movdqu %xmm3, 48(%rsp)
  movdqu %xmm4, 64(%rsp)
  movdqu %xmm5, 80(%rsp)
  movdqu %xmm6, 96(%rsp)
  movdqu %xmm7, 112(%rsp)
  movdqu %xmm8, 128(%rsp)
  movdqu %xmm9, 144(%rsp)
  movdqu %xmm10, 160(%rsp)
  movdqu %xmm11, 176(%rsp)
  movdqu %xmm12, 192(%rsp)
  movdqu %xmm13, 208(%rsp)
  movdqu %xmm14, 224(%rsp)
  movdqu %xmm15, 240(%rsp)
  mov %rsi, %rax
  mov %rsp, %rsi
  call *%rax
  add $264, %rsp
  pop %r15
  pop %r14
  pop %r13
  pop %r12
  pop %rbx
  pop %rbp
  .cfi_def_cfa %rsp, 8
  ret
  .cfi_endproc
  .size gofin_spill_registers_and_call, .-gofin_spill_registers_and_call

  .globl gofin_clear_stack
  .type gofin_clear_stack, @function
gofin_clear_stack:
  .cfi_startproc
  mov %rsp, %rax
  sub %rdi, %rsp
  .cfi_adjust_cfa_offset 0
  mov %rsp, %rcx
1:
  cmp %rax, %rcx
  jae 2f
  movq $0, (%rcx)
  add $8, %rcx
  jmp 1b
2:
  mov %rax, %rsp
  xor %eax, %eax
  xor %ecx, %ecx
  xor %edx, %edx
  xor %esi, %esi
  xor %edi, %edi
  xor %r8d, %r8d
  xor %r9d, %r9d
  xor %r10d, %r10d
  xor %r11d, %r11d
  pxor %xmm0, %xmm0
  pxor %xmm1, %xmm1
  pxor %xmm2, %xmm2
  pxor %xmm3, %xmm3
  pxor %xmm4, %xmm4
  pxor %xmm5, %xmm5
  pxor %xmm6, %xmm6
  pxor %xmm7, %xmm7
  pxor %xmm8, %xmm8
  pxor %xmm9, %xmm9
  pxor %xmm10, %xmm10
  pxor %xmm11, %xmm11
  pxor %xmm12, %xmm12
  pxor %xmm13, %xmm13
  pxor %xmm14, %xmm14
  pxor %xmm15, %xmm15
  movzbl gofin_vector_clear_level(%rip), %eax
  test %eax, %eax
  je 3f
  vzeroall
  cmp $2, %eax
  jb 3f
  vpxord %zmm16, %zmm16, %zmm16
  vpxord %zmm17, %zmm17, %zmm17
  vpxord %zmm18, %zmm18, %zmm18
  vpxord %zmm19, %zmm19, %zmm19
  vpxord %zmm20, %zmm20, %zmm20
  vpxord %zmm21, %zmm21, %zmm21
  vpxord %zmm22, %zmm22, %zmm22
  vpxord %zmm23, %zmm23, %zmm23
  vpxord %zmm24, %zmm24, %zmm24
  vpxord %zmm25, %zmm25, %zmm25
  vpxord %zmm26, %zmm26, %zmm26
  vpxord %zmm27, %zmm27, %zmm27
  vpxord %zmm28, %zmm28, %zmm28
  vpxord %zmm29, %zmm29, %zmm29
  vpxord %zmm30, %zmm30, %zmm30
  vpxord %zmm31, %zmm31, %zmm31
3:
  xor %eax, %eax
  ret
  .cfi_endproc
  .size gofin_clear_stack, .-gofin_clear_stack
  .section .note.GNU-stack,"",@progbits
  .text
)");

// 0: SSE only; 1: AVX (vzeroall); 2: AVX-512 (and ZMM16-31). Set once by InitStopTheWorld.
extern "C" {
constinit std::uint8_t gofin_vector_clear_level = 0;  // NOLINT: read by assembly
}

namespace gofin::internal {

constinit thread_local ThreadLocalState t_local __attribute__((tls_model("initial-exec")));

namespace {

// The x86-64 ABI lets a leaf function use 128 bytes below its stack pointer.
constexpr std::uintptr_t kRedZone = 128;

// Go: the stop handshake. `acks` counts parked threads; `epoch` changes on every restart and
// is what parked threads wait on. Futexes, because the handler may only make system calls.
constinit std::atomic<std::uint32_t> g_acks{0};
constinit std::atomic<std::uint32_t> g_epoch{0};
constinit int g_stop_signal = 0;
// A legacy (non-queued) signal used for a thread whose stop signal cannot be queued (the
// kernel refuses a real-time signal with EAGAIN at RLIMIT_SIGPENDING; a legacy one is always
// delivered). SIGURG, as Go's preemption: its default action is to ignore it. Installed only
// when first needed, forwarding to the program's handler.
constexpr int kFallbackSignal = SIGURG;
constinit std::atomic<bool> g_fallback_installed{false};

// A handler the program had (or installed later) on one of gofin's signals: signals that
// gofin did not send go on to it. Written only with RegistryLock held and the world running.
struct Forward {
  std::atomic<bool> set{false};
  struct sigaction action {};
};
constinit Forward g_forward_stop{};
constinit Forward g_forward_fallback{};

// Where the xsave area of a signal frame keeps each vector state component (CPUID leaf 0xD:
// the standard format, which the kernel uses for signal frames); 0: not supported.
struct XComponent {
  std::uint32_t offset = 0;
  std::uint32_t size = 0;
};
constexpr int kXComponents[] = {2, 5, 6, 7};  // YMM_Hi128, opmask, ZMM_Hi256, Hi16_ZMM
constinit XComponent g_xcomponents[4] = {};
constexpr std::uint32_t kFpXStateMagic1 = 0x46505853;  // FP_XSTATE_MAGIC1
constexpr std::size_t kSwReservedOffset = 464;         // struct _fpx_sw_bytes in the FP area
constexpr std::size_t kXStateHeaderOffset = 512;       // xstate_bv

long Futex(std::atomic<std::uint32_t>* addr, int op, std::uint32_t val,
           const timespec* timeout = nullptr) {
  return syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(addr), op, val, timeout, nullptr, 0);
}

void InitVectorLayout() {
  unsigned eax = 0;
  unsigned ebx = 0;
  unsigned ecx = 0;
  unsigned edx = 0;
  // gofin_clear_stack's vector registers: with AVX, vzeroall clears YMM0-15; with AVX-512, the
  // EVEX-only ZMM16-31 too, which glibc's memcpy and memset use (evex variants) and which
  // otherwise keep copied pointers across the clear and into later signal frames (found: a
  // freed node's address in the finalizer thread's live frames, keeping its slot's next
  // object through a collection).
  if (__get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_OSXSAVE) != 0 &&
      (ecx & bit_AVX) != 0) {
    unsigned lo = 0;
    unsigned hi = 0;
    asm volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & 0x6U) == 0x6U) {  // XMM and YMM state enabled by the OS
      std::uint8_t level = 1;
      if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) != 0 && (ebx & bit_AVX512F) != 0 &&
          (lo & 0xe0U) == 0xe0U) {  // opmask, ZMM_Hi256, Hi16_ZMM enabled
        level = 2;
      }
      gofin_vector_clear_level = level;
    }
  }
  if (__get_cpuid_max(0, nullptr) < 0xd) return;
  for (std::size_t i = 0; i < std::size(kXComponents); ++i) {
    __cpuid_count(0xd, kXComponents[i], eax, ebx, ecx, edx);
    g_xcomponents[i] = XComponent{ebx, eax};
  }
}

// bdwgc scans the signal context's FP area: a pointer may live only in a vector register (a
// vectorised copy of a pair of pointers, a compiler spilling to XMM). The XMM registers come
// from the legacy area, the wider state from the xsave components the frame holds; a
// component the frame marks unused (its registers are zero) may have stale bytes in its slot.
void SaveVectorRegisters(ThreadRecord* r, const ucontext_t* uc) {
  auto* out = reinterpret_cast<unsigned char*>(r->vector_regs);
  std::memset(out, 0, sizeof(r->vector_regs));
  const auto* fp = reinterpret_cast<const unsigned char*>(uc->uc_mcontext.fpregs);
  if (fp == nullptr) return;
  std::uint32_t magic = 0;
  std::memcpy(&magic, fp + kSwReservedOffset, sizeof(magic));
  std::uint64_t xstate_bv = 3;  // no xsave frame: x87 and SSE state only
  std::uint32_t xstate_size = 512;
  if (magic == kFpXStateMagic1) {
    std::memcpy(&xstate_size, fp + kSwReservedOffset + 16, sizeof(xstate_size));
    std::memcpy(&xstate_bv, fp + kXStateHeaderOffset, sizeof(xstate_bv));
  }
  constexpr std::size_t kXmmBytes = 256;
  if ((xstate_bv & 2) != 0) std::memcpy(out, uc->uc_mcontext.fpregs->_xmm, kXmmBytes);
  std::size_t at = kXmmBytes;
  constexpr std::size_t kSizes[] = {256, 64, 512, 1024};
  for (std::size_t i = 0; i < std::size(kXComponents); ++i) {
    const XComponent c = g_xcomponents[i];
    const std::size_t n = std::min<std::size_t>(c.size, kSizes[i]);
    if (c.offset != 0 && (xstate_bv & (std::uint64_t{1} << kXComponents[i])) != 0 &&
        c.offset + n <= xstate_size) {
      std::memcpy(out + at, fp + c.offset, n);
    }
    at += kSizes[i];
  }
}

void Park(ThreadRecord* r, std::uintptr_t sp, std::uint32_t epoch) {
  NoteStack(r, sp);
  // release: the saved registers and stack contents are visible to the collector that
  // acquires the count.
  r->stopped_sp.store(sp, std::memory_order_release);
  // relaxed: only this thread reads it to refuse a second ack; the collector's diagnostics
  // read it after acquiring the count or as a hint.
  r->parked_epoch.store(epoch + 1, std::memory_order_relaxed);
  g_acks.fetch_add(1, std::memory_order_release);
  Futex(&g_acks, FUTEX_WAKE_PRIVATE, 1);
  while (g_epoch.load(std::memory_order_acquire) == epoch) {
    Futex(&g_epoch, FUTEX_WAIT_PRIVATE, epoch);
  }
  r->stopped_sp.store(0, std::memory_order_relaxed);
  // Stale once running again: never a root for a later cycle this thread runs itself.
  for (auto& reg : r->regs) reg = 0;
  for (auto& reg : r->vector_regs) reg = 0;
}

// A signal gofin sent is a tgkill from this process; one whose information the kernel lost
// (it could not queue it) reads as SI_USER from pid 0 and may be gofin's too.
bool SentByGofin(const siginfo_t* info) {
  if (info == nullptr) return true;
  if (info->si_code == SI_TKILL && info->si_pid == getpid()) return true;
  return info->si_code == SI_USER && info->si_pid == 0;
}

void ForwardSignal(const Forward& f, int sig, siginfo_t* info, void* context) {
  if (!f.set.load(std::memory_order_acquire)) return;
  const struct sigaction& a = f.action;
  if ((a.sa_flags & SA_SIGINFO) != 0) {
    if (a.sa_sigaction != nullptr) a.sa_sigaction(sig, info, context);
  } else if (a.sa_handler != SIG_DFL && a.sa_handler != SIG_IGN && a.sa_handler != nullptr) {
    a.sa_handler(sig);
  }
}

void StopSignalHandler(int sig, siginfo_t* info, void* context) {
  const int saved_errno = errno;
  auto* r = static_cast<ThreadRecord*>(t_local.record);
  if (r != nullptr && g_heap.world_stopping.load(std::memory_order_acquire)) {
    // The epoch is read before acknowledging: the collector only moves it after every ack.
    const std::uint32_t epoch = g_epoch.load(std::memory_order_acquire);
    if (r->parked_epoch.load(std::memory_order_relaxed) == epoch + 1) {
      // Already parked for this stop (a second signal for it): nothing to do.
    } else if (t_local.nosafepoint > 0) {
      t_local.preempt_pending = 1;  // parks at the end of the critical region
    } else {
      const auto* uc = static_cast<const ucontext_t*>(context);
      static_assert(sizeof(r->regs) == sizeof(uc->uc_mcontext.gregs));
      std::memcpy(r->regs, uc->uc_mcontext.gregs, sizeof(r->regs));
      SaveVectorRegisters(r, uc);
      const auto sp = static_cast<std::uintptr_t>(uc->uc_mcontext.gregs[REG_RSP]);
      Park(r, sp - kRedZone, epoch);
    }
  }
  // A signal the program sent goes on to its own handler (after the stop, if a stop was
  // pending too: two legacy signals merge into one delivery).
  const Forward& forward = sig == g_stop_signal ? g_forward_stop : g_forward_fallback;
  if (forward.set.load(std::memory_order_acquire) && !SentByGofin(info)) {
    ForwardSignal(forward, sig, info, context);
  }
  errno = saved_errno;
}

void ParkSpilled(void* arg, std::uintptr_t sp) {
  auto* r = static_cast<ThreadRecord*>(arg);
  const std::uint32_t epoch = g_epoch.load(std::memory_order_acquire);
  if (r->parked_epoch.load(std::memory_order_relaxed) == epoch + 1) return;
  std::memset(r->regs, 0, sizeof(r->regs));  // the registers are on the stack above sp
  std::memset(r->vector_regs, 0, sizeof(r->vector_regs));
  Park(r, sp, epoch);
}

// The real functions behind gofin's signal-mask wrappers (below), found at load time.
template <class Fn>
Fn Next(const char* name) {
  return reinterpret_cast<Fn>(dlsym(RTLD_NEXT, name));
}
using SigmaskFn = int (*)(int, const sigset_t*, sigset_t*);
using SigwaitFn = int (*)(const sigset_t*, int*);
using SigwaitinfoFn = int (*)(const sigset_t*, siginfo_t*);
using SigtimedwaitFn = int (*)(const sigset_t*, siginfo_t*, const timespec*);
struct RealSignalFunctions {
  SigmaskFn pthread_sigmask = nullptr;
  SigmaskFn sigprocmask = nullptr;
  SigwaitFn sigwait = nullptr;
  SigwaitinfoFn sigwaitinfo = nullptr;
  SigtimedwaitFn sigtimedwait = nullptr;
};
constinit RealSignalFunctions g_real{};

[[gnu::constructor(101)]] void FindRealSignalFunctions() {
  if (g_real.pthread_sigmask != nullptr) return;
  g_real.sigprocmask = Next<SigmaskFn>("sigprocmask");
  g_real.sigwait = Next<SigwaitFn>("sigwait");
  g_real.sigwaitinfo = Next<SigwaitinfoFn>("sigwaitinfo");
  g_real.sigtimedwait = Next<SigtimedwaitFn>("sigtimedwait");
  g_real.pthread_sigmask = Next<SigmaskFn>("pthread_sigmask");
}

// The set without gofin's signals, when it names them.
const sigset_t* WithoutGofinSignals(const sigset_t* set, sigset_t& copy) {
  const int stop = g_stop_signal;
  if (set == nullptr || stop == 0) return set;
  const bool fallback = g_fallback_installed.load(std::memory_order_relaxed);
  if (sigismember(set, stop) != 1 && (!fallback || sigismember(set, kFallbackSignal) != 1)) {
    return set;
  }
  copy = *set;
  sigdelset(&copy, stop);
  if (fallback) sigdelset(&copy, kFallbackSignal);
  return &copy;
}

int MaskWithoutGofinSignals(SigmaskFn real, int how, const sigset_t* set, sigset_t* old) {
  sigset_t copy;
  if (how == SIG_BLOCK || how == SIG_SETMASK) set = WithoutGofinSignals(set, copy);
  return real(how, set, old);
}

// Parses GOFIN_STOP_SIGNAL: a number, SIGRTMIN+n, SIGRTMAX-n, or one of a few names of
// signals without a meaning a program relies on.
int ParseSignal(const char* v) {
  std::string_view s(v);
  if (s.starts_with("SIG")) s.remove_prefix(3);
  const auto number = [](std::string_view t, int& out) {
    if (t.empty() || t.size() > 3) return false;
    out = 0;
    for (const char c : t) {
      if (c < '0' || c > '9') return false;
      out = out * 10 + (c - '0');
    }
    return true;
  };
  int n = 0;
  if (number(s, n)) {
    if (n >= SIGRTMIN && n <= SIGRTMAX) return n;
    for (const int ok : {SIGUSR1, SIGUSR2, SIGURG, SIGPWR, SIGXCPU, SIGWINCH}) {
      if (n == ok) return n;
    }
    return 0;
  }
  struct Named {
    std::string_view name;
    int sig;
  };
  for (const Named& named :
       {Named{"USR1", SIGUSR1}, Named{"USR2", SIGUSR2}, Named{"URG", SIGURG}, Named{"PWR", SIGPWR},
        Named{"XCPU", SIGXCPU}, Named{"WINCH", SIGWINCH}}) {
    if (s == named.name) return named.sig;
  }
  for (const bool max : {false, true}) {
    const std::string_view base = max ? "RTMAX" : "RTMIN";
    if (!s.starts_with(base)) continue;
    std::string_view rest = s.substr(base.size());
    int off = 0;
    if (!rest.empty()) {
      if (rest[0] != (max ? '-' : '+') || !number(rest.substr(1), off)) return 0;
    }
    const int sig = max ? SIGRTMAX - off : SIGRTMIN + off;
    return sig >= SIGRTMIN && sig <= SIGRTMAX ? sig : 0;
  }
  return 0;
}

void InstallHandler(int sig, Forward& forward) {
  struct sigaction sa {};
  sa.sa_sigaction = &StopSignalHandler;
  // SA_RESTART: a read(), write() or wait() the stop interrupts resumes (sleeps, poll and
  // epoll_wait return EINTR whatever the flag, as with Go's preemption signal).
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  // Neither of gofin's signals interrupts the handler of the other.
  sigaddset(&sa.sa_mask, g_stop_signal);
  sigaddset(&sa.sa_mask, kFallbackSignal);
  struct sigaction old {};
  sigaction(sig, &sa, &old);
  if ((old.sa_flags & SA_SIGINFO) != 0 ? old.sa_sigaction != nullptr
                                       : (old.sa_handler != SIG_DFL && old.sa_handler != SIG_IGN)) {
    forward.action = old;
    forward.set.store(true, std::memory_order_release);
  }
}

void WriteStderr(const char* msg) {
  const std::size_t n = std::strlen(msg);
  // A stopped thread may hold stdio's lock: write(2) directly.
  (void)!write(STDERR_FILENO, msg, n);
}

// The program replaced gofin's handler (its own sigaction on the signal): gofin's comes back,
// and signals it did not send go on to the program's. Checked before each stop, with the
// world running.
void CheckHandler() {
  struct sigaction cur {};
  if (sigaction(g_stop_signal, nullptr, &cur) != 0) return;
  if ((cur.sa_flags & SA_SIGINFO) != 0 && cur.sa_sigaction == &StopSignalHandler) return;
  char msg[400];
  std::snprintf(msg, sizeof(msg),
                "gofin: the program installed its own handler on signal %d, which gofin uses "
                "to stop threads for a collection; gofin installed its handler again and "
                "forwards the signals it did not send to the program's handler. Choose "
                "another signal for gofin with GOFIN_STOP_SIGNAL (e.g. SIGRTMIN+3).\n",
                g_stop_signal);
  WriteStderr(msg);
  InstallHandler(g_stop_signal, g_forward_stop);
}

void EnsureFallbackHandler() {
  if (g_fallback_installed.load(std::memory_order_acquire)) return;
  InstallHandler(kFallbackSignal, g_forward_fallback);
  g_fallback_installed.store(true, std::memory_order_release);
}

long TgKill(pid_t pid, pid_t tid, int sig) { return syscall(SYS_tgkill, pid, tid, sig); }

// Sends the stop signal; false only when the thread no longer exists (ESRCH). A signal the
// kernel cannot queue (EAGAIN: the user's RLIMIT_SIGPENDING is used up) is retried with a
// bounded backoff, then sent as the fallback legacy signal, which needs no queue entry.
bool SendStop(pid_t pid, const ThreadRecord* r) {
  long backoff_ns = 20000;
  long waited_ns = 0;
  for (;;) {
    if (TgKill(pid, r->tid, g_stop_signal) == 0) return true;
    if (errno == ESRCH) return false;
    if (errno != EAGAIN) return true;  // EINVAL/EPERM cannot happen; the wait reports it
    if (waited_ns >= 20000000) break;
    NonCancelableSleep(backoff_ns);
    waited_ns += backoff_ns;
    backoff_ns = std::min<long>(backoff_ns * 2, 1000000);
  }
  EnsureFallbackHandler();
  for (;;) {
    if (TgKill(pid, r->tid, kFallbackSignal) == 0) return true;
    if (errno == ESRCH) return false;
    if (errno != EAGAIN) return true;
    NonCancelableSleep(1000000);
  }
}

// Reads /proc/self/task/<tid>/<file> into buf (NUL-terminated); false when the thread is
// gone. System calls only: other threads are stopped.
bool ReadTaskFile(pid_t tid, const char* file, char* buf, std::size_t size) {
  char path[64];
  std::snprintf(path, sizeof(path), "/proc/self/task/%d/%s", static_cast<int>(tid), file);
  const int fd = static_cast<int>(syscall(SYS_openat, AT_FDCWD, path, O_RDONLY | O_CLOEXEC));
  if (fd < 0) return errno != ENOENT && errno != ESRCH;
  std::size_t n = 0;
  while (n + 1 < size) {
    const long got = syscall(SYS_read, fd, buf + n, size - 1 - n);
    if (got <= 0) break;
    n += static_cast<std::size_t>(got);
  }
  buf[n] = '\0';
  syscall(SYS_close, fd);
  return true;
}

// True when the thread is gone. Otherwise, once per stop, says on stderr why it has not
// stopped when its mask blocks the signal.
bool DiagnoseUnstopped(const ThreadRecord* r, bool report) {
  char status[4096];
  if (!ReadTaskFile(r->tid, "status", status, sizeof(status))) return true;
  if (!report) return false;
  const char* blk = std::strstr(status, "SigBlk:");
  if (blk == nullptr) return false;
  const unsigned long long mask = std::strtoull(blk + 7, nullptr, 16);
  char comm[64] = "?";
  if (ReadTaskFile(r->tid, "comm", comm, sizeof(comm))) {
    if (char* nl = std::strchr(comm, '\n')) *nl = '\0';
  }
  char msg[600];
  if ((mask >> (g_stop_signal - 1) & 1) != 0) {
    std::snprintf(msg, sizeof(msg),
                  "gofin: a collection is waiting for thread %d (%s), which blocks signal %d, "
                  "gofin's stop signal, with a mask gofin's pthread_sigmask/sigprocmask did "
                  "not see (a raw rt_sigprocmask, ppoll/pselect/epoll_pwait with a mask, or "
                  "a handler's sa_mask). Leave the signal unblocked in every thread that "
                  "calls gofin, or choose another signal with GOFIN_STOP_SIGNAL.\n",
                  static_cast<int>(r->tid), comm, g_stop_signal);
  } else {
    std::snprintf(msg, sizeof(msg),
                  "gofin: a collection has waited 1 s for thread %d (%s) to take signal %d, "
                  "gofin's stop signal (is it consuming the signal with sigwait, signalfd or "
                  "a handler of its own?)\n",
                  static_cast<int>(r->tid), comm, g_stop_signal);
  }
  WriteStderr(msg);
  return false;
}

}  // namespace

void NonCancelableSleep(long ns) {
  const NoCancellation no_cancel;
  timespec ts{0, ns};
  nanosleep(&ts, nullptr);
}

int StopSignal() { return g_stop_signal; }

// Which stack the thread was interrupted on, for the collector: its own, its current
// user-level segment (gofin::SetCurrentStack), or its alternate signal stack (the thread is
// in a handler installed with SA_ONSTACK). Anything else is a stack gofin was not told of.
void NoteStack(ThreadRecord* r, std::uintptr_t sp) {
  r->altstack_lo = r->altstack_hi = 0;
  if (sp >= r->stack_lo && sp < r->stack_hi) return;
  if (r->segment_hi != 0 && sp >= r->segment_lo && sp < r->segment_hi) return;
  std::uintptr_t lo = 0;
  std::uintptr_t hi = 0;
  if (OnAlternateSignalStack(lo, hi)) {
    r->altstack_lo = lo;
    r->altstack_hi = hi;
  }
}

bool OnAlternateSignalStack(std::uintptr_t& lo, std::uintptr_t& hi) {
  stack_t ss{};
  if (sigaltstack(nullptr, &ss) != 0 || (ss.ss_flags & SS_ONSTACK) == 0) return false;
  lo = reinterpret_cast<std::uintptr_t>(ss.ss_sp);
  hi = lo + ss.ss_size;
  return true;
}

void UnblockStopSignals() {
  if (g_stop_signal == 0) return;
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, g_stop_signal);
  if (g_fallback_installed.load(std::memory_order_acquire)) sigaddset(&set, kFallbackSignal);
  pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
}

void ParkAtSafepoint() noexcept {
  t_local.preempt_pending = 0;
  auto* r = static_cast<ThreadRecord*>(t_local.record);
  if (r == nullptr || !g_heap.world_stopping.load(std::memory_order_acquire)) return;
  gofin_spill_registers_and_call(r, &ParkSpilled);
}

void InitStopTheWorld() {
  static std::once_flag once;
  std::call_once(once, [] {
    FindRealSignalFunctions();
    InitVectorLayout();
    // A real-time signal: bdwgc (SIGPWR/SIGXCPU) and Go (SIGURG) may live in the same process.
    g_stop_signal = SIGRTMIN + 7;
    if (const char* v = secure_getenv("GOFIN_STOP_SIGNAL")) {
      if (const int sig = ParseSignal(v); sig != 0) {
        g_stop_signal = sig;
      } else {
        char msg[300];
        std::snprintf(msg, sizeof(msg),
                      "gofin: GOFIN_STOP_SIGNAL=%.100s is not a signal gofin can use (a number, "
                      "SIGRTMIN+n, SIGRTMAX-n, SIGUSR1, SIGUSR2, SIGURG, SIGPWR, SIGXCPU, "
                      "SIGWINCH); using SIGRTMIN+7\n",
                      v);
        WriteStderr(msg);
      }
    }
    InstallHandler(g_stop_signal, g_forward_stop);
  });
}

void StopTheWorld() {
  // No thread may be inside a StwGuard (mid-sweep, mid-refill) when the world stops.
  g_heap.world_stopping.store(true, std::memory_order_seq_cst);
  while (g_heap.stw_blockers.load(std::memory_order_seq_cst) != 0) sched_yield();
  RegistryLock().lock();
  CheckHandler();
  ThreadRecord* self = CurrentThreadRecord();
  const pid_t pid = getpid();
  // relaxed: the epoch only moves in StartTheWorld, on this thread, with the lock held.
  const std::uint32_t epoch = g_epoch.load(std::memory_order_relaxed);
  g_acks.store(0, std::memory_order_relaxed);
  std::uint32_t expected = 0;
  bool any_gone = false;
  for (ThreadRecord* r = RegistryHead(); r != nullptr; r = r->next) {
    if (r == self) continue;
    if (SendStop(pid, r)) {
      ++expected;
    } else {
      r->tid = 0;  // gone (a thread that exited without unregistering): dropped below
      any_gone = true;
    }
  }
  // Waits in slices: a thread that exits without unregistering is noticed and not waited
  // for, and one that cannot take the signal is named on stderr instead of a silent hang.
  const timespec slice{0, 50000000};
  int slices = 0;
  bool reported = false;
  for (;;) {
    // acquire: pairs with Park's release; the stopped threads' stacks are now readable.
    const std::uint32_t n = g_acks.load(std::memory_order_acquire);
    if (n >= expected) break;
    if (Futex(&g_acks, FUTEX_WAIT_PRIVATE, n, &slice) == 0 || errno != ETIMEDOUT) continue;
    ++slices;
    const bool report = !reported && slices >= 20;
    reported = reported || report;
    for (ThreadRecord* r = RegistryHead(); r != nullptr; r = r->next) {
      // relaxed: a hint; a thread that parks meanwhile is counted by the acks.
      if (r == self || r->tid == 0 ||
          r->parked_epoch.load(std::memory_order_relaxed) == epoch + 1) {
        continue;
      }
      if (DiagnoseUnstopped(r, report)) {
        r->tid = 0;  // gone without an ack; it was counted when its signal was sent
        any_gone = true;
        --expected;
      }
    }
  }
  if (any_gone) RemoveDeadThreadRecords();
}

void StartTheWorld() {
  g_heap.world_stopping.store(false, std::memory_order_seq_cst);
  g_epoch.fetch_add(1, std::memory_order_release);
  Futex(&g_epoch, FUTEX_WAKE_PRIVATE, 0x7fffffff);
  RegistryLock().unlock();
}

}  // namespace gofin::internal

// bdwgc's GC_pthread_sigmask, as an interposer: a thread that blocks every signal (a server
// whose one thread sigwaits for them all, a thread created while its creator had them
// blocked) would never stop for a collection, and every GC() would wait for it forever. So
// gofin's signals are left out of any set a thread blocks or waits for; everything else
// passes through unchanged.
extern "C" {
int pthread_sigmask(int how, const sigset_t* set, sigset_t* old) {
  if (gofin::internal::g_real.pthread_sigmask == nullptr) {
    gofin::internal::FindRealSignalFunctions();
  }
  return gofin::internal::MaskWithoutGofinSignals(gofin::internal::g_real.pthread_sigmask, how, set,
                                                  old);
}
int sigprocmask(int how, const sigset_t* set, sigset_t* old) {
  if (gofin::internal::g_real.sigprocmask == nullptr) gofin::internal::FindRealSignalFunctions();
  return gofin::internal::MaskWithoutGofinSignals(gofin::internal::g_real.sigprocmask, how, set,
                                                  old);
}
int sigwait(const sigset_t* set, int* sig) {
  if (gofin::internal::g_real.sigwait == nullptr) gofin::internal::FindRealSignalFunctions();
  sigset_t copy;
  return gofin::internal::g_real.sigwait(gofin::internal::WithoutGofinSignals(set, copy), sig);
}
int sigwaitinfo(const sigset_t* set, siginfo_t* info) {
  if (gofin::internal::g_real.sigwaitinfo == nullptr) gofin::internal::FindRealSignalFunctions();
  sigset_t copy;
  return gofin::internal::g_real.sigwaitinfo(gofin::internal::WithoutGofinSignals(set, copy), info);
}
int sigtimedwait(const sigset_t* set, siginfo_t* info, const timespec* timeout) {
  if (gofin::internal::g_real.sigtimedwait == nullptr) {
    gofin::internal::FindRealSignalFunctions();
  }
  sigset_t copy;
  return gofin::internal::g_real.sigtimedwait(gofin::internal::WithoutGofinSignals(set, copy), info,
                                              timeout);
}
}
