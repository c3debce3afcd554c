#include "core/uffd.h"

#include <cerrno>
#include <memory>
#include <sys/ioctl.h>

namespace remus::uffd {

int EnableAsyncWp(int fd) {
  struct uffdio_api api = {};
  api.api = UFFD_API;
  api.features = abi::kUffdFeatureWpAsync | abi::kUffdFeatureWpUnpopulated;
  if (ioctl(fd, UFFDIO_API, &api) != 0) return errno;
  return 0;
}

int Register(int fd, uint64_t start, uint64_t len) {
  struct uffdio_register reg = {};
  reg.range.start = start;
  reg.range.len = len;
  reg.mode = UFFDIO_REGISTER_MODE_WP;
  if (ioctl(fd, UFFDIO_REGISTER, &reg) != 0) return errno;
  return 0;
}

int Protect(int fd, uint64_t start, uint64_t len) {
  struct uffdio_writeprotect wp = {};
  wp.range.start = start;
  wp.range.len = len;
  wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
  if (ioctl(fd, UFFDIO_WRITEPROTECT, &wp) != 0) return errno;
  return 0;
}

int Unregister(int fd, uint64_t start, uint64_t len) {
  struct uffdio_range range = {start, len};
  if (ioctl(fd, UFFDIO_UNREGISTER, &range) != 0) return errno;
  return 0;
}

int Scan(int pagemap_fd, uint64_t start, uint64_t end, uint64_t flags, uint64_t category_mask,
         uint64_t category_inverted, uint64_t anyof_mask, uint64_t return_mask,
         std::vector<abi::PageRegion>& out) {
  // The kernel fills at most vec_len regions per call and reports where it stopped in
  // walk_end; keep calling from there. A fixed chunk keeps the buffer warm.
  constexpr size_t kChunk = 4096;
  // The kernel writes into a scratch array that is never zeroed: resizing `out` by kChunk
  // value-initialised 96 KiB per call, and the tracker calls this once per mapping while
  // the target is frozen (~4 MB of zeroing an epoch for a process of a hundred mappings).
  thread_local std::unique_ptr<abi::PageRegion[]> scratch(new abi::PageRegion[kChunk]);
  uint64_t pos = start;
  while (pos < end) {
    abi::PmScanArg arg = {};
    arg.size = sizeof(arg);
    arg.flags = flags;
    arg.start = pos;
    arg.end = end;
    arg.vec = reinterpret_cast<uint64_t>(scratch.get());
    arg.vec_len = kChunk;
    arg.category_mask = category_mask;
    arg.category_inverted = category_inverted;
    arg.category_anyof_mask = anyof_mask;
    arg.return_mask = return_mask;
    long n = ioctl(pagemap_fd, abi::kPagemapScan, &arg);
    if (n < 0) return errno;
    out.insert(out.end(), scratch.get(), scratch.get() + n);
    if (arg.walk_end <= pos) return EIO;  // no progress: never spin
    pos = arg.walk_end;
  }
  return 0;
}

}  // namespace remus::uffd
