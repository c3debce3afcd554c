// Making a stopped thread of the target execute one system call for us.
//
// Instead of writing a `syscall` instruction over the target's code (which would copy
// a text page on write), we find the two bytes 0f 05 in an executable mapping the
// target already has (the vDSO carries one for its fallback paths), point the thread's
// instruction pointer at them, single-step, and put every register back.
#pragma once

#include <array>
#include <cstdint>
#include <sys/types.h>
#include <vector>

#include "core/proc.h"
#include "freeze/freezer.h"

namespace remus {

class RemoteSyscall {
 public:
  explicit RemoteSyscall(pid_t pid) : pid_(pid) {}

  // Runs syscall `nr` with `args` in thread `t` (stopped), returns the raw return value
  // (negative errno on failure). Throws NativeError when ptrace fails.
  long Call(FrozenThread& t, long nr, std::array<uint64_t, 6> args, const std::vector<Vma>& vmas);

 private:
  uint64_t FindSyscallInsn(const std::vector<Vma>& vmas);
  void ParkInEventStop(FrozenThread& t);
  pid_t pid_;
  uint64_t insn_ = 0;  // address of 0f 05 in the target
};

}  // namespace remus
