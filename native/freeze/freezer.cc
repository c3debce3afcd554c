#include "freeze/freezer.h"

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <sched.h>
#include <string>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <time.h>
#include <unordered_set>

#include "core/errors.h"
#include "core/proc.h"

namespace remus {

bool Freezer::WaitStop(FrozenThread& t, std::chrono::steady_clock::time_point deadline) {
  // Poll rather than block: a thread in uninterruptible sleep must turn into a TIMEOUT
  // error, not hang the tracer. Spin briefly first; stops usually arrive within µs.
  for (int spins = 0;; ++spins) {
    int status = 0;
    pid_t r = waitpid(t.tid, &status, __WALL | WNOHANG);
    if (r == t.tid) {
      if (WIFEXITED(status) || WIFSIGNALED(status)) return false;
      if (WIFSTOPPED(status)) {
        int sig = WSTOPSIG(status);
        int event = status >> 16;
        // A signal-delivery stop: the thread is stopped all the same; keep the signal.
        if (event == 0 && sig != SIGTRAP) t.pending_signal = sig;
        return true;
      }
      continue;
    }
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == ECHILD) return false;  // gone and already reaped
      ThrowSys(pid_, "waitpid", errno, "waiting for thread " + std::to_string(t.tid) + " to stop");
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      ProcStat st;
      std::string state = ReadStat("/proc/" + std::to_string(pid_) + "/task/" + std::to_string(t.tid) + "/stat", st)
                              ? std::string(1, st.state)
                              : "?";
      throw NativeError(ErrorCode::kTimeout, ETIMEDOUT, pid_, "freeze",
                        "thread " + std::to_string(t.tid) + " of process " + std::to_string(pid_) +
                            " did not stop in time (state " + state +
                            (state == "D" ? ": uninterruptible sleep, usually disk or NFS I/O" : "") +
                            "); it was released and keeps running");
    }
    if (spins < 200) {
      sched_yield();
    } else {
      // A thread of an exiting process may never report a stop (its group leader's exit
      // is held back until every thread is reaped): a dead or zombie thread counts as gone.
      ProcStat st;
      if (spins % 16 == 0 &&
          (!ReadStat("/proc/" + std::to_string(pid_) + "/task/" + std::to_string(t.tid) + "/stat", st) ||
           st.state == 'Z' || st.state == 'X')) {
        zombies_.push_back(t.tid);  // not reaped yet: Thaw does it
        return false;
      }
      struct timespec ts = {0, 50 * 1000};
      nanosleep(&ts, nullptr);
    }
  }
}

void Freezer::Freeze(std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  std::unordered_set<pid_t> seen;
  try {
    // A thread can be created by a thread we have not stopped yet: list again until a
    // pass finds nothing new. Once every listed thread is stopped, nobody can clone.
    for (int round = 0;; ++round) {
      std::vector<pid_t> tids = ListThreads(pid_);
      size_t first_new = threads_.size();
      for (pid_t tid : tids) {
        if (!seen.insert(tid).second) continue;
        if (ptrace(PTRACE_SEIZE, tid, nullptr, nullptr) != 0) {
          int e = errno;
          if (e == ESRCH) continue;  // exited meanwhile
          ProcStat st;
          bool dying = !ReadStat("/proc/" + std::to_string(pid_) + "/task/" + std::to_string(tid) + "/stat", st) ||
                       st.state == 'Z' || st.state == 'X';
          if (e == EPERM && dying) continue;  // an exited thread-group leader stays listed as a zombie
          ThrowSys(pid_, "ptrace_seize", e, "PTRACE_SEIZE of thread " + std::to_string(tid));
        }
        threads_.push_back({tid, 0});
        if (ptrace(PTRACE_INTERRUPT, tid, nullptr, nullptr) != 0 && errno != ESRCH)
          ThrowSys(pid_, "ptrace_interrupt", errno);
      }
      if (threads_.size() == first_new) break;
      for (size_t i = first_new; i < threads_.size();) {
        if (WaitStop(threads_[i], deadline)) {
          ++i;
        } else {
          threads_.erase(threads_.begin() + static_cast<long>(i));
        }
      }
      if (round > 1000)
        throw NativeError(ErrorCode::kTimeout, EAGAIN, pid_, "freeze",
                          "process " + std::to_string(pid_) + " creates threads faster than they can be stopped");
    }
    if (threads_.empty()) ThrowSys(pid_, "freeze", ESRCH);
  } catch (...) {
    Thaw();
    throw;
  }
}

void Freezer::Thaw() noexcept {
  for (auto& t : threads_) {
    if (ptrace(PTRACE_DETACH, t.tid, nullptr, reinterpret_cast<void*>(static_cast<long>(t.pending_signal))) == 0)
      continue;
    // The thread was killed while stopped (SIGKILL reaches traced threads). As its
    // tracer we must reap it, or the process could never be fully reaped by its parent.
    Reap(t.tid);
  }
  threads_.clear();
  for (pid_t tid : zombies_) Reap(tid);
  zombies_.clear();
}

void Freezer::Reap(pid_t tid) noexcept {
  for (int i = 0; i < 2000; ++i) {
    int status;
    pid_t r = waitpid(tid, &status, __WALL | WNOHANG);
    if (r == tid || (r < 0 && errno != EINTR)) return;
    struct timespec ts = {0, 50 * 1000};
    nanosleep(&ts, nullptr);
  }
}

FrozenThread& Freezer::Injector() {
  for (auto& t : threads_)
    if (t.tid == pid_) return t;
  return threads_.front();
}

}  // namespace remus
