#include "codec/page_delta.h"

#include <cstring>
#include <immintrin.h>

namespace remus {
namespace {

// bit b of map[w] set: byte 64 w + b differs. Returns a summary: bit w set when map[w] != 0.
using DiffFn = uint64_t (*)(const uint8_t* a, const uint8_t* b, uint64_t* map);
using ZeroFn = bool (*)(const uint8_t* p);

uint64_t DiffSse2(const uint8_t* a, const uint8_t* b, uint64_t* map) {
  uint64_t summary = 0;
  for (size_t w = 0; w < 64; ++w) {
    const __m128i* pa = reinterpret_cast<const __m128i*>(a + 64 * w);
    const __m128i* pb = reinterpret_cast<const __m128i*>(b + 64 * w);
    uint64_t eq0 = static_cast<uint32_t>(_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_loadu_si128(pa), _mm_loadu_si128(pb))));
    uint64_t eq1 = static_cast<uint32_t>(_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_loadu_si128(pa + 1), _mm_loadu_si128(pb + 1))));
    uint64_t eq2 = static_cast<uint32_t>(_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_loadu_si128(pa + 2), _mm_loadu_si128(pb + 2))));
    uint64_t eq3 = static_cast<uint32_t>(_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_loadu_si128(pa + 3), _mm_loadu_si128(pb + 3))));
    uint64_t d = ~(eq0 | eq1 << 16 | eq2 << 32 | eq3 << 48);
    map[w] = d;
    summary |= static_cast<uint64_t>(d != 0) << w;
  }
  return summary;
}

__attribute__((target("avx2"))) uint64_t DiffAvx2(const uint8_t* a, const uint8_t* b, uint64_t* map) {
  uint64_t summary = 0;
  for (size_t w = 0; w < 64; w += 2) {
    // Two 64-byte blocks: first a cheap "any difference" test, the masks only when needed
    // (most blocks of a sparsely changed page are equal).
    const __m256i* pa = reinterpret_cast<const __m256i*>(a + 64 * w);
    const __m256i* pb = reinterpret_cast<const __m256i*>(b + 64 * w);
    __m256i x0 = _mm256_xor_si256(_mm256_loadu_si256(pa), _mm256_loadu_si256(pb));
    __m256i x1 = _mm256_xor_si256(_mm256_loadu_si256(pa + 1), _mm256_loadu_si256(pb + 1));
    __m256i x2 = _mm256_xor_si256(_mm256_loadu_si256(pa + 2), _mm256_loadu_si256(pb + 2));
    __m256i x3 = _mm256_xor_si256(_mm256_loadu_si256(pa + 3), _mm256_loadu_si256(pb + 3));
    __m256i any = _mm256_or_si256(_mm256_or_si256(x0, x1), _mm256_or_si256(x2, x3));
    if (_mm256_testz_si256(any, any)) {
      map[w] = map[w + 1] = 0;
      continue;
    }
    const __m256i zero = _mm256_setzero_si256();
    uint64_t e0 = static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(x0, zero)));
    uint64_t e1 = static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(x1, zero)));
    uint64_t e2 = static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(x2, zero)));
    uint64_t e3 = static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(x3, zero)));
    uint64_t d0 = ~(e0 | e1 << 32), d1 = ~(e2 | e3 << 32);
    map[w] = d0;
    map[w + 1] = d1;
    summary |= (static_cast<uint64_t>(d0 != 0) | static_cast<uint64_t>(d1 != 0) << 1) << w;
  }
  return summary;
}

bool ZeroSse2(const uint8_t* p) {
  for (size_t i = 0; i < kCodecPageSize; i += 128) {
    const __m128i* v = reinterpret_cast<const __m128i*>(p + i);
    __m128i o = _mm_or_si128(_mm_or_si128(_mm_or_si128(_mm_loadu_si128(v), _mm_loadu_si128(v + 1)),
                                          _mm_or_si128(_mm_loadu_si128(v + 2), _mm_loadu_si128(v + 3))),
                             _mm_or_si128(_mm_or_si128(_mm_loadu_si128(v + 4), _mm_loadu_si128(v + 5)),
                                          _mm_or_si128(_mm_loadu_si128(v + 6), _mm_loadu_si128(v + 7))));
    if (_mm_movemask_epi8(_mm_cmpeq_epi8(o, _mm_setzero_si128())) != 0xffff) return false;
  }
  return true;
}

__attribute__((target("avx2"))) bool ZeroAvx2(const uint8_t* p) {
  for (size_t i = 0; i < kCodecPageSize; i += 256) {
    const __m256i* v = reinterpret_cast<const __m256i*>(p + i);
    __m256i o = _mm256_or_si256(
        _mm256_or_si256(_mm256_or_si256(_mm256_loadu_si256(v), _mm256_loadu_si256(v + 1)),
                        _mm256_or_si256(_mm256_loadu_si256(v + 2), _mm256_loadu_si256(v + 3))),
        _mm256_or_si256(_mm256_or_si256(_mm256_loadu_si256(v + 4), _mm256_loadu_si256(v + 5)),
                        _mm256_or_si256(_mm256_loadu_si256(v + 6), _mm256_loadu_si256(v + 7))));
    if (!_mm256_testz_si256(o, o)) return false;
  }
  return true;
}

struct Dispatch {
  DiffFn diff;
  ZeroFn zero;
  bool avx2;
  Dispatch() {
    __builtin_cpu_init();
    avx2 = __builtin_cpu_supports("avx2");
    diff = avx2 ? DiffAvx2 : DiffSse2;
    zero = avx2 ? ZeroAvx2 : ZeroSse2;
  }
};

const Dispatch& D() {
  static const Dispatch d;
  return d;
}

// First differing byte at or after `from` (< 4096), or 4096.
inline size_t NextSet(const uint64_t* map, uint64_t summary, size_t from) {
  size_t w = from >> 6;
  uint64_t bits = map[w] & (~0ull << (from & 63));
  if (bits) return (w << 6) + static_cast<size_t>(__builtin_ctzll(bits));
  uint64_t rest = w == 63 ? 0 : summary & (~0ull << (w + 1));
  if (!rest) return kCodecPageSize;
  w = static_cast<size_t>(__builtin_ctzll(rest));
  return (w << 6) + static_cast<size_t>(__builtin_ctzll(map[w]));
}

// First equal byte at or after `from` (< 4096), or 4096.
inline size_t NextClear(const uint64_t* map, size_t from) {
  size_t w = from >> 6;
  uint64_t bits = ~map[w] & (~0ull << (from & 63));
  while (!bits) {
    if (++w == 64) return kCodecPageSize;
    bits = ~map[w];
  }
  return (w << 6) + static_cast<size_t>(__builtin_ctzll(bits));
}

}  // namespace

long EncodeRunsMode(const uint8_t* before, const uint8_t* now, uint8_t* out, size_t limit, bool xor_bytes,
                    size_t merge_gap) {
  alignas(64) uint64_t map[64];
  uint64_t summary = D().diff(before, now, map);
  if (!summary) return 0;
  size_t o = 0, prev_end = 0;
  size_t s = NextSet(map, summary, 0);
  while (s < kCodecPageSize) {
    size_t e = NextClear(map, s);
    size_t next = kCodecPageSize;
    while (e < kCodecPageSize) {
      next = NextSet(map, summary, e);
      if (next >= kCodecPageSize || next - e > merge_gap) break;
      e = NextClear(map, next);
      next = kCodecPageSize;
    }
    size_t skip = s - prev_end, len = e - s;
    size_t need = VarintSize(skip) + VarintSize(len) + len;
    if (o + need >= limit) return -1;
    o += PutVarint(out + o, skip);
    o += PutVarint(out + o, len);
    if (xor_bytes) {
      for (size_t i = 0; i < len; ++i) out[o + i] = before[s + i] ^ now[s + i];
    } else {
      memcpy(out + o, now + s, len);
    }
    o += len;
    prev_end = e;
    s = next;
  }
  return static_cast<long>(o);
}

long EncodeRuns(const uint8_t* before, const uint8_t* now, uint8_t* out, size_t limit) {
  return EncodeRunsMode(before, now, out, limit, false);
}

std::string ApplyRunsMode(uint8_t* page, const uint8_t* runs, size_t len, bool xor_bytes) {
  const uint8_t* p = runs;
  const uint8_t* end = runs + len;
  size_t pos = 0;
  while (p < end) {
    uint64_t skip, n;
    if (!GetVarint(p, end, &skip)) return "truncated run (skip length)";
    if (skip > kCodecPageSize - pos) return "run starts past the page end";
    pos += skip;
    if (!GetVarint(p, end, &n)) return "truncated run (run length)";
    if (n == 0) return "empty run";
    if (n > kCodecPageSize - pos) return "run ends past the page end";
    if (n > static_cast<size_t>(end - p)) return "run data truncated";
    if (page == nullptr) {
      // CheckRuns: validation only.
    } else if (xor_bytes) {
      for (size_t i = 0; i < n; ++i) page[pos + i] ^= p[i];
    } else {
      memcpy(page + pos, p, n);
    }
    p += n;
    pos += n;
  }
  return "";
}

std::string ApplyRuns(uint8_t* page, const uint8_t* runs, size_t len) { return ApplyRunsMode(page, runs, len, false); }

std::string CheckRuns(const uint8_t* runs, size_t len) { return ApplyRunsMode(nullptr, runs, len, false); }

void PatchFromRunsMode(uint8_t* page, const uint8_t* runs, size_t len, bool xor_bytes) {
  const uint8_t* p = runs;
  const uint8_t* end = runs + len;
  size_t pos = 0;
  while (p < end) {
    uint64_t skip = 0, n = 0;
    GetVarint(p, end, &skip);
    pos += skip;
    GetVarint(p, end, &n);
    if (xor_bytes) {
      for (size_t i = 0; i < n; ++i) page[pos + i] ^= p[i];
    } else {
      memcpy(page + pos, p, n);
    }
    p += n;
    pos += n;
  }
}

void PatchFromRuns(uint8_t* page, const uint8_t* runs, size_t len) { PatchFromRunsMode(page, runs, len, false); }

bool IsZeroPageFast(const uint8_t* page) { return D().zero(page); }

const char* DiffImplementation() { return D().avx2 ? "avx2" : "sse2"; }

}  // namespace remus
