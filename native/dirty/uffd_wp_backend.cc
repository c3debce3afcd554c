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

void UffdWpBackend::ScanPresence(TargetView& target, uint64_t start, uint64_t end, std::vector<PageRange>& present,
                                 bool armed) {
  regions_.clear();
  // Present or swapped, and not an unmodified file page (see ParsePagemap). In armed
  // memory uffd-wp markers also read as "swapped", so there only present pages count (a
  // page swapped out then looks dropped: reported and read once more, never missed).
  uint64_t has = armed ? abi::kPageIsPresent : abi::kPageIsPresent | abi::kPageIsSwapped;
  if (int e = uffd::Scan(target.pagemap_fd, start, end, 0, abi::kPageIsFile, abi::kPageIsFile, has, has, regions_))
    ThrowSys(target.pid, "pagemap_scan", e, "PAGEMAP_SCAN (presence)");
  present.clear();
  for (auto& r : regions_) present.push_back({r.start, (r.end - r.start) / 4096});
}

void UffdWpBackend::ReportNew(TargetView& target, uint64_t start, uint64_t end, DirtyReport& out) {
  ScanPresence(target, start, end, present_, false);
  for (auto& r : present_) out.Add(r.start, r.npages, out.pages_new);
}

void UffdWpBackend::Arm(TargetView& target) {
  CreateRemoteUffd(target);
  DirtyReport discard;
  Collect(target, discard);
}

void UffdWpBackend::Collect(TargetView& target, DirtyReport& out) {
  IntervalSet still_mapped;
  for (const auto& v : target.vmas) {
    if (!v.private_memory()) continue;
    still_mapped.Add(v.start, v.end);
    if (v.file_backed() && !wp_file_) continue;  // hashed
    if (!hash_only_.Inside(v.start, v.end).empty()) continue;
    for (auto [s, e] : armed_.Inside(v.start, v.end)) {
      // The kernel's fast path: only written pages are touched, listed and protected
      // again. CHECK_WPASYNC makes a mapping that lost its registration (replaced by
      // mmap MAP_FIXED) an error instead of a silent skip.
      regions_.clear();
      int err = uffd::Scan(target.pagemap_fd, s, e, abi::kPmScanWpMatching | abi::kPmScanCheckWpAsync,
                           abi::kPageIsWritten, 0, 0, abi::kPageIsWritten, regions_);
      if (err == EPERM) {
        armed_.Remove(s, e);  // armed again below, or reported if it cannot be written
        if (!v.writable()) ReportNew(target, s, e, out);
        continue;
      }
      if (err) ThrowSys(target.pid, "pagemap_scan", err, "PAGEMAP_SCAN (written pages)");
      for (auto& r : regions_) out.Add(r.start, (r.end - r.start) / 4096, out.pages_written);
      // MADV_DONTNEED leaves an anonymous page empty, which the scan reports as written.
      // On a file mapping it leaves a write-protect marker instead and the page reverts
      // to the file's content unseen: compare presence with the last epoch there.
      if (v.file_backed()) {
        ScanPresence(target, s, e, present_, true);
        zapped_.clear();
        presence_.Update(s, e, present_, zapped_);
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
      ScanPresence(target, s, e, present_, false);
      for (auto& r : present_) out.Add(r.start, r.npages, out.pages_new);
      if (v.file_backed()) {
        ScanPresence(target, s, e, present_, true);
        zapped_.clear();
        presence_.Update(s, e, present_, zapped_);
      }
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
