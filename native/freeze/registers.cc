#include "freeze/registers.h"

#include <cerrno>
#include <elf.h>
#include <sys/ptrace.h>
#include <sys/uio.h>

#include "core/errors.h"

#ifndef NT_X86_XSTATE
#define NT_X86_XSTATE 0x202
#endif

namespace remus {

SyscallRestart AdjustForRestart(struct user_regs_struct& regs) {
  constexpr long kErestartSys = -512, kErestartNoIntr = -513, kErestartNoHand = -514,
                 kErestartRestartBlock = -516;
  long orig = static_cast<long>(regs.orig_rax);
  long ax = static_cast<long>(regs.rax);
  if (orig < 0) return SyscallRestart::kNone;
  if (ax == kErestartSys || ax == kErestartNoIntr || ax == kErestartNoHand) {
    regs.rax = regs.orig_rax;
    regs.rip -= 2;  // length of the syscall instruction
    return SyscallRestart::kRestart;
  }
  if (ax == kErestartRestartBlock) {
    regs.rax = static_cast<uint64_t>(-EINTR);
    return SyscallRestart::kInterrupted;
  }
  return SyscallRestart::kNone;
}

ThreadRegisters CaptureRegisters(pid_t pid, pid_t tid, size_t xsave_size) {
  ThreadRegisters out;
  out.tid = tid;
  if (ptrace(PTRACE_GETREGS, tid, nullptr, &out.gp) != 0)
    ThrowSys(pid, "get_registers", errno, "PTRACE_GETREGS of thread " + std::to_string(tid));
  out.restart = AdjustForRestart(out.gp);
  out.xsave.assign(xsave_size, 0);
  struct iovec iov = {out.xsave.data(), xsave_size};
  if (ptrace(PTRACE_GETREGSET, tid, reinterpret_cast<void*>(NT_X86_XSTATE), &iov) != 0)
    ThrowSys(pid, "get_registers", errno, "PTRACE_GETREGSET(NT_X86_XSTATE) of thread " + std::to_string(tid));
  out.xsave.resize(iov.iov_len);
  if (ptrace(PTRACE_GETSIGMASK, tid, reinterpret_cast<void*>(sizeof(out.sigmask)), &out.sigmask) != 0)
    ThrowSys(pid, "get_registers", errno, "PTRACE_GETSIGMASK of thread " + std::to_string(tid));
  // Linux 5.13+; older kernels (EIO) simply report none.
  struct {
    uint64_t rseq_abi_pointer;
    uint32_t rseq_abi_size;
    uint32_t signature;
    uint32_t flags;
    uint32_t pad;
  } rseq{};
  if (ptrace(static_cast<__ptrace_request>(0x420f /* PTRACE_GET_RSEQ_CONFIGURATION */), tid,
             reinterpret_cast<void*>(sizeof(rseq)), &rseq) > 0) {
    out.rseq_addr = rseq.rseq_abi_pointer;
    out.rseq_size = rseq.rseq_abi_size;
  }
  return out;
}

}  // namespace remus
