// Adopting and reaping processes that are not ours by fork: a standby restores a process
// with `criu restore --restore-detached`, which leaves it to the nearest subreaper. Node
// reaps only the children it spawned itself, so the standby reaps restored processes by PID.
#pragma once

#include <sys/types.h>

namespace remus {

// prctl(PR_SET_CHILD_SUBREAPER, 1): orphans below us are re-parented to us. Returns errno.
int SetChildSubreaper();

struct ChildStatus {
  bool exited = false;  // false: still running
  int code = -1;        // exit code, or -1 when killed by a signal
  int signal = 0;
  bool not_child = false;  // ECHILD: not (or no longer) our child
};

// waitid(P_PID, pid, WEXITED | WNOHANG): never blocks; reaps `pid` if it has exited.
ChildStatus ReapChild(pid_t pid);

}  // namespace remus
