// Descriptors a restored process believes it has but the image could not give it back
// (connections accepted after the base image was taken): an unconnected TCP socket is put
// at each such number, so that the program's next read or write fails (ENOTCONN) and it
// closes the descriptor, instead of getting EBADF, or worse, finding an unrelated file
// opened later at that number. Done in the stopped restored process by injected syscalls.
#pragma once

#include <sys/types.h>
#include <vector>

namespace remus {

// `pid` is stopped (criu restore --leave-stopped); it stays stopped. Returns how many
// descriptors were placed. Throws NativeError.
int PlaceholderSockets(pid_t pid, const std::vector<int>& fds);

}  // namespace remus
