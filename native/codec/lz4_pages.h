// Whole pages, LZ4-compressed as one block: the replication stream's page encoding until
// the page-delta codec replaces it. Zero pages are split out first (they travel as an
// address only), the rest are concatenated and compressed as a standard LZ4 block.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace remus {

struct CompressedPages {
  std::vector<uint8_t> addrs;  // u64 LE addresses of the pages in `data`, in order
  std::vector<uint8_t> zeros;  // u64 LE addresses of the pages that are all zeros
  std::vector<uint8_t> data;   // LZ4 block of the non-zero pages, or the pages as they are
  bool compressed = false;     // false when LZ4 did not make them smaller
  uint64_t raw_bytes = 0;      // size of the non-zero pages, decoded
};

// `pages` holds `count` pages of 4096 bytes; `addrs` their `count` addresses.
CompressedPages CompressPages(const uint8_t* pages, const uint64_t* addrs, size_t count);

// Decodes an LZ4 block into exactly `raw_bytes`; returns an error message, empty on
// success. Never writes past `out + raw_bytes`.
std::string DecompressBlock(const uint8_t* src, size_t len, uint8_t* out, size_t raw_bytes);

bool IsZeroPage(const uint8_t* page);

}  // namespace remus
