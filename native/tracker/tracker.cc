#include "tracker/tracker.h"

#include <cerrno>
#include <fcntl.h>
#include <cstring>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include "core/unique_fd.h"
#include <sys/socket.h>

#include "core/caps.h"
#include "core/errors.h"
#include "core/sched.h"
#include "dirty/pagemap.h"
#include "freeze/freezer.h"

namespace remus {
namespace {

uint64_t NowNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

// Every page with content in the tracked memory (for a full copy).
std::vector<PageRange> AllPresent(const std::vector<Vma>& vmas, int pagemap_fd, pid_t pid) {
  std::vector<PageRange> out;
  std::vector<uint64_t> entries;
  for (const auto& v : vmas) {
    if (!v.private_memory()) continue;
    if (int e = ReadPagemap(pagemap_fd, v.start, v.end, entries)) ThrowSys(pid, "pagemap", e, "reading /proc/PID/pagemap");
    ParsePagemap(entries.data(), entries.size(), v.start, &out, nullptr, GetKernelCaps().uffd_marker_frame);
  }
  return out;
}

}  // namespace

Tracker::Tracker(pid_t pid, TrackerOptions options)
    : pid_(pid), options_(options), remote_(pid), reader_(pid), pool_(std::make_shared<BufferPool>()) {
  ValidateTarget(pid);
  choice_ = ChooseBackend(options.backend);
  if (!choice_.available)
    throw NativeError(ErrorCode::kBackendUnavailable, ENOTSUP, pid, "backend",
                      "dirty-tracking backend '" + choice_.name + "' is unavailable: " + choice_.reason);
}

Tracker::~Tracker() = default;

void Tracker::CheckAlive() {
  if (!pagemap_.valid()) {
    pagemap_.reset(open(("/proc/" + std::to_string(pid_) + "/pagemap").c_str(), O_RDONLY | O_CLOEXEC));
    if (!pagemap_.valid()) ThrowSys(pid_, "open_pagemap", errno == ENOENT ? ESRCH : errno, "opening /proc/PID/pagemap");
  }
}

AttachInfo Tracker::Attach() {
  CheckAlive();
  uint64_t t0 = NowNs();
  Freezer freezer(pid_);
  freezer.Freeze(options_.freeze_timeout);
  std::vector<Vma> vmas = ReadMaps(pid_);
  TargetView view{pid_, vmas, freezer, remote_, reader_, pagemap_.get()};
  backend_ = MakeBackend(choice_.kind, pid_);
  backend_->Arm(view);
  // brk now, while frozen anyway: an injected syscall single-steps the target, and a
  // tracer killed in that instant leaves it a SIGTRAP that kills it. Epochs then inject
  // only when the heap moved.
  for (const auto& v : vmas)
    if (v.path == "[heap]") heap_ = {v.start, v.end};
  long brk = remote_.Call(freezer.Injector(), SYS_brk, {0, 0, 0, 0, 0, 0}, vmas);
  if (brk > 0) {
    brk_ = static_cast<uint64_t>(brk);
    brk_known_ = true;
  }
  AttachInfo info{choice_.name, choice_.reason, 0, freezer.threads().size()};
  freezer.Thaw();
  info.arm_ns = NowNs() - t0;
  return info;
}

EpochData Tracker::Epoch(const EpochOptions& options) {
  if (!backend_) throw NativeError(ErrorCode::kInvalidArgument, EINVAL, pid_, "epoch", "tracker is not attached");
  EpochData data;
  data.seq = ++seq_;
  ScopedUrgency urgent;   // declared first: released after the thaw
  Freezer freezer(pid_);  // thaws on every exit path
  uint64_t t0 = NowNs();
  freezer.Freeze(options_.freeze_timeout);
  uint64_t t1 = NowNs();
  clock_gettime(CLOCK_MONOTONIC, &data.monotonic);
  clock_gettime(CLOCK_BOOTTIME, &data.boottime);
  clock_gettime(CLOCK_REALTIME, &data.realtime);
  // The layout is needed to scan even when not reported.
  data.vmas = ReadMaps(pid_);
  if (options.layout) {
    // brk is not in /proc (maps shows only its page-aligned end), so ask the target with
    // an injected brk(0); only when the heap mapping moved, since injection costs a
    // round of single-stepping. A brk that moved within its last page would be missed;
    // that is harmless for restore (the kernel works on page-aligned brk).
    std::pair<uint64_t, uint64_t> heap{0, 0};
    for (const auto& v : data.vmas)
      if (v.path == "[heap]") heap = {v.start, v.end};
    if (!brk_known_ || heap != heap_) {
      long brk = remote_.Call(freezer.Injector(), SYS_brk, {0, 0, 0, 0, 0, 0}, data.vmas);
      if (brk < 0) ThrowSys(pid_, "brk", static_cast<int>(-brk), "brk(0) inside the target");
      brk_ = static_cast<uint64_t>(brk);
      heap_ = heap;
      brk_known_ = true;
    }
    data.brk = brk_;
  }
  if (options.registers) {
    size_t xsave = GetKernelCaps().xsave_size;
    for (auto& t : freezer.threads()) {
      data.threads.push_back(CaptureRegisters(pid_, t.tid, xsave));
      data.threads.back().pending_signal = t.pending_signal;
    }
  }
  if (options.files) {
    // Read while frozen: the image of this epoch needs the descriptors as they are now
    // (file positions), and a change since the base image means a new base.
    data.fds = ReadFds(pid_);
    ClassifySockets(data.fds);
    // Sockets other than TCP connections keep their flags (a change of those means a new
    // base); a connection's are not needed (restore brings it back closed).
    for (auto& f : data.fds)
      if (!f.kind.empty() && f.kind != "tcp") ReadFdInfo(pid_, f);
    data.children = ReadChildren(pid_);
  }
  uint64_t t2 = NowNs();
  TargetView view{pid_, data.vmas, freezer, remote_, reader_, pagemap_.get()};
  backend_->Collect(view, data.report);
  data.ranges = std::move(data.report.ranges);
  data.report.ranges.clear();
  if (options.full) data.ranges = AllPresent(data.vmas, pagemap_.get(), pid_);
  Normalize(data.ranges);
  uint64_t t3 = NowNs();
  if (options.pages) {
    data.page_bytes = CountPages(data.ranges) * kPageSize;
    data.pages = pool_->Take(data.page_bytes);
    reader_.Read(data.ranges, data.pages->data());
  }
  uint64_t t4 = NowNs();
  freezer.Thaw();
  uint64_t t5 = NowNs();
  data.timings = {t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t5 - t0};
  if (!options.layout) data.vmas.clear();
  return data;
}

std::vector<PageRange> Tracker::PresentNow() {
  CheckAlive();
  std::vector<PageRange> ranges = AllPresent(ReadMaps(pid_), pagemap_.get(), pid_);
  Normalize(ranges);
  return ranges;
}

uint64_t Tracker::ReadLive(const std::vector<PageRange>& ranges, uint8_t* out) {
  uint64_t unreadable = 0;
  for (const auto& r : ranges) {
    uint64_t len = r.npages * kPageSize;
    struct iovec local = {out, len};
    struct iovec remote = {reinterpret_cast<void*>(r.start), len};
    ssize_t n = process_vm_readv(pid_, &local, 1, &remote, 1, 0);
    if (n < 0 && errno == ESRCH) ThrowSys(pid_, "read_live", ESRCH, "process_vm_readv");
    uint64_t got = n > 0 ? static_cast<uint64_t>(n) : 0;
    // A short read stops at the first page that is gone: go on page by page.
    for (uint64_t off = got; off < len; off += kPageSize) {
      struct iovec l = {out + off, kPageSize};
      struct iovec rp = {reinterpret_cast<void*>(r.start + off), kPageSize};
      if (process_vm_readv(pid_, &l, 1, &rp, 1, 0) != static_cast<ssize_t>(kPageSize)) {
        memset(out + off, 0, kPageSize);
        ++unreadable;
      }
    }
    out += len;
  }
  return unreadable;
}

// A connection socket and a listening one look alike in /proc/PID/fd; restore treats them
// very differently (a connection comes back closed, a listener must be there). Borrow the
// descriptor with pidfd_getfd and ask the socket; once per socket, cached by inode.
void Tracker::ClassifySockets(std::vector<OpenFd>& fds) {
  UniqueFd pidfd;
  std::unordered_map<uint64_t, std::string> seen;
  for (auto& f : fds) {
    if (f.target.rfind("socket:", 0) != 0) continue;
    auto it = socket_kinds_.find(f.inode);
    if (it != socket_kinds_.end()) {
      f.kind = it->second;
      seen.emplace(*it);
      continue;
    }
    if (!pidfd.valid()) pidfd.reset(static_cast<int>(syscall(SYS_pidfd_open, pid_, 0)));
    std::string kind = "socket";
    bool settled = true;  // a TCP socket not yet listening nor connected may become either
    UniqueFd dup(pidfd.valid() ? static_cast<int>(syscall(SYS_pidfd_getfd, pidfd.get(), f.fd, 0)) : -1);
    if (dup.valid()) {
      int domain = 0, type = 0, listening = 0;
      socklen_t len = sizeof(int);
      getsockopt(dup.get(), SOL_SOCKET, SO_DOMAIN, &domain, &len);
      len = sizeof(int);
      getsockopt(dup.get(), SOL_SOCKET, SO_TYPE, &type, &len);
      len = sizeof(int);
      getsockopt(dup.get(), SOL_SOCKET, SO_ACCEPTCONN, &listening, &len);
      if (domain == AF_INET || domain == AF_INET6) {
        if (type == SOCK_STREAM) {
          kind = listening ? "tcp-listen" : "tcp";
          struct sockaddr_storage peer;
          socklen_t plen = sizeof peer;
          if (!listening && getpeername(dup.get(), reinterpret_cast<struct sockaddr*>(&peer), &plen) != 0) settled = false;
        }
        else if (type == SOCK_DGRAM) kind = "udp";
        else if (type == SOCK_RAW) kind = "raw";
      } else if (domain == AF_UNIX) {
        kind = "unix";
      } else if (domain == AF_NETLINK) {
        kind = "netlink";
      }
    }
    f.kind = kind;
    if (settled) seen.emplace(f.inode, kind);
  }
  socket_kinds_.swap(seen);  // forget closed sockets
}

}  // namespace remus
