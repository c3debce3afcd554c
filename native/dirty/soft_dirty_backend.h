#pragma once

#include "core/unique_fd.h"
#include "dirty/backend.h"
#include "dirty/pagemap.h"

namespace remus {

// Soft-dirty bits: writing 4 to /proc/PID/clear_refs write-protects every page; the
// first write sets bit 55 of the page's pagemap entry. Needs CONFIG_MEM_SOFT_DIRTY.
class SoftDirtyBackend : public DirtyBackend {
 public:
  const char* name() const override { return "soft-dirty"; }
  void Arm(TargetView& target) override;
  void Collect(TargetView& target, DirtyReport& out) override;

 private:
  void ClearRefs(TargetView& target);
  UniqueFd clear_refs_;
  IntervalSet tracked_;
  PresenceMap presence_;
  std::vector<uint64_t> entries_;
  std::vector<PageRange> present_, dirty_, zapped_;
};

}  // namespace remus
