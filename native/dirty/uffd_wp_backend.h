#pragma once

#include "core/kernel_abi.h"
#include "core/unique_fd.h"
#include "dirty/backend.h"
#include "dirty/hash_backend.h"
#include "dirty/pagemap.h"

namespace remus {

// userfaultfd write-protection in async mode, read back with PAGEMAP_SCAN.
//
// The userfaultfd must belong to the target's mm, so the target itself is made to call
// userfaultfd(2) (an injected syscall); the new descriptor is copied into this process
// with pidfd_getfd and closed in the target, so the target's fd table is as before
// (CRIU refuses to dump a process holding a userfaultfd). From then on the kernel clears
// a page's write-protect bit on the first write, at about 1 µs per page, and one
// PAGEMAP_SCAN per mapping both lists the written pages and write-protects them again.
class UffdWpBackend : public DirtyBackend {
 public:
  UffdWpBackend();
  const char* name() const override { return "uffd-wp"; }
  void Arm(TargetView& target) override;
  void Collect(TargetView& target, DirtyReport& out) override;

 private:
  void CreateRemoteUffd(TargetView& target);
  // Reports pages with content in [start, end) as new, without arming.
  void ReportNew(TargetView& target, uint64_t start, uint64_t end, DirtyReport& out);
  void ScanPresence(TargetView& target, uint64_t start, uint64_t end, std::vector<PageRange>& present, bool armed);

  UniqueFd uffd_;
  bool wp_file_;                  // kernel write-protects private file mappings
  IntervalSet armed_;             // registered and write-protected
  PresenceMap presence_;          // private file mappings only (see Collect)
  HashBackend hashed_;            // mappings the kernel will not write-protect
  IntervalSet hash_only_;         // ranges that failed to register
  std::vector<abi::PageRegion> regions_;
  std::vector<PageRange> present_, zapped_;
};

}  // namespace remus
