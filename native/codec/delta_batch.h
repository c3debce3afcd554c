// The page-delta batch: the `data` of a `pages` message with codec 'delta'. This header
// owns the format (docs/wire-format.md repeats it with the reasons).
//
// FORMAT VERSION 1. All integers little-endian; varints are LEB128 (7 bits a byte, low
// bits first, at most 10 bytes).
//
//    0       1       2       3       4       5       6       7
//   +-------+-------+-------+-------+-------+-------+-------+-------+
//   | 'R'   | 'D'   | ver=1 | flags |          count (u32)          |
//   +-------+-------+-------+-------+-------+-------+-------+-------+
//   |        body_len (u32)         |          crc (u32)            |
//   +-------+-------+-------+-------+-------+-------+-------+-------+
//   | payload: the body as it is (flags bit 0 clear: body_len bytes), or one standard LZ4
//   | block (LZ4_compress_default / LZ4_decompress_safe) that decodes to exactly
//   | body_len bytes (flags bit 0 set); nothing may follow it
//   +-----------------------------------------------------------------
//
//   flags   bit 0: payload is LZ4; bit 1: delta runs carry old^new instead of the new
//           bytes (the encoder never sets it; kept for measurement); other bits: 0
//   count   entries (pages) in the body, at most kMaxBatchPages
//   crc     CRC-32C of header bytes 0..11 followed by the decoded body: catches damage
//           anywhere, including inside the LZ4 block
//
//   body := entry{count}                         (exactly body_len bytes)
//   entry := head:varint  [payload by kind]
//     head = zigzag(pn - prev_pn) << 2 | kind    pn = address >> 12; prev_pn = the
//                                                previous entry's, 0 for the first
//     kind 0 ZERO   the page is all zeros: nothing follows
//     kind 1 FULL   4096 bytes: the page
//     kind 2 DELTA  base_crc:u32  len:varint  runs[len]
//                   base_crc: CRC-32C of the 4096 bytes the delta applies to (the version
//                   the primary last sent): the version check; the decoder refuses the
//                   batch when the standby's page has another checksum
//                   runs: see page_delta.h; 0 <= len, and 4 + varint(len) + len < 4096
//                   (a delta is smaller than the page, else the page goes FULL)
//     kind 3        invalid
//
// A page number must stay below 2^52 (64-bit addresses). Entries may repeat a page (the
// encoder sends a repeat FULL); the decoder reports entries in order.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "codec/large_buffer.h"
#include "codec/shadow_cache.h"

namespace remus {

constexpr uint8_t kDeltaMagic0 = 'R';
constexpr uint8_t kDeltaMagic1 = 'D';
constexpr uint8_t kDeltaVersion = 1;
constexpr size_t kDeltaHeaderBytes = 16;
constexpr uint8_t kFlagLz4 = 1;
constexpr uint8_t kFlagXorRuns = 2;
constexpr size_t kMaxBatchPages = 65536;  // MESSAGE_LIMITS.maxPagesPerMessage
constexpr uint64_t kMaxPageNumber = 1ull << 52;
enum EntryKind : uint8_t { kZero = 0, kFull = 1, kDelta = 2 };

struct EncodeOptions {
  bool xor_runs = false;   // flag bit 1 (measurement only)
  bool compress = true;    // try LZ4 on the body
  size_t merge_gap = 2;    // see page_delta.h (measurement)
};

struct EncodeStats {
  uint32_t pages = 0, zero = 0, full = 0, delta = 0, unchanged = 0;  // unchanged: a DELTA of length 0
  uint32_t hits = 0, misses = 0, evictions = 0;
  uint64_t body_bytes = 0, wire_bytes = 0, delta_bytes = 0;  // delta_bytes: runs carried by DELTA entries
  bool compressed = false;
};

struct OwnedBytes {
  LargeBuffer data;
  size_t size = 0;
};

// Encodes `count` pages (4096 bytes each, at `pages`) at `addrs` against `cache` and
// updates the cache to the new versions (FULL pages are inserted, DELTA pages patched,
// ZERO pages forgotten). Returns "" or what is wrong with the input (then the cache is
// unchanged).
std::string EncodeBatch(ShadowCache& cache, const uint64_t* addrs, const uint8_t* pages, size_t count,
                        const EncodeOptions& options, OwnedBytes* out, EncodeStats* stats);

// A batch that passed every structural check: the body is decoded into native memory
// that the caller cannot touch, and every entry's bounds are known.
struct ParsedBatch {
  struct Entry {
    uint64_t addr;
    uint32_t offset;   // of the page (FULL) or of the runs (DELTA) in body
    uint32_t len;      // runs length (DELTA)
    uint32_t base_crc; // DELTA
    uint32_t slot;     // FULL, DELTA: index among the pages with data (entry order)
    uint8_t kind;
  };
  uint8_t flags = 0;
  LargeBuffer body;
  size_t body_len = 0;
  std::vector<Entry> entries;
  size_t full = 0, delta = 0, zero = 0;
};

// Checks everything that can be checked without the base pages: magic, version, flags,
// count, body_len, the LZ4 block, the CRC, every entry and every run. Returns "" or what
// is wrong. Reads only data[0, len); writes only `out`.
std::string ParseBatch(const uint8_t* data, size_t len, ParsedBatch* out, size_t max_pages = kMaxBatchPages);

struct DecodedBatch {
  std::vector<uint64_t> addrs;  // pages with data (FULL and DELTA), in entry order
  std::vector<uint64_t> zeros;  // ZERO pages, in entry order
};

// Applies a parsed batch: `bases` holds batch.delta pages (the standby's version of each
// DELTA page, in entry order; zeros where it has none), `bases_len` bytes; the pages with
// data are written to `pages`, which must hold (batch.full + batch.delta) x 4096 bytes.
// Returns "" or what is wrong (a base of the wrong size; a base whose checksum is not the
// one the delta was made against: which page, both checksums). Writes only `pages` and
// `out`.
std::string ApplyBatch(const ParsedBatch& batch, const uint8_t* bases, size_t bases_len, uint8_t* pages, DecodedBatch* out);

// The same in place: `pages` holds (batch.full + batch.delta) x 4096 bytes where the slot
// of each DELTA entry (Entry::slot) already holds its base; the FULL pages are copied into
// their slots and each DELTA base is checked and patched where it is (no second copy of
// the page). `pages_len` must match. Writes only `pages` and `out`; on error `pages` is
// partly written.
std::string ApplyBatchInPlace(const ParsedBatch& batch, uint8_t* pages, size_t pages_len, DecodedBatch* out);

}  // namespace remus
