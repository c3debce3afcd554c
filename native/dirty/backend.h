// Dirty-page tracking: one interface, several backends (uffd-wp, soft-dirty, hash).
//
//   Arm()      target frozen; start tracking. Pages written from now on will be reported.
//   Collect()  target frozen; report pages written since the previous Collect (or Arm),
//              and re-arm, atomically with respect to the target (it is stopped).
//
// Every backend reports, besides written pages:
//   - pages of memory that became tracked since the last call (a new or grown mapping,
//     one made writable): every page of it that has content ("new" pages);
//   - pages that had content and now have none (MADV_DONTNEED, which no write-tracking
//     mechanism sees): they read as zeros now ("zapped" pages).
// Never-touched pages of a new mapping are not reported: the layout implies they are zero.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <sys/types.h>
#include <vector>

#include "core/proc.h"
#include "memory/ranges.h"

namespace remus {

class Freezer;
class RemoteSyscall;
class PageReader;

// What a backend may use of the frozen target.
struct TargetView {
  pid_t pid;
  const std::vector<Vma>& vmas;
  Freezer& freezer;
  RemoteSyscall& remote;
  PageReader& reader;
  int pagemap_fd;  // /proc/PID/pagemap
};

struct DirtyReport {
  std::vector<PageRange> ranges;  // every page to send (written + new + zapped), unsorted
  uint64_t pages_written = 0;
  uint64_t pages_new = 0;
  uint64_t pages_zapped = 0;
  uint64_t pages_hashed = 0;  // pages read and hashed to find the written ones
  void Add(uint64_t start, uint64_t npages, uint64_t& counter) {
    if (npages == 0) return;
    ranges.push_back({start, npages});
    counter += npages;
  }
};

class DirtyBackend {
 public:
  virtual ~DirtyBackend() = default;
  virtual const char* name() const = 0;
  virtual void Arm(TargetView& target) = 0;
  virtual void Collect(TargetView& target, DirtyReport& out) = 0;
};

enum class BackendKind { kAuto, kUffdWp, kSoftDirty, kHash };

struct BackendChoice {
  BackendKind kind;
  std::string name;
  std::string reason;  // why auto chose it, or why a requested one is unavailable
  bool available;
};

// Resolves a requested backend against the kernel's capabilities.
BackendChoice ChooseBackend(BackendKind requested);
std::unique_ptr<DirtyBackend> MakeBackend(BackendKind kind, pid_t pid);

// Memory that replication copies and tracks: private mappings, other than the vDSO & co.
// Writable ones are armed when they appear; once armed, a range stays tracked while it
// stays mapped, even if it is made read-only or PROT_NONE (writes made before the
// mprotect must still be reported).
inline bool StartsTracking(const Vma& v) { return v.private_memory() && v.writable(); }

}  // namespace remus
