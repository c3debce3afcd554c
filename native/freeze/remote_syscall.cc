#include "freeze/remote_syscall.h"

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <ctime>
#include <sched.h>
#include <string>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>

#include "core/errors.h"
#include "core/proc.h"

namespace remus {

uint64_t RemoteSyscall::FindSyscallInsn(const std::vector<Vma>& vmas) {
  // Still valid if an executable mapping covers the cached address.
  for (const auto& v : vmas)
    if (insn_ && insn_ >= v.start && insn_ + 2 <= v.end && (v.prot & PROT_EXEC)) return insn_;
  insn_ = 0;
  // vDSO first (small, always there), then any other executable mapping.
  std::vector<const Vma*> order;
  for (const auto& v : vmas)
    if (v.path == "[vdso]") order.push_back(&v);
  for (const auto& v : vmas)
    if ((v.prot & PROT_EXEC) && (v.prot & PROT_READ) && v.path != "[vdso]" && v.path != "[vsyscall]") order.push_back(&v);
  std::vector<uint8_t> buf;
  for (const Vma* v : order) {
    uint64_t len = std::min<uint64_t>(v->end - v->start, 1 << 20);
    buf.resize(len);
    struct iovec local = {buf.data(), len};
    struct iovec remote = {reinterpret_cast<void*>(v->start), len};
    ssize_t n = process_vm_readv(pid_, &local, 1, &remote, 1, 0);
    if (n < 2) continue;
    for (ssize_t i = 0; i + 1 < n; ++i)
      if (buf[i] == 0x0f && buf[i + 1] == 0x05) return insn_ = v->start + static_cast<uint64_t>(i);
  }
  throw NativeError(ErrorCode::kSystem, ENOEXEC, pid_, "remote_syscall",
                    "no syscall instruction found in the executable mappings of process " + std::to_string(pid_));
}

// The next wait status of traced thread `tid`; false when it is gone. Polled, never a
// blocking waitpid: when the process exits meanwhile, the group leader's exit is not
// reported until every other thread has been reaped, and those are ours to reap (we trace
// them), so a blocking wait on the leader could wait for ever. A dead or zombie thread
// counts as gone; the tracker then reports TARGET_GONE and Thaw reaps what is left.
static bool WaitTraced(pid_t pid, pid_t tid, int* status) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  for (int spins = 0;; ++spins) {
    pid_t r = waitpid(tid, status, __WALL | WNOHANG);
    if (r == tid) return true;
    if (r < 0 && errno != EINTR) return false;
    if (spins < 200) { sched_yield(); continue; }
    if (spins % 16 == 0) {
      ProcStat st;
      if (!ReadStat("/proc/" + std::to_string(pid) + "/task/" + std::to_string(tid) + "/stat", st) || st.state == 'Z' || st.state == 'X')
        return false;
    }
    if (std::chrono::steady_clock::now() >= deadline)
      throw NativeError(ErrorCode::kTimeout, ETIMEDOUT, pid, "remote_syscall",
                        "thread " + std::to_string(tid) + " of process " + std::to_string(pid) + " did not stop after an injected step within 5 s");
    struct timespec ts = {0, 50 * 1000};
    nanosleep(&ts, nullptr);
  }
}

// After a single-step the thread sits in a SIGTRAP signal-delivery stop. If the tracer
// died there, the kernel would resume the thread *delivering SIGTRAP*, which kills it.
// Move it to a PTRACE_EVENT_STOP instead: interrupt, then continue with no signal; the
// pending interrupt stops it again inside get_signal(), before any user instruction.
void RemoteSyscall::ParkInEventStop(FrozenThread& t) {
  for (int attempt = 0; attempt < 16; ++attempt) {
    if (ptrace(PTRACE_INTERRUPT, t.tid, nullptr, nullptr) != 0) ThrowSys(pid_, "remote_syscall", errno, "PTRACE_INTERRUPT");
    if (ptrace(PTRACE_CONT, t.tid, nullptr, nullptr) != 0) ThrowSys(pid_, "remote_syscall", errno, "PTRACE_CONT");
    int status = 0;
    if (!WaitTraced(pid_, t.tid, &status) || WIFEXITED(status) || WIFSIGNALED(status)) ThrowSys(pid_, "remote_syscall", ESRCH);
    if ((status >> 16) == PTRACE_EVENT_STOP) return;
    t.pending_signal = WSTOPSIG(status);  // a signal came first: keep it for thaw, retry
  }
  throw NativeError(ErrorCode::kSystem, EIO, pid_, "remote_syscall", "thread " + std::to_string(t.tid) + " would not park");
}

long RemoteSyscall::Call(FrozenThread& t, long nr, std::array<uint64_t, 6> args, const std::vector<Vma>& vmas) {
  uint64_t insn = FindSyscallInsn(vmas);
  struct user_regs_struct saved;
  if (ptrace(PTRACE_GETREGS, t.tid, nullptr, &saved) != 0) ThrowSys(pid_, "remote_syscall", errno, "PTRACE_GETREGS");
  struct user_regs_struct regs = saved;
  regs.rip = insn;
  regs.rax = static_cast<uint64_t>(nr);
  // orig_rax = -1: the kernel must not treat the stop as an interrupted syscall to restart.
  regs.orig_rax = static_cast<uint64_t>(-1);
  regs.rdi = args[0];
  regs.rsi = args[1];
  regs.rdx = args[2];
  regs.r10 = args[3];
  regs.r8 = args[4];
  regs.r9 = args[5];
  if (ptrace(PTRACE_SETREGS, t.tid, nullptr, &regs) != 0) ThrowSys(pid_, "remote_syscall", errno, "PTRACE_SETREGS");
  struct user_regs_struct after;
  bool done = false;
  for (int attempt = 0; attempt < 16 && !done; ++attempt) {
    if (ptrace(PTRACE_SINGLESTEP, t.tid, nullptr, nullptr) != 0) {
      int e = errno;
      ptrace(PTRACE_SETREGS, t.tid, nullptr, &saved);
      ThrowSys(pid_, "remote_syscall", e, "PTRACE_SINGLESTEP");
    }
    int status = 0;
    if (!WaitTraced(pid_, t.tid, &status) || WIFEXITED(status) || WIFSIGNALED(status)) ThrowSys(pid_, "remote_syscall", ESRCH);
    int sig = WSTOPSIG(status);
    if (sig == SIGTRAP && (status >> 16) == 0) {
      if (ptrace(PTRACE_GETREGS, t.tid, nullptr, &after) != 0) ThrowSys(pid_, "remote_syscall", errno);
      // A signal stop before the instruction ran leaves rip unchanged: step again.
      done = after.rip == insn + 2;
      if (!done && ptrace(PTRACE_SETREGS, t.tid, nullptr, &regs) != 0) ThrowSys(pid_, "remote_syscall", errno);
    } else if ((status >> 16) == 0) {
      // Another signal arrived first: hold it back, deliver it at thaw.
      t.pending_signal = sig;
    }
  }
  if (ptrace(PTRACE_SETREGS, t.tid, nullptr, &saved) != 0) ThrowSys(pid_, "remote_syscall", errno, "PTRACE_SETREGS (restore)");
  if (!done)
    throw NativeError(ErrorCode::kSystem, EIO, pid_, "remote_syscall",
                      "injected syscall " + std::to_string(nr) + " did not complete in thread " + std::to_string(t.tid));
  ParkInEventStop(t);
  return static_cast<long>(after.rax);
}

}  // namespace remus
