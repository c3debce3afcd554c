/*
 * keeper: test fallback for build/Release/replicate-keeper.
 *
 * Usage: keeper -- CMD ARGS...
 *
 * Forks; the child calls setsid() and execs CMD with the keeper's
 * stdin/stdout/stderr. The keeper waits for the child and exits with its exit
 * status, or 128+signal if it was killed. The keeper itself never writes to
 * stdout. It exists so that the test process (which may ptrace the target) is
 * not the target's parent: libuv reaps its own children with waitpid() and
 * would steal ptrace-stop notifications.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 3 || strcmp(argv[1], "--") != 0) {
        fprintf(stderr, "usage: keeper -- CMD ARGS...\n");
        return 2;
    }
    /* If the driving test process dies, do not linger (the target itself
     * exits when its stdin, the driver's pipe, is closed). */
    (void)prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() == 1)
        return 1;

    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "keeper: fork: %s\n", strerror(errno));
        return 126;
    }
    if (pid == 0) {
        /* (fork cleared PDEATHSIG for the child) */
        if (setsid() < 0) {
            fprintf(stderr, "keeper: setsid: %s\n", strerror(errno));
            _exit(126);
        }
        execvp(argv[2], argv + 2);
        fprintf(stderr, "keeper: exec %s: %s\n", argv[2], strerror(errno));
        _exit(127);
    }

    int status;
    for (;;) {
        pid_t r = waitpid(pid, &status, 0);
        if (r == pid)
            break;
        if (r < 0 && errno != EINTR) {
            fprintf(stderr, "keeper: waitpid: %s\n", strerror(errno));
            return 126;
        }
    }
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return 126;
}
