// CRC-32C (Castagnoli, the polynomial of iSCSI and ext4; reflected, initial and final
// value ~0), the checksum of the page-delta codec. With SSE4.2 (chosen at run time, the
// addon is built for generic x86-64) it runs three interleaved `crc32` streams and joins
// them with precomputed shift tables (Mark Adler's method): one `crc32` a cycle, a page
// in about 200 ns on the 2.45 GHz EPYC this was measured on; otherwise a portable
// slice-by-8 table version. Whole pages (the version check of every delta) go faster where
// the CPU has AVX2 and VPCLMULQDQ: carry-less folding on the vector unit over part of the
// page while `crc32` runs on the rest (~120 ns a page on that machine). Folding alone was
// no faster than `crc32` there (a 128-bit version took 360 ns a page); the gain is from
// running both units at once.
#pragma once

#include <cstddef>
#include <cstdint>

namespace remus {

// CRC-32C of `len` bytes, continuing from `crc` (0 to start), zlib style: Crc32c(Crc32c(0,
// a), b) == Crc32c(0, a + b).
uint32_t Crc32c(uint32_t crc, const void* data, size_t len);

// The portable version (tests compare both).
uint32_t Crc32cPortable(uint32_t crc, const void* data, size_t len);

// CRC-32C of exactly one 4096-byte page (a path tuned for that length).
uint32_t Crc32cPage(const uint8_t* page);

// Copies a page from `src` to `dst` and returns the CRC-32C of what it wrote (one pass).
// `next`, when given, is the page the caller will copy next: it is prefetched meanwhile
// (a sequential prefetcher stops at page boundaries).
uint32_t Crc32cPageCopy(uint8_t* dst, const uint8_t* src, const uint8_t* next = nullptr);

// The page path without the vector unit (tests compare it with the others).
uint32_t Crc32cPageSse42(const uint8_t* page);

// Which implementation the page path uses: "vpclmulqdq+sse4.2", "sse4.2" or "portable"
// (Crc32c of other lengths uses `crc32` alone when the first two).
const char* Crc32cImplementation();

}  // namespace remus
