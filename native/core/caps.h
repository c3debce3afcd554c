// Kernel capabilities, probed once per process by really exercising each feature
// (reading a config file is not proof: this project's kernels accept clear_refs=4
// without CONFIG_MEM_SOFT_DIRTY, for example).
#pragma once

#include <cstddef>
#include <string>

namespace remus {

struct Feature {
  bool ok = false;
  std::string why;  // why it is unavailable, or a note when available
};

struct KernelCaps {
  std::string release;       // uname -r
  Feature userfaultfd;       // userfaultfd(2) usable by this process
  Feature uffd_wp_async;     // UFFD_FEATURE_WP_ASYNC + WP_UNPOPULATED, register + scan work
  Feature pagemap_scan;      // PAGEMAP_SCAN ioctl with PM_SCAN_WP_MATCHING
  Feature uffd_wp_file;      // async WP accepted on a private file-backed mapping
  Feature soft_dirty;        // clear_refs=4 + pagemap bit 55 really report a write
  Feature pidfd_getfd;       // pidfd_open + pidfd_getfd exist
  Feature ptrace;            // this process may ptrace others (capability + yama)
  size_t xsave_size = 0;     // bytes of the XSAVE area (CPUID 0xD), for NT_X86_XSTATE
  // The swap-entry field (bits 0-54) of a uffd-wp marker in /proc/PID/pagemap: markers
  // (never-populated, write-protected pages) read as "swapped" there. 0 when the field
  // is hidden (no CAP_SYS_ADMIN); markers then count as pages with content (zeros).
  uint64_t uffd_marker_frame = 0;
};

// Probes on first call, then returns the cached result. Thread-safe.
const KernelCaps& GetKernelCaps();

}  // namespace remus
