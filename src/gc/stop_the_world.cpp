#include "gc/stop_the_world.hpp"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <mutex>

#include "gc/thread_registry.hpp"
#include "heap/heap.hpp"
#include "heap/safepoint.hpp"

#if !defined(__x86_64__)
#error "gofin's stop-the-world currently supports x86-64 Linux only"
#endif

// Go: the register spill of a goroutine switch; cppgc: PushAllRegistersAndIterateStack. Only
// the callee-saved registers can hold the caller's values at this point.
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
  sub $8, %rsp
  mov %rsi, %rax
  mov %rsp, %rsi
  call *%rax
  add $8, %rsp
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
  ret
  .cfi_endproc
  .size gofin_clear_stack, .-gofin_clear_stack
  .section .note.GNU-stack,"",@progbits
  .text
)");

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

long Futex(std::atomic<std::uint32_t>* addr, int op, std::uint32_t val) {
  return syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(addr), op, val, nullptr, nullptr, 0);
}

void Park(ThreadRecord* r, std::uintptr_t sp) {
  // The epoch is read before acknowledging: the collector only moves it after every ack.
  const std::uint32_t epoch = g_epoch.load(std::memory_order_acquire);
  // release: the saved registers and stack contents are visible to the collector that
  // acquires the count.
  r->stopped_sp.store(sp, std::memory_order_release);
  g_acks.fetch_add(1, std::memory_order_release);
  Futex(&g_acks, FUTEX_WAKE_PRIVATE, 1);
  while (g_epoch.load(std::memory_order_acquire) == epoch) {
    Futex(&g_epoch, FUTEX_WAIT_PRIVATE, epoch);
  }
  r->stopped_sp.store(0, std::memory_order_relaxed);
  // Stale once running again: never a root for a later cycle this thread runs itself.
  for (auto& reg : r->regs) reg = 0;
}

void StopSignalHandler(int /*sig*/, siginfo_t* /*info*/, void* context) {
  const int saved_errno = errno;
  auto* r = static_cast<ThreadRecord*>(t_local.record);
  if (r != nullptr && g_heap.world_stopping.load(std::memory_order_acquire)) {
    if (t_local.nosafepoint > 0) {
      t_local.preempt_pending = 1;  // parks at the end of the critical region
    } else {
      const auto* uc = static_cast<const ucontext_t*>(context);
      static_assert(sizeof(r->regs) == sizeof(uc->uc_mcontext.gregs));
      std::memcpy(r->regs, uc->uc_mcontext.gregs, sizeof(r->regs));
      const auto sp = static_cast<std::uintptr_t>(uc->uc_mcontext.gregs[REG_RSP]);
      Park(r, sp - kRedZone);
    }
  }
  errno = saved_errno;
}

void ParkSpilled(void* arg, std::uintptr_t sp) {
  auto* r = static_cast<ThreadRecord*>(arg);
  std::memset(r->regs, 0, sizeof(r->regs));  // the registers are on the stack above sp
  Park(r, sp);
}

}  // namespace

void ParkAtSafepoint() noexcept {
  t_local.preempt_pending = 0;
  auto* r = static_cast<ThreadRecord*>(t_local.record);
  if (r == nullptr || !g_heap.world_stopping.load(std::memory_order_acquire)) return;
  gofin_spill_registers_and_call(r, &ParkSpilled);
}

void InitStopTheWorld() {
  static std::once_flag once;
  std::call_once(once, [] {
    // A real-time signal: bdwgc (SIGPWR/SIGXCPU) may live in the same process.
    g_stop_signal = SIGRTMIN + 7;
    struct sigaction sa {};
    sa.sa_sigaction = &StopSignalHandler;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(g_stop_signal, &sa, nullptr);
  });
}

void StopTheWorld() {
  // No thread may be inside a StwGuard (mid-sweep, mid-refill) when the world stops.
  g_heap.world_stopping.store(true, std::memory_order_seq_cst);
  while (g_heap.stw_blockers.load(std::memory_order_seq_cst) != 0) sched_yield();
  RegistryLock().lock();
  ThreadRecord* self = CurrentThreadRecord();
  g_acks.store(0, std::memory_order_relaxed);
  std::uint32_t expected = 0;
  for (ThreadRecord* r = RegistryHead(); r != nullptr; r = r->next) {
    if (r == self) continue;
    if (pthread_kill(r->thread, g_stop_signal) == 0) ++expected;
  }
  for (;;) {
    // acquire: pairs with Park's release; the stopped threads' stacks are now readable.
    const std::uint32_t n = g_acks.load(std::memory_order_acquire);
    if (n >= expected) break;
    Futex(&g_acks, FUTEX_WAIT_PRIVATE, n);
  }
}

void StartTheWorld() {
  g_heap.world_stopping.store(false, std::memory_order_seq_cst);
  g_epoch.fetch_add(1, std::memory_order_release);
  Futex(&g_epoch, FUTEX_WAKE_PRIVATE, 0x7fffffff);
  RegistryLock().unlock();
}

}  // namespace gofin::internal
