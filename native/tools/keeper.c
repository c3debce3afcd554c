/*
 * replicate-keeper: starts a command as a grandchild of the agent.
 *
 *   replicate-keeper -- CMD ARGS...
 *
 * The agent (a Node process) must not be the parent of the process it traces: libuv
 * answers SIGCHLD with waitpid(child, WNOHANG) and would consume ptrace stops meant for
 * the tracer thread. The keeper forks; the child becomes a session leader (so CRIU needs
 * no --shell-job) and execs CMD; the keeper reaps it and exits with its status
 * (128 + signal when killed), so nothing is left for a slow init to reap.
 * Signals SIGTERM, SIGINT and SIGHUP sent to the keeper are forwarded to the command.
 *
 *   replicate-keeper --die-with-parent -- CMD ARGS...
 *
 * Another use: no fork; the keeper arranges to be killed (SIGKILL) when its parent dies,
 * then execs CMD in its place. For helpers that must not outlive the agent that started
 * them (a `criu lazy-pages` daemon kept ready by a standby that is then SIGKILLed).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile pid_t child = -1;

static void forward(int sig) {
  if (child > 0) kill(child, sig);
}

int main(int argc, char **argv) {
  int at = 1;
  if (at < argc && strcmp(argv[at], "--die-with-parent") == 0) {
    pid_t parent = getppid();
    at++;
    if (at < argc && strcmp(argv[at], "--") == 0) at++;
    if (at >= argc) {
      fprintf(stderr, "usage: replicate-keeper --die-with-parent -- CMD ARGS...\n");
      return 2;
    }
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) return 125; /* parent already gone */
    execvp(argv[at], argv + at);
    fprintf(stderr, "replicate-keeper: cannot run %s: %s\n", argv[at], strerror(errno));
    return 127;
  }
  if (at < argc && strcmp(argv[at], "--") == 0) at++;
  if (at >= argc) {
    fprintf(stderr, "usage: replicate-keeper -- CMD ARGS...\n");
    return 2;
  }
  child = fork();
  if (child < 0) {
    perror("replicate-keeper: fork");
    return 127;
  }
  if (child == 0) {
    setsid();
    execvp(argv[at], argv + at);
    fprintf(stderr, "replicate-keeper: cannot run %s: %s\n", argv[at], strerror(errno));
    _exit(127);
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = forward;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGHUP, &sa, NULL);
  /* If the agent dies, keep the command alive: that is the point of a hot standby's
     primary side staying up. The keeper itself just keeps reaping. */
  for (;;) {
    int status;
    pid_t r = waitpid(child, &status, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return 127;
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  }
}
