// Errors raised by native code. Every failure carries what a user needs to act on it:
// a stable code, the errno, the target PID and the operation that failed.
#pragma once

#include <cerrno>
#include <stdexcept>
#include <string>
#include <sys/types.h>

namespace remus {

// Stable codes, mirrored by ReplicateError.code on the JS side.
enum class ErrorCode {
  kTargetGone,          // the process (or thread) exited: ESRCH
  kPermissionDenied,    // EPERM/EACCES; message names the capability
  kInvalidTarget,       // PID 1, ourselves, a kernel thread, a zombie, our own child
  kBackendUnavailable,  // the kernel lacks the chosen dirty-tracking backend
  kTimeout,             // a thread would not stop in time
  kSystem,              // any other failed system call
  kInvalidArgument,
};

const char* ErrorCodeName(ErrorCode code);

class NativeError : public std::runtime_error {
 public:
  NativeError(ErrorCode code, int err, pid_t pid, std::string op, const std::string& message)
      : std::runtime_error(message), code_(code), errno_(err), pid_(pid), op_(std::move(op)) {}

  ErrorCode code() const { return code_; }
  int err() const { return errno_; }
  pid_t pid() const { return pid_; }
  const std::string& op() const { return op_; }

 private:
  ErrorCode code_;
  int errno_;
  pid_t pid_;
  std::string op_;
};

// Classifies errno from a failed call on the target into a NativeError and throws it.
// `what` describes the call ("PTRACE_SEIZE of thread 123").
[[noreturn]] void ThrowSys(pid_t pid, const std::string& op, int err, const std::string& what = "");

// Throws when the whole target process is gone; otherwise returns (a single thread can exit).
bool ProcessAlive(pid_t pid);

}  // namespace remus
