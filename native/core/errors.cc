#include "core/errors.h"

#include <cstring>
#include <signal.h>

namespace remus {

const char* ErrorCodeName(ErrorCode code) {
  switch (code) {
    case ErrorCode::kTargetGone: return "TARGET_GONE";
    case ErrorCode::kPermissionDenied: return "PERMISSION_DENIED";
    case ErrorCode::kInvalidTarget: return "INVALID_TARGET";
    case ErrorCode::kBackendUnavailable: return "BACKEND_UNAVAILABLE";
    case ErrorCode::kTimeout: return "TIMEOUT";
    case ErrorCode::kSystem: return "SYSTEM_ERROR";
    case ErrorCode::kInvalidArgument: return "INVALID_ARGUMENT";
  }
  return "SYSTEM_ERROR";
}

bool ProcessAlive(pid_t pid) { return kill(pid, 0) == 0 || errno == EPERM; }

void ThrowSys(pid_t pid, const std::string& op, int err, const std::string& what) {
  std::string detail = what.empty() ? op : what;
  std::string msg;
  ErrorCode code = ErrorCode::kSystem;
  if (err == ESRCH || (err == ENOENT && !ProcessAlive(pid))) {
    code = ErrorCode::kTargetGone;
    msg = "process " + std::to_string(pid) + " exited (" + detail + ": " + strerror(err) + ")";
  } else if (err == EPERM || err == EACCES) {
    code = ErrorCode::kPermissionDenied;
    msg = detail + " on process " + std::to_string(pid) + ": " + strerror(err) +
          ". Tracing another process needs root, or CAP_SYS_PTRACE (ptrace, process_vm_readv) and "
          "CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN (pidfd_getfd, userfaultfd); also check "
          "/proc/sys/kernel/yama/ptrace_scope and that no other tracer (gdb, strace) is attached";
  } else {
    msg = detail + " on process " + std::to_string(pid) + " failed: " + strerror(err);
  }
  throw NativeError(code, err, pid, op, msg);
}

}  // namespace remus
