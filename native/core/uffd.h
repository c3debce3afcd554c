// Thin helpers over userfaultfd in async write-protect mode, shared by the probe and
// the uffd-wp backend.
#pragma once

#include <cstdint>
#include <vector>

#include "core/kernel_abi.h"
#include "core/unique_fd.h"

namespace remus::uffd {

// UFFDIO_API with WP_ASYNC | WP_UNPOPULATED. Returns errno or 0.
int EnableAsyncWp(int fd);
// UFFDIO_REGISTER (mode WP) of a range; UFFDIO_WRITEPROTECT of a range. Return errno or 0.
// Register whole mappings: registering part of one splits it.
int Register(int fd, uint64_t start, uint64_t len);
int Protect(int fd, uint64_t start, uint64_t len);
inline int RegisterAndProtect(int fd, uint64_t start, uint64_t len) {
  int e = Register(fd, start, len);
  return e ? e : Protect(fd, start, len);
}
int Unregister(int fd, uint64_t start, uint64_t len);

// One PAGEMAP_SCAN call loop over [start, end) on `pagemap_fd`. Appends regions to `out`.
// Returns errno or 0.
int Scan(int pagemap_fd, uint64_t start, uint64_t end, uint64_t flags, uint64_t category_mask,
         uint64_t category_inverted, uint64_t anyof_mask, uint64_t return_mask,
         std::vector<abi::PageRegion>& out);

}  // namespace remus::uffd
