// /proc/PID/pagemap: reading entries and the pure logic that turns them into ranges.
#pragma once

#include <cstdint>
#include <vector>

#include "memory/ranges.h"

namespace remus {

// Reads the 8-byte pagemap entries for [start, end) into `out`. Returns errno or 0.
int ReadPagemap(int pagemap_fd, uint64_t start, uint64_t end, std::vector<uint64_t>& out);

// Splits entries (one per page from `start`) into runs of pages that have content of
// their own (present or swapped, and not an unmodified page of a file) and runs that
// are soft-dirty as well. A private file mapping's page that was never written is the
// file's: the base image restores it from the file.
// `marker_frame` (when not 0) identifies uffd-wp markers, which are not content.
void ParsePagemap(const uint64_t* entries, uint64_t count, uint64_t start, std::vector<PageRange>* present,
                  std::vector<PageRange>* soft_dirty, uint64_t marker_frame = 0);

// Which pages had content in earlier epochs, to find pages that lost it (zapped).
// Keyed by 64-page chunks so that it costs a bit per page and copes with any layout.
class PresenceMap {
 public:
  // Records presence in [start, end) for this epoch (`present` lies within it) and
  // appends the pages that had content last epoch but have none now to `zapped`.
  void Update(uint64_t start, uint64_t end, const std::vector<PageRange>& present,
              std::vector<PageRange>& zapped);
  // Makes this epoch's records current; memory that was not updated is forgotten.
  void Commit();

 private:
  std::vector<std::pair<uint64_t, uint64_t>> current_;  // sorted (chunk, bits)
  std::vector<std::pair<uint64_t, uint64_t>> next_;
};

}  // namespace remus
