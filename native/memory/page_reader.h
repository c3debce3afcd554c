// Reading many pages of another process at once.
#pragma once

#include <cstdint>
#include <sys/types.h>
#include <vector>

#include "memory/ranges.h"

namespace remus {

class PageReader {
 public:
  explicit PageReader(pid_t pid);
  // Reads every page of `ranges` into `out` (resized), in order. process_vm_readv does the
  // bulk in batches of IOV_MAX ranges; pages it cannot read (PROT_NONE, a range that just
  // went away) are read through /proc/PID/mem, which may read non-readable mappings.
  // Throws NativeError if a page can be read neither way.
  void Read(const std::vector<PageRange>& ranges, uint8_t* out);

 private:
  void ReadSlow(uint64_t addr, uint64_t len, uint8_t* out);
  pid_t pid_;
  int mem_fd_ = -1;
 public:
  ~PageReader();
  PageReader(const PageReader&) = delete;
  PageReader& operator=(const PageReader&) = delete;
};

}  // namespace remus
