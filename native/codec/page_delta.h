// One page against its previous version: the zero-run-length encoding of their XOR, as
// QEMU's XBZRLE does it (runs of equal bytes are skipped, runs of changed bytes carried),
// and its exact inverse. The format of the runs (docs/wire-format.md, "runs"):
//
//   runs := ( skip:varint  len:varint  bytes[len] )*        len >= 1
//
// `skip` equal bytes, then `len` changed bytes, carried as the NEW bytes (not the XOR: the
// same size, LZ4 compresses them better on real pages, see docs/benchmarks.md, and the
// decoder copies instead of XOR-ing), repeated; the equal tail is implicit. Equal gaps of
// at most kMergeGap bytes between two changed runs are carried inside one run (a
// separate run costs two varint bytes). Varints are LEB128 (7 bits a byte, low first).
//
// Finding the changed bytes: a 4096-bit map (one bit a byte) built 64 bytes at a time
// with AVX2 (or SSE2, chosen at run time: the addon targets generic x86-64), then walked
// with count-trailing-zeros, so an unchanged 64-byte block costs one test.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace remus {

constexpr size_t kCodecPageSize = 4096;
constexpr size_t kMergeGap = 2;  // EncodeOptions::merge_gap default

// Encodes `now` against `before` into `out` (room for `limit` bytes). Returns the length
// (0: the pages are equal), or -1 when the encoding would be `limit` bytes or more (the
// caller then sends the page whole). Never writes at or past out + limit.
long EncodeRuns(const uint8_t* before, const uint8_t* now, uint8_t* out, size_t limit);

// Applies runs to `page` (which holds the previous version) in place. Returns an empty
// string, or what is wrong (a truncated varint, a run past the page end, an empty run,
// trailing bytes). Never writes outside `page`; on error `page` may be partly updated.
std::string ApplyRuns(uint8_t* page, const uint8_t* runs, size_t len);

// Checks runs without applying them: the same errors as ApplyRuns.
std::string CheckRuns(const uint8_t* runs, size_t len);

// Writes the same runs onto `page` as EncodeRuns produced them, for the shadow cache:
// `page` holds `before` and becomes `now`. Only the changed bytes are written.
void PatchFromRuns(uint8_t* page, const uint8_t* runs, size_t len);

// The same with the run bytes carried as XOR (old ^ new) instead of the new bytes: the
// variant the format's flag bit 1 selects (kept for measurement, see docs/benchmarks.md).
long EncodeRunsMode(const uint8_t* before, const uint8_t* now, uint8_t* out, size_t limit, bool xor_bytes,
                    size_t merge_gap = kMergeGap);
// With page == nullptr only validates (CheckRuns).
std::string ApplyRunsMode(uint8_t* page, const uint8_t* runs, size_t len, bool xor_bytes);
void PatchFromRunsMode(uint8_t* page, const uint8_t* runs, size_t len, bool xor_bytes);

bool IsZeroPageFast(const uint8_t* page);

// "avx2" or "sse2": which diff implementation runs here.
const char* DiffImplementation();

// LEB128. PutVarint needs 10 bytes of room; GetVarint returns false on a truncated or
// over-long (more than 10 bytes, or above 2^64) varint.
inline size_t PutVarint(uint8_t* p, uint64_t v) {
  size_t n = 0;
  while (v >= 0x80) {
    p[n++] = static_cast<uint8_t>(v) | 0x80;
    v >>= 7;
  }
  p[n++] = static_cast<uint8_t>(v);
  return n;
}

inline size_t VarintSize(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

inline bool GetVarint(const uint8_t*& p, const uint8_t* end, uint64_t* v) {
  uint64_t r = 0;
  for (unsigned shift = 0; shift < 64; shift += 7) {
    if (p >= end) return false;
    uint8_t b = *p++;
    if (shift == 63 && b > 1) return false;  // above 2^64
    r |= static_cast<uint64_t>(b & 0x7f) << shift;
    if (!(b & 0x80)) {
      *v = r;
      return true;
    }
  }
  return false;
}

}  // namespace remus
