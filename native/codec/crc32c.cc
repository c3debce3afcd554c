#include "codec/crc32c.h"

#include <cstring>
#include <nmmintrin.h>

namespace remus {
namespace {

constexpr uint32_t kPoly = 0x82f63b78;  // CRC-32C, reflected

// GF(2) 32x32 matrices as 32 columns: the operator that feeds zero bytes to a CRC state.
using Op = uint32_t[32];

uint32_t MatTimes(const uint32_t* mat, uint32_t vec) {
  uint32_t sum = 0;
  for (; vec; vec >>= 1, ++mat)
    if (vec & 1) sum ^= *mat;
  return sum;
}

void MatMul(uint32_t* out, const uint32_t* a, const uint32_t* b) {  // out = a after b
  uint32_t t[32];
  for (int n = 0; n < 32; ++n) t[n] = MatTimes(a, b[n]);
  memcpy(out, t, sizeof t);
}

// The operator for `len` zero bytes, by square-and-multiply.
void ZerosOp(uint32_t* op, size_t len) {
  uint32_t base[32];
  base[0] = kPoly;  // one zero bit
  for (int n = 1; n < 32; ++n) base[n] = 1u << (n - 1);
  for (int i = 0; i < 3; ++i) MatMul(base, base, base);  // eight zero bits: one byte
  for (int n = 0; n < 32; ++n) op[n] = 1u << n;           // identity
  while (len) {
    if (len & 1) MatMul(op, base, op);
    MatMul(base, base, base);
    len >>= 1;
  }
}

struct ShiftTable {
  uint32_t t[4][256];
  void Build(size_t len) {
    uint32_t op[32];
    ZerosOp(op, len);
    for (uint32_t n = 0; n < 256; ++n) {
      t[0][n] = MatTimes(op, n);
      t[1][n] = MatTimes(op, n << 8);
      t[2][n] = MatTimes(op, n << 16);
      t[3][n] = MatTimes(op, n << 24);
    }
  }
  uint32_t Apply(uint32_t crc) const {
    return t[0][crc & 0xff] ^ t[1][(crc >> 8) & 0xff] ^ t[2][(crc >> 16) & 0xff] ^ t[3][crc >> 24];
  }
};

// Lane lengths of the interleaved hardware loop.
constexpr size_t kLong = 8192;
constexpr size_t kShort = 256;
constexpr size_t kPageLane = 1360;  // 3 x 1360 = 4080: a page is three lanes and 16 bytes

struct Tables {
  uint32_t byte[8][256];
  ShiftTable long_shift, short_shift, page_shift;
  bool hw = false;
  Tables() {
    for (uint32_t n = 0; n < 256; ++n) {
      uint32_t c = n;
      for (int k = 0; k < 8; ++k) c = c & 1 ? (c >> 1) ^ kPoly : c >> 1;
      byte[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; ++n)
      for (int k = 1; k < 8; ++k) byte[k][n] = (byte[k - 1][n] >> 8) ^ byte[0][byte[k - 1][n] & 0xff];
    long_shift.Build(kLong);
    short_shift.Build(kShort);
    page_shift.Build(kPageLane);
    __builtin_cpu_init();
    hw = __builtin_cpu_supports("sse4.2");
  }
};

const Tables& T() {
  static const Tables tables;
  return tables;
}

uint32_t SoftRaw(uint32_t crc, const uint8_t* p, size_t len, const Tables& t) {
  while (len && (reinterpret_cast<uintptr_t>(p) & 7)) {
    crc = t.byte[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    --len;
  }
  while (len >= 8) {
    uint64_t w;
    memcpy(&w, p, 8);
    w ^= crc;
    crc = t.byte[7][w & 0xff] ^ t.byte[6][(w >> 8) & 0xff] ^ t.byte[5][(w >> 16) & 0xff] ^ t.byte[4][(w >> 24) & 0xff] ^
          t.byte[3][(w >> 32) & 0xff] ^ t.byte[2][(w >> 40) & 0xff] ^ t.byte[1][(w >> 48) & 0xff] ^ t.byte[0][w >> 56];
    p += 8;
    len -= 8;
  }
  while (len--) crc = t.byte[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
  return crc;
}

inline uint64_t Load64(const uint8_t* p) {
  uint64_t w;
  memcpy(&w, p, 8);
  return w;
}

// Three lanes of `lane` bytes each, joined: returns the raw state after 3 * lane bytes.
__attribute__((target("sse4.2"))) inline uint64_t ThreeLanes(uint64_t crc0, const uint8_t* p, size_t lane,
                                                             const ShiftTable& shift) {
  uint64_t crc1 = 0, crc2 = 0;
  const uint8_t* end = p + lane;
  do {
    crc0 = _mm_crc32_u64(crc0, Load64(p));
    crc1 = _mm_crc32_u64(crc1, Load64(p + lane));
    crc2 = _mm_crc32_u64(crc2, Load64(p + 2 * lane));
    p += 8;
  } while (p < end);
  crc0 = shift.Apply(static_cast<uint32_t>(crc0)) ^ crc1;
  crc0 = shift.Apply(static_cast<uint32_t>(crc0)) ^ crc2;
  return crc0;
}

__attribute__((target("sse4.2"))) uint32_t HardRaw(uint32_t crc32, const uint8_t* p, size_t len, const Tables& t) {
  uint64_t crc = crc32;
  while (len && (reinterpret_cast<uintptr_t>(p) & 7)) {
    crc = _mm_crc32_u8(static_cast<uint32_t>(crc), *p++);
    --len;
  }
  while (len >= 3 * kLong) {
    crc = ThreeLanes(crc, p, kLong, t.long_shift);
    p += 3 * kLong;
    len -= 3 * kLong;
  }
  while (len >= 3 * kShort) {
    crc = ThreeLanes(crc, p, kShort, t.short_shift);
    p += 3 * kShort;
    len -= 3 * kShort;
  }
  while (len >= 8) {
    crc = _mm_crc32_u64(crc, Load64(p));
    p += 8;
    len -= 8;
  }
  while (len--) crc = _mm_crc32_u8(static_cast<uint32_t>(crc), *p++);
  return static_cast<uint32_t>(crc);
}

__attribute__((target("sse4.2"))) uint32_t HardPage(const uint8_t* p, const Tables& t) {
  uint64_t crc = ThreeLanes(0xffffffffu, p, kPageLane, t.page_shift);
  crc = _mm_crc32_u64(crc, Load64(p + 3 * kPageLane));
  crc = _mm_crc32_u64(crc, Load64(p + 3 * kPageLane + 8));
  return ~static_cast<uint32_t>(crc);
}

// The page path with a copy fused in: every 8-byte word is loaded once, checksummed and
// stored, so the checksum is of exactly what was written.
__attribute__((target("sse4.2"))) uint32_t HardPageCopy(uint8_t* dst, const uint8_t* src, const Tables& t) {
  constexpr size_t L = kPageLane;
  uint64_t c0 = 0xffffffffu, c1 = 0, c2 = 0;
  for (size_t i = 0; i < L; i += 8) {
    uint64_t w0 = Load64(src + i), w1 = Load64(src + L + i), w2 = Load64(src + 2 * L + i);
    c0 = _mm_crc32_u64(c0, w0);
    c1 = _mm_crc32_u64(c1, w1);
    c2 = _mm_crc32_u64(c2, w2);
    memcpy(dst + i, &w0, 8);
    memcpy(dst + L + i, &w1, 8);
    memcpy(dst + 2 * L + i, &w2, 8);
  }
  c0 = t.page_shift.Apply(static_cast<uint32_t>(c0)) ^ c1;
  c0 = t.page_shift.Apply(static_cast<uint32_t>(c0)) ^ c2;
  for (size_t i = 3 * L; i < 4096; i += 8) {
    uint64_t w = Load64(src + i);
    c0 = _mm_crc32_u64(c0, w);
    memcpy(dst + i, &w, 8);
  }
  return ~static_cast<uint32_t>(c0);
}

}  // namespace

uint32_t Crc32cPageCopy(uint8_t* dst, const uint8_t* src) {
  const Tables& t = T();
  if (t.hw) return HardPageCopy(dst, src, t);
  memcpy(dst, src, 4096);
  return ~SoftRaw(~0u, dst, 4096, t);
}

uint32_t Crc32c(uint32_t crc, const void* data, size_t len) {
  const Tables& t = T();
  const uint8_t* p = static_cast<const uint8_t*>(data);
  return ~(t.hw ? HardRaw(~crc, p, len, t) : SoftRaw(~crc, p, len, t));
}

uint32_t Crc32cPortable(uint32_t crc, const void* data, size_t len) {
  return ~SoftRaw(~crc, static_cast<const uint8_t*>(data), len, T());
}

uint32_t Crc32cPage(const uint8_t* page) {
  const Tables& t = T();
  return t.hw ? HardPage(page, t) : ~SoftRaw(~0u, page, 4096, t);
}

const char* Crc32cImplementation() { return T().hw ? "sse4.2" : "portable"; }

}  // namespace remus
