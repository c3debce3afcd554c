#include "dirty/backend.h"

#include "core/caps.h"
#include "dirty/hash_backend.h"
#include "dirty/soft_dirty_backend.h"
#include "dirty/uffd_wp_backend.h"

namespace remus {

BackendChoice ChooseBackend(BackendKind requested) {
  const KernelCaps& caps = GetKernelCaps();
  bool uffd_ok = caps.uffd_wp_async.ok && caps.pagemap_scan.ok && caps.pidfd_getfd.ok;
  std::string uffd_why = !caps.uffd_wp_async.ok ? caps.uffd_wp_async.why
                         : !caps.pagemap_scan.ok ? caps.pagemap_scan.why
                                                 : caps.pidfd_getfd.why;
  switch (requested) {
    case BackendKind::kUffdWp:
      return {BackendKind::kUffdWp, "uffd-wp", uffd_ok ? "requested" : uffd_why, uffd_ok};
    case BackendKind::kSoftDirty:
      return {BackendKind::kSoftDirty, "soft-dirty", caps.soft_dirty.ok ? "requested" : caps.soft_dirty.why,
              caps.soft_dirty.ok};
    case BackendKind::kHash:
      return {BackendKind::kHash, "hash", "requested", true};
    case BackendKind::kAuto:
      break;
  }
  if (uffd_ok)
    return {BackendKind::kUffdWp, "uffd-wp",
            std::string("userfaultfd async write-protect and PAGEMAP_SCAN work: cost is proportional to pages written") +
                (caps.uffd_wp_file.ok ? "" : "; private file mappings are hashed (" + caps.uffd_wp_file.why + ")"),
            true};
  if (caps.soft_dirty.ok)
    return {BackendKind::kSoftDirty, "soft-dirty", "uffd-wp unavailable (" + uffd_why + "); soft-dirty bits work", true};
  return {BackendKind::kHash, "hash",
          "uffd-wp unavailable (" + uffd_why + ") and " + caps.soft_dirty.why +
              ": hashing every page each epoch (slowest, reads all tracked memory)",
          true};
}

std::unique_ptr<DirtyBackend> MakeBackend(BackendKind kind, pid_t) {
  switch (kind) {
    case BackendKind::kUffdWp: return std::make_unique<UffdWpBackend>();
    case BackendKind::kSoftDirty: return std::make_unique<SoftDirtyBackend>();
    case BackendKind::kHash: return std::make_unique<HashBackend>();
    case BackendKind::kAuto: break;
  }
  return nullptr;
}

}  // namespace remus
