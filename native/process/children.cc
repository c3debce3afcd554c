#include "process/children.h"

#include <cerrno>
#include <cstring>
#include <sys/prctl.h>
#include <sys/wait.h>

namespace remus {

int SetChildSubreaper() { return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0 ? 0 : errno; }

ChildStatus ReapChild(pid_t pid) {
  ChildStatus s;
  siginfo_t info;
  memset(&info, 0, sizeof info);
  int r;
  do {
    r = waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r < 0) {
    s.not_child = errno == ECHILD;
    s.exited = s.not_child;
    return s;
  }
  if (info.si_pid == 0) return s;  // still running
  s.exited = true;
  if (info.si_code == CLD_EXITED) {
    s.code = info.si_status;
  } else {
    s.signal = info.si_status;
  }
  return s;
}

}  // namespace remus
