// A stopped thread's registers, ready to go into a CRIU core-TID.img.
#pragma once

#include <cstdint>
#include <sys/types.h>
#include <sys/user.h>
#include <vector>

namespace remus {

enum class SyscallRestart : uint8_t {
  kNone = 0,
  kRestart = 1,       // -ERESTARTSYS/-ERESTARTNOINTR/-ERESTARTNOHAND: rewound to re-run
  kInterrupted = 2,   // -ERESTART_RESTARTBLOCK: reported as -EINTR
};

struct ThreadRegisters {
  pid_t tid = 0;
  struct user_regs_struct gp {};  // adjusted for syscall restart (see AdjustForRestart)
  std::vector<uint8_t> xsave;     // NT_X86_XSTATE: the whole standard-format XSAVE area
  uint64_t sigmask = 0;           // blocked signals
  SyscallRestart restart = SyscallRestart::kNone;
  int pending_signal = 0;
  // The thread's registered rseq area (0 if none): the kernel rewrites its cpu id fields
  // whenever the thread resumes on another CPU, so its bytes may differ from a capture.
  uint64_t rseq_addr = 0;
  uint32_t rseq_size = 0;
};

// Reads general-purpose registers, the XSAVE area (`xsave_size` bytes) and the signal mask.
ThreadRegisters CaptureRegisters(pid_t pid, pid_t tid, size_t xsave_size);

// A thread stopped inside a system call has ax = -ERESTART*; the kernel fixes that up
// only when the thread resumes. An image must hold the state the thread resumes in,
// so do what the kernel (and CRIU's dump) does: rewind to re-issue the call.
SyscallRestart AdjustForRestart(struct user_regs_struct& regs);

}  // namespace remus
