#include "process/placeholders.h"

#include <chrono>
#include <sys/socket.h>
#include <sys/syscall.h>

#include "core/errors.h"
#include "core/proc.h"
#include "freeze/freezer.h"
#include "freeze/remote_syscall.h"

namespace remus {

int PlaceholderSockets(pid_t pid, const std::vector<int>& fds) {
  if (fds.empty()) return 0;
  Freezer freezer(pid);  // detaches on every path
  freezer.Freeze(std::chrono::milliseconds(2000));
  std::vector<Vma> vmas = ReadMaps(pid);
  RemoteSyscall remote(pid);
  FrozenThread& t = freezer.Injector();
  int placed = 0;
  for (int fd : fds) {
    long s = remote.Call(t, SYS_socket, {AF_INET, SOCK_STREAM, 0, 0, 0, 0}, vmas);
    if (s < 0) ThrowSys(pid, "placeholder", static_cast<int>(-s), "socket() inside the restored process");
    long r = s == fd ? fd : remote.Call(t, SYS_dup2, {static_cast<uint64_t>(s), static_cast<uint64_t>(fd), 0, 0, 0, 0}, vmas);
    if (s != fd) remote.Call(t, SYS_close, {static_cast<uint64_t>(s), 0, 0, 0, 0, 0}, vmas);
    if (r < 0) ThrowSys(pid, "placeholder", static_cast<int>(-r), "dup2() inside the restored process");
    ++placed;
  }
  freezer.Thaw();
  return placed;
}

}  // namespace remus
