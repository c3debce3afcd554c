// One tracked process: freezing it, collecting an epoch, letting it go.
// All methods must be called from one thread (ptrace ties a tracee to its tracer thread).
#pragma once

#include <chrono>
#include <cstdint>
#include <ctime>
#include <memory>
#include <string>
#include <unordered_map>
#include <sys/types.h>
#include <vector>

#include "core/proc.h"
#include "core/unique_fd.h"
#include "dirty/backend.h"
#include "freeze/registers.h"
#include "freeze/remote_syscall.h"
#include "memory/buffer_pool.h"
#include "memory/page_reader.h"

namespace remus {

struct TrackerOptions {
  BackendKind backend = BackendKind::kAuto;
  std::chrono::milliseconds freeze_timeout{2000};
};

struct EpochOptions {
  bool pages = true;       // read the pages' content
  bool registers = true;   // capture every thread's registers
  bool layout = true;      // report the VMAs and brk
  bool full = false;       // every page with content, not only the dirty ones
  bool files = true;       // open descriptors (positions, sizes) and child processes
};

struct EpochTimings {
  uint64_t freeze_ns = 0;   // seize + interrupt + wait for every thread
  uint64_t capture_ns = 0;  // layout, brk, registers
  uint64_t scan_ns = 0;     // finding dirty pages and re-arming
  uint64_t read_ns = 0;     // copying page content
  uint64_t thaw_ns = 0;     // detach
  uint64_t pause_ns = 0;    // first seize to last detach
};

struct EpochData {
  uint64_t seq = 0;
  EpochTimings timings;
  struct timespec monotonic {}, boottime {}, realtime {};
  std::vector<ThreadRegisters> threads;
  std::vector<Vma> vmas;
  uint64_t brk = 0;
  std::vector<OpenFd> fds;        // with options.files
  std::vector<pid_t> children;    // with options.files
  std::vector<PageRange> ranges;  // sorted, merged
  std::unique_ptr<PageBuffer> pages;
  uint64_t page_bytes = 0;
  DirtyReport report;  // counters (ranges moved out)
};

struct AttachInfo {
  std::string backend;
  std::string reason;
  uint64_t arm_ns = 0;  // pause while arming
  size_t threads = 0;
};

class Tracker {
 public:
  Tracker(pid_t pid, TrackerOptions options);
  ~Tracker();
  AttachInfo Attach();
  EpochData Epoch(const EpochOptions& options);
  // Every page with content in private memory now, without freezing: what an initial
  // copy must read. Tracking is armed already, so whatever changes meanwhile is in the
  // next epoch.
  std::vector<PageRange> PresentNow();
  // Reads `ranges` from the running target into `out`. Pages that cannot be read (the
  // target unmapped them meanwhile) read as zeros; returns how many. Only for a copy that
  // the next epoch corrects: never inside a freeze, where a failed read is an error.
  uint64_t ReadLive(const std::vector<PageRange>& ranges, uint8_t* out);
  pid_t pid() const { return pid_; }
  std::shared_ptr<BufferPool> pool() const { return pool_; }

 private:
  void CheckAlive();
  pid_t pid_;
  TrackerOptions options_;
  BackendChoice choice_;
  std::unique_ptr<DirtyBackend> backend_;
  RemoteSyscall remote_;
  PageReader reader_;
  UniqueFd pagemap_;
  std::shared_ptr<BufferPool> pool_;
  uint64_t seq_ = 0;
  bool brk_known_ = false;
  uint64_t brk_ = 0;
  std::pair<uint64_t, uint64_t> heap_{0, 0};
  // Socket kinds by inode: a socket's kind never changes, so each is classified once.
  std::unordered_map<uint64_t, std::string> socket_kinds_;
  void ClassifySockets(std::vector<OpenFd>& fds);
};

}  // namespace remus
