// Running a program from a process that holds a lot of memory. fork() copies the page
// tables of the whole parent: from a standby holding ~1 GB it took ~50 ms, spent on the
// failover path before `criu restore` even started (Node's child_process forks).
// posix_spawn() in glibc clones with CLONE_VM | CLONE_VFORK: no copy, ~1 ms whatever the
// parent's size.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace remus {

struct SpawnRequest {
  std::string path;
  std::vector<std::string> args;  // argv[1..]
  std::string stdout_file;        // empty: /dev/null
  std::string stderr_file;        // empty: /dev/null
  int timeout_ms = 60000;         // then SIGKILL
};

struct SpawnResult {
  int code = -1;      // exit code, or -1 when a signal ended it
  int signal = 0;
  bool timed_out = false;
  double ms = 0;      // from the spawn to the reaping
};

// Runs the program to its end (blocking: call it off the JS thread). Signals the child
// starts with: default dispositions, none blocked. Throws std::runtime_error if it cannot start.
SpawnResult RunProgram(const SpawnRequest& req);

}  // namespace remus
