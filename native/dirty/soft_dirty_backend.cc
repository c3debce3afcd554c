#include "dirty/soft_dirty_backend.h"

#include <cerrno>
#include <fcntl.h>
#include <unistd.h>

#include "core/errors.h"

namespace remus {

void SoftDirtyBackend::ClearRefs(TargetView& target) {
  if (!clear_refs_.valid()) {
    clear_refs_.reset(open(("/proc/" + std::to_string(target.pid) + "/clear_refs").c_str(), O_WRONLY | O_CLOEXEC));
    if (!clear_refs_.valid()) ThrowSys(target.pid, "clear_refs", errno, "opening /proc/PID/clear_refs");
  }
  if (pwrite(clear_refs_.get(), "4", 1, 0) != 1) ThrowSys(target.pid, "clear_refs", errno, "writing 4 to clear_refs");
}

void SoftDirtyBackend::Arm(TargetView& target) {
  DirtyReport discard;
  Collect(target, discard);
}

void SoftDirtyBackend::Collect(TargetView& target, DirtyReport& out) {
  IntervalSet now;
  for (const auto& v : target.vmas) {
    if (!v.private_memory()) continue;
    if (v.writable()) {
      now.Add(v.start, v.end);
    } else {
      for (auto& [s, e] : tracked_.Inside(v.start, v.end)) now.Add(s, e);
    }
  }
  for (const auto& [start, end] : now.intervals()) {
    if (int e = ReadPagemap(target.pagemap_fd, start, end, entries_))
      ThrowSys(target.pid, "pagemap", e, "reading /proc/PID/pagemap");
    present_.clear();
    dirty_.clear();
    ParsePagemap(entries_.data(), entries_.size(), start, &present_, &dirty_);
    zapped_.clear();
    presence_.Update(start, end, present_, zapped_);
    // Memory not tracked before: all of its content is new (the kernel marks new
    // mappings soft-dirty as a whole anyway).
    for (auto& r : dirty_)
      for (auto& [a, b] : tracked_.Inside(r.start, r.end())) out.Add(a, (b - a) / 4096, out.pages_written);
    for (auto& r : present_)
      for (auto& [a, b] : tracked_.Outside(r.start, r.end())) out.Add(a, (b - a) / 4096, out.pages_new);
    for (auto& z : zapped_) out.Add(z.start, z.npages, out.pages_zapped);
  }
  presence_.Commit();
  tracked_ = std::move(now);
  ClearRefs(target);
}

}  // namespace remus
