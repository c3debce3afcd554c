// Freezing every thread of a process with ptrace, and letting it go.
//
// Each freeze seizes the threads afresh and each thaw detaches them: staying attached
// between epochs would turn every signal the target receives into a ptrace stop that
// only we could resume. Because the attach is ptrace, a tracer that dies (even by
// SIGKILL) detaches its tracees and they run on: the target is never left stopped.
#pragma once

#include <chrono>
#include <cstdint>
#include <sys/types.h>
#include <vector>

namespace remus {

struct FrozenThread {
  pid_t tid = 0;
  int pending_signal = 0;  // a signal the thread stopped for; re-delivered at thaw
};

class Freezer {
 public:
  explicit Freezer(pid_t pid) : pid_(pid) {}
  Freezer(const Freezer&) = delete;
  Freezer& operator=(const Freezer&) = delete;
  ~Freezer() { Thaw(); }

  // Stops every thread, including threads created while freezing. Throws NativeError
  // (TARGET_GONE, PERMISSION_DENIED, TIMEOUT) after thawing whatever it had stopped.
  void Freeze(std::chrono::milliseconds timeout);
  // Detaches every stopped thread, re-delivering signals they stopped for. Never throws.
  void Thaw() noexcept;

  bool frozen() const { return !threads_.empty(); }
  pid_t pid() const { return pid_; }
  std::vector<FrozenThread>& threads() { return threads_; }
  // The thread used for injected syscalls: the leader when it is alive.
  FrozenThread& Injector();

  // Waits for `tid` to report a ptrace stop; records a signal-delivery stop in `t`.
  // Returns false when the thread exited.
  bool WaitStop(FrozenThread& t, std::chrono::steady_clock::time_point deadline);
  // Waits (up to 100 ms) for a thread we trace to be reapable, and reaps it.
  void Reap(pid_t tid) noexcept;

 private:
  pid_t pid_;
  std::vector<FrozenThread> threads_;
  // Threads we seized that turned into zombies before they stopped (the process was
  // exiting). We are still their tracer: Thaw must reap them, or their process can never be
  // reaped by its parent (the target hung as a zombie, its parent waiting forever).
  std::vector<pid_t> zombies_;
};

}  // namespace remus
