#include "process/spawn.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

extern char** environ;

namespace remus {
namespace {

double NowMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

// Owns the posix_spawn helper objects (each has a destroy call).
struct SpawnSetup {
  posix_spawn_file_actions_t actions;
  posix_spawnattr_t attr;
  SpawnSetup() {
    posix_spawn_file_actions_init(&actions);
    posix_spawnattr_init(&attr);
  }
  ~SpawnSetup() {
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
  }
  SpawnSetup(const SpawnSetup&) = delete;
  SpawnSetup& operator=(const SpawnSetup&) = delete;
};

SpawnResult Decode(int status, double t0) {
  SpawnResult r;
  if (WIFEXITED(status)) r.code = WEXITSTATUS(status);
  else if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
  r.ms = NowMs() - t0;
  return r;
}

}  // namespace

SpawnResult RunProgram(const SpawnRequest& req) {
  SpawnSetup s;
  const char* out = req.stdout_file.empty() ? "/dev/null" : req.stdout_file.c_str();
  const char* err = req.stderr_file.empty() ? "/dev/null" : req.stderr_file.c_str();
  posix_spawn_file_actions_addopen(&s.actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&s.actions, 1, out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_addopen(&s.actions, 2, err, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  // Node ignores SIGPIPE and may block signals in its threads: the program gets defaults.
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&s.attr, &none);
  posix_spawnattr_setsigdefault(&s.attr, &all);
  posix_spawnattr_setflags(&s.attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

  std::vector<char*> argv;
  argv.push_back(const_cast<char*>(req.path.c_str()));
  for (const auto& a : req.args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);

  double t0 = NowMs();
  pid_t pid = -1;
  int rc = posix_spawn(&pid, req.path.c_str(), &s.actions, &s.attr, argv.data(), environ);
  if (rc != 0) throw std::runtime_error("cannot start " + req.path + ": " + strerror(rc));

  // Wait with a deadline: a pidfd becomes readable when the child exits.
  int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  bool timed_out = false;
  if (pidfd >= 0) {
    pollfd p{pidfd, POLLIN, 0};
    int left = req.timeout_ms;
    for (;;) {
      int n = poll(&p, 1, left);
      if (n > 0) break;
      if (n < 0 && errno == EINTR) { left = static_cast<int>(req.timeout_ms - (NowMs() - t0)); if (left > 0) continue; }
      timed_out = true;
      break;
    }
    close(pidfd);
  }
  if (timed_out) kill(pid, SIGKILL);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) throw std::runtime_error("waitpid(" + std::to_string(pid) + "): " + strerror(errno));
  }
  SpawnResult r = Decode(status, t0);
  r.timed_out = timed_out;
  return r;
}

}  // namespace remus
