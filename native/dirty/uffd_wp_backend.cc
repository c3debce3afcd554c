#include "dirty/uffd_wp_backend.h"

#include <cerrno>
#include <fcntl.h>
#include <sys/syscall.h>

#include "core/caps.h"
#include "core/errors.h"
#include "core/uffd.h"
#include "freeze/freezer.h"
#include "freeze/remote_syscall.h"

namespace remus {

UffdWpBackend::UffdWpBackend()
    : wp_file_(GetKernelCaps().uffd_wp_file.ok),
      hashed_([this](const Vma& v) {
        return (v.file_backed() && !wp_file_) || !hash_only_.Inside(v.start, v.end).empty();
      }) {}

void UffdWpBackend::CreateRemoteUffd(TargetView& target) {
  FrozenThread& t = target.freezer.Injector();
  long remote_fd = target.remote.Call(t, SYS_userfaultfd, {O_CLOEXEC | O_NONBLOCK, 0, 0, 0, 0, 0}, target.vmas);
  if (remote_fd < 0)
    ThrowSys(target.pid, "userfaultfd", static_cast<int>(-remote_fd), "userfaultfd(2) inside the target");
  UniqueFd pidfd(static_cast<int>(syscall(SYS_pidfd_open, target.pid, 0)));
  int err = pidfd.valid() ? 0 : errno;
  if (!err) {
    uffd_.reset(static_cast<int>(syscall(SYS_pidfd_getfd, pidfd.get(), static_cast<int>(remote_fd), 0)));
    if (!uffd_.valid()) err = errno;
  }
  // Whatever happened, the target must not keep the descriptor.
  long closed = target.remote.Call(t, SYS_close, {static_cast<uint64_t>(remote_fd), 0, 0, 0, 0, 0}, target.vmas);
  if (err) ThrowSys(target.pid, "pidfd_getfd", err, "copying the target's userfaultfd with pidfd_getfd");
  if (closed < 0) ThrowSys(target.pid, "close", static_cast<int>(-closed), "closing the userfaultfd inside the target");
  if (int e = uffd::EnableAsyncWp(uffd_.get()))
    throw NativeError(ErrorCode::kBackendUnavailable, e, target.pid, "uffd_api",
                      "the kernel refused UFFD_FEATURE_WP_ASYNC for process " + std::to_string(target.pid));
}

void UffdWpBackend::ScanPresence(TargetView& target, uint64_t start, uint64_t end, std::vector<PageRange>& present) {
  regions_.clear();
  // Present or swapped, and not an unmodified file page (see ParsePagemap). Only called
  // on ranges not yet write-protected: uffd-wp markers would also read as "swapped".
  if (int e = uffd::Scan(target.pagemap_fd, start, end, 0, abi::kPageIsFile, abi::kPageIsFile,
                         abi::kPageIsPresent | abi::kPageIsSwapped, abi::kPageIsPresent | abi::kPageIsSwapped,
                         regions_))
    ThrowSys(target.pid, "pagemap_scan", e, "PAGEMAP_SCAN (presence)");
  present.clear();
  for (auto& r : regions_) present.push_back({r.start, (r.end - r.start) / 4096});
}

void UffdWpBackend::ReportNew(TargetView& target, uint64_t start, uint64_t end, DirtyReport& out) {
  ScanPresence(target, start, end, present_);
  for (auto& r : present_) out.Add(r.start, r.npages, out.pages_new);
}

void UffdWpBackend::Arm(TargetView& target) {
  CreateRemoteUffd(target);
  DirtyReport discard;
  Collect(target, discard);
}

void UffdWpBackend::Collect(TargetView& target, DirtyReport& out) {
  // One PAGEMAP_SCAN over everything armed, matching every page: it write-protects the
  // written pages again and describes each page as written or not, present or not.
  // Mappings that are not registered (replaced by mmap MAP_FIXED, or never armed) are
  // skipped by the kernel, so an armed range missing from the answer lost its
  // registration.
  IntervalSet covered;
  std::vector<PageRange> present_now;
  if (!armed_.empty()) {
    uint64_t lo = armed_.intervals().begin()->first, hi = armed_.intervals().rbegin()->second;
    regions_.clear();
    int err = uffd::Scan(target.pagemap_fd, lo, hi, abi::kPmScanWpMatching, 0, 0, 0,
                         abi::kPageIsWritten | abi::kPageIsPresent | abi::kPageIsWpAllowed, regions_);
    if (err) ThrowSys(target.pid, "pagemap_scan", err, "PAGEMAP_SCAN (written pages)");
    for (auto& r : regions_) {
      covered.Add(r.start, r.end);
      uint64_t n = (r.end - r.start) / 4096;
      if (r.categories & abi::kPageIsWritten) out.Add(r.start, n, out.pages_written);
      if (r.categories & abi::kPageIsPresent) present_now.push_back({r.start, n});
    }
  }
  IntervalSet still_mapped;
  for (const auto& v : target.vmas) {
    if (!v.private_memory()) continue;
    still_mapped.Add(v.start, v.end);
    if (v.file_backed() && !wp_file_) continue;  // hashed
    if (!hash_only_.Inside(v.start, v.end).empty()) continue;
    for (auto [s, e] : armed_.Inside(v.start, v.end)) {
      for (auto [a, b] : covered.Outside(s, e)) {
        // Lost its registration: arm it again below (or, if it cannot be written now,
        // just report its content).
        armed_.Remove(a, b);
        if (!v.writable()) ReportNew(target, a, b, out);
      }
      // Pages that were present and are not any more (MADV_DONTNEED) read as zeros now.
      // The kernel reports most of them as written anyway; this catches the rest. Only
      // present pages count: uffd-wp markers look like swap entries.
      for (auto [a, b] : covered.Inside(s, e)) {
        present_.clear();
        for (auto& r : present_now)
          if (r.start < b && r.end() > a) {
            uint64_t x = std::max(a, r.start), y = std::min(b, r.end());
            present_.push_back({x, (y - x) / 4096});
          }
        zapped_.clear();
        presence_.Update(a, b, present_, zapped_);
        for (auto& z : zapped_) out.Add(z.start, z.npages, out.pages_zapped);
      }
    }
    if (!v.writable()) continue;
    auto unarmed = armed_.Outside(v.start, v.end);
    if (unarmed.empty()) continue;
    // Register the whole mapping (registering part of one would split it; registering
    // it again is harmless), report what has content, then write-protect the new part.
    if (uffd::Register(uffd_.get(), v.start, v.end - v.start) != 0) {
      hash_only_.Add(v.start, v.end);  // e.g. VM_PFNMAP/VM_IO mappings: hash them
      continue;
    }
    for (auto [s, e] : unarmed) {
      ScanPresence(target, s, e, present_);
      for (auto& r : present_) out.Add(r.start, r.npages, out.pages_new);
      zapped_.clear();
      presence_.Update(s, e, present_, zapped_);
      if (int err = uffd::Protect(uffd_.get(), s, e - s)) ThrowSys(target.pid, "uffd_writeprotect", err, "UFFDIO_WRITEPROTECT");
      armed_.Add(s, e);
    }
  }
  // Forget what was unmapped: a new mapping at the same address must be armed afresh.
  std::vector<std::pair<uint64_t, uint64_t>> keep(still_mapped.intervals().begin(), still_mapped.intervals().end());
  armed_.IntersectWith(keep);
  hash_only_.IntersectWith(keep);
  presence_.Commit();
  hashed_.Collect(target, out);
}

}  // namespace remus
