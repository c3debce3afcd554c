// Kernel ABI values newer than Debian 12's headers (linux 6.1): userfaultfd async
// write-protect and the PAGEMAP_SCAN ioctl (linux 6.7). Values are the kernel's UAPI.
#pragma once

#include <cstdint>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>

namespace remus::abi {

constexpr uint64_t kUffdFeatureWpUnpopulated = 1ull << 13;
constexpr uint64_t kUffdFeatureWpAsync = 1ull << 15;

// struct pm_scan_arg (include/uapi/linux/fs.h)
struct PmScanArg {
  uint64_t size;
  uint64_t flags;
  uint64_t start;
  uint64_t end;
  uint64_t walk_end;
  uint64_t vec;
  uint64_t vec_len;
  uint64_t max_pages;
  uint64_t category_inverted;
  uint64_t category_mask;
  uint64_t category_anyof_mask;
  uint64_t return_mask;
};
static_assert(sizeof(PmScanArg) == 96, "pm_scan_arg is twelve u64");

// struct page_region
struct PageRegion {
  uint64_t start;
  uint64_t end;
  uint64_t categories;
};

constexpr unsigned long kPagemapScan = _IOWR('f', 16, PmScanArg);
constexpr uint64_t kPmScanWpMatching = 1ull << 0;
constexpr uint64_t kPmScanCheckWpAsync = 1ull << 1;

constexpr uint64_t kPageIsWpAllowed = 1ull << 0;
constexpr uint64_t kPageIsWritten = 1ull << 1;
constexpr uint64_t kPageIsFile = 1ull << 2;
constexpr uint64_t kPageIsPresent = 1ull << 3;
constexpr uint64_t kPageIsSwapped = 1ull << 4;
constexpr uint64_t kPageIsPfnZero = 1ull << 5;
constexpr uint64_t kPageIsHuge = 1ull << 6;
constexpr uint64_t kPageIsSoftDirty = 1ull << 7;

// /proc/PID/pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst)
constexpr uint64_t kPmPresent = 1ull << 63;
constexpr uint64_t kPmSwapped = 1ull << 62;
constexpr uint64_t kPmFileOrShared = 1ull << 61;
constexpr uint64_t kPmExclusive = 1ull << 56;
constexpr uint64_t kPmSoftDirty = 1ull << 55;

}  // namespace remus::abi
