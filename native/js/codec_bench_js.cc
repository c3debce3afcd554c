#include "js/codec_bench_js.h"

#include <cstring>
#include <lz4.h>
#include <memory>
#include <string>
#include <time.h>
#include <vector>

namespace remus {
namespace {

constexpr size_t kPage = 4096;

inline uint64_t Load64(const uint8_t* p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
}

inline size_t Uleb(uint8_t* p, uint32_t v) {
  size_t n = 0;
  while (v >= 0x80) {
    p[n++] = static_cast<uint8_t>(v) | 0x80;
    v >>= 7;
  }
  p[n++] = static_cast<uint8_t>(v);
  return n;
}

inline bool HasZeroByte(uint64_t x) { return ((x - 0x0101010101010101ull) & ~x & 0x8080808080808080ull) != 0; }

// XBZRLE as QEMU does it: alternating (equal-run length, changed-run length, changed
// bytes), ULEB128 lengths, the trailing equal run left out. Returns the length, 0 when the
// pages are equal, -1 when the encoding does not fit in `dlen` (QEMU then sends the page).
long XbzrleEncode(const uint8_t* old_page, const uint8_t* new_page, size_t slen, uint8_t* dst, size_t dlen) {
  size_t i = 0, d = 0;
  uint32_t zrun = 0;
  while (i < slen) {
    if (d + 2 > dlen) return -1;
    while (i < slen && (i & 7) && old_page[i] == new_page[i]) { ++zrun; ++i; }
    if (i < slen && !(i & 7)) {
      while (i + 8 <= slen && Load64(old_page + i) == Load64(new_page + i)) { i += 8; zrun += 8; }
      while (i < slen && old_page[i] == new_page[i]) { ++zrun; ++i; }
    }
    if (zrun == slen) return 0;
    if (i == slen) return static_cast<long>(d);
    d += Uleb(dst + d, zrun);
    zrun = 0;
    if (d + 2 > dlen) return -1;
    size_t start = i;
    while (i < slen && (i & 7) && old_page[i] != new_page[i]) ++i;
    if (i < slen && !(i & 7)) {
      while (i + 8 <= slen && !HasZeroByte(Load64(old_page + i) ^ Load64(new_page + i))) i += 8;
      while (i < slen && old_page[i] != new_page[i]) ++i;
    }
    size_t nz = i - start;
    d += Uleb(dst + d, static_cast<uint32_t>(nz));
    if (d + nz > dlen) return -1;
    memcpy(dst + d, new_page + start, nz);
    d += nz;
  }
  return static_cast<long>(d);
}

inline bool GetUleb(const uint8_t* src, size_t slen, size_t* i, uint32_t* v) {
  uint32_t r = 0;
  for (int shift = 0; shift < 35; shift += 7) {
    if (*i >= slen) return false;
    uint8_t b = src[(*i)++];
    r |= static_cast<uint32_t>(b & 0x7f) << shift;
    if (!(b & 0x80)) {
      *v = r;
      return true;
    }
  }
  return false;
}

// Applies an XBZRLE encoding onto `dst` (which holds the old page). -1 on bad input.
long XbzrleDecode(const uint8_t* src, size_t slen, uint8_t* dst, size_t dlen) {
  size_t i = 0, d = 0;
  while (i < slen) {
    uint32_t z, nz;
    if (!GetUleb(src, slen, &i, &z) || d + z > dlen) return -1;
    d += z;
    if (!GetUleb(src, slen, &i, &nz) || nz == 0 || d + nz > dlen || i + nz > slen) return -1;
    memcpy(dst + d, src + i, nz);
    i += nz;
    d += nz;
  }
  return static_cast<long>(d);
}

bool IsZero(const uint8_t* p) {
  for (size_t i = 0; i < kPage; i += 8)
    if (Load64(p + i)) return false;
  return true;
}

// xbzrleEncode(olds: Buffer, news: Buffer, known: Uint8Array):
//   { encoded: Buffer, lengths: Int32Array, wireBytes }
// Page i is encoded against olds[i] when known[i], sent whole otherwise. lengths[i]: the
// encoding's length, 0 unchanged, -1 sent whole, -2 zero page. wireBytes counts what QEMU
// puts on the wire: an 8-byte page header, plus 3 bytes (encoding flag and u16 length) and
// the encoding, or the page, or nothing more for a zero page; an unchanged page is skipped.
Napi::Value XbzrleEncodeJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsBuffer() || !info[1].IsBuffer() || !info[2].IsTypedArray())
    throw Napi::TypeError::New(env, "xbzrleEncode(olds: Buffer, news: Buffer, known: Uint8Array)");
  auto olds = info[0].As<Napi::Buffer<uint8_t>>();
  auto news = info[1].As<Napi::Buffer<uint8_t>>();
  auto known = info[2].As<Napi::Uint8Array>();
  size_t n = news.Length() / kPage;
  if (olds.Length() != news.Length() || known.ElementLength() != n) throw Napi::RangeError::New(env, "xbzrleEncode: sizes differ");
  auto lengths = Napi::Int32Array::New(env, n);
  std::vector<uint8_t> out(n * kPage);
  size_t off = 0;
  double wire = 0;
  for (size_t i = 0; i < n; ++i) {
    const uint8_t* np = news.Data() + i * kPage;
    long len;
    if (IsZero(np)) {
      len = -2;
      wire += 8;
    } else if (!known[i]) {
      len = -1;
      wire += 8 + kPage;
    } else {
      len = XbzrleEncode(olds.Data() + i * kPage, np, kPage, out.data() + off, kPage);
      if (len > 0) {
        off += static_cast<size_t>(len);
        wire += 8 + 3 + len;
      } else if (len < 0) {
        wire += 8 + kPage;
      }
    }
    lengths[i] = static_cast<int32_t>(len);
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("encoded", Napi::Buffer<uint8_t>::Copy(env, out.data(), off));
  o.Set("lengths", lengths);
  o.Set("wireBytes", Napi::Number::New(env, wire));
  return o;
}

// xbzrleDecode(encoded, lengths, olds: Buffer, news: Buffer (the pages sent whole), out?):
// Buffer of all pages: each encoded page applied onto a copy of its old version (into
// `out` when given: a benchmark reuses it, as a standby reuses its memory).
Napi::Value XbzrleDecodeJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 4 || !info[0].IsBuffer() || !info[1].IsTypedArray() || !info[2].IsBuffer() || !info[3].IsBuffer())
    throw Napi::TypeError::New(env, "xbzrleDecode(encoded: Buffer, lengths: Int32Array, olds: Buffer, news: Buffer)");
  auto enc = info[0].As<Napi::Buffer<uint8_t>>();
  auto lengths = info[1].As<Napi::Int32Array>();
  auto olds = info[2].As<Napi::Buffer<uint8_t>>();
  auto news = info[3].As<Napi::Buffer<uint8_t>>();
  size_t n = lengths.ElementLength();
  if (olds.Length() != n * kPage || news.Length() != n * kPage) throw Napi::RangeError::New(env, "xbzrleDecode: sizes differ");
  Napi::Buffer<uint8_t> out = info.Length() > 4 && info[4].IsBuffer() ? info[4].As<Napi::Buffer<uint8_t>>() : Napi::Buffer<uint8_t>::New(env, n * kPage);
  if (out.Length() < n * kPage) throw Napi::RangeError::New(env, "xbzrleDecode: out too small");
  size_t off = 0;
  for (size_t i = 0; i < n; ++i) {
    uint8_t* dst = out.Data() + i * kPage;
    int32_t len = lengths[i];
    if (len == -2) {
      memset(dst, 0, kPage);
    } else if (len == -1) {
      memcpy(dst, news.Data() + i * kPage, kPage);
    } else {
      memcpy(dst, olds.Data() + i * kPage, kPage);
      if (len > 0) {
        if (off + static_cast<size_t>(len) > enc.Length() || XbzrleDecode(enc.Data() + off, static_cast<size_t>(len), dst, kPage) < 0)
          throw Napi::Error::New(env, "xbzrleDecode: bad encoding at page " + std::to_string(i));
        off += static_cast<size_t>(len);
      }
    }
  }
  return out;
}

// lz4Compress(src: Buffer): Buffer — one LZ4 block, LZ4_compress_default.
Napi::Value Lz4CompressJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsBuffer()) throw Napi::TypeError::New(env, "lz4Compress(src: Buffer)");
  auto src = info[0].As<Napi::Buffer<uint8_t>>();
  int bound = LZ4_compressBound(static_cast<int>(src.Length()));
  std::unique_ptr<char[]> dst(new char[static_cast<size_t>(bound)]);
  int n = LZ4_compress_default(reinterpret_cast<const char*>(src.Data()), dst.get(), static_cast<int>(src.Length()), bound);
  if (n <= 0) throw Napi::Error::New(env, "lz4Compress failed");
  return Napi::Buffer<uint8_t>::Copy(env, reinterpret_cast<uint8_t*>(dst.get()), static_cast<size_t>(n));
}

// lz4Decompress(src: Buffer, rawBytes: number, out?: Buffer): Buffer — LZ4_decompress_safe.
Napi::Value Lz4DecompressJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsBuffer() || !info[1].IsNumber()) throw Napi::TypeError::New(env, "lz4Decompress(src: Buffer, rawBytes: number)");
  auto src = info[0].As<Napi::Buffer<uint8_t>>();
  size_t raw = static_cast<size_t>(info[1].As<Napi::Number>().Int64Value());
  if (raw > (1u << 30)) throw Napi::RangeError::New(env, "lz4Decompress: rawBytes out of range");
  Napi::Buffer<uint8_t> out = info.Length() > 2 && info[2].IsBuffer() ? info[2].As<Napi::Buffer<uint8_t>>() : Napi::Buffer<uint8_t>::New(env, raw);
  if (out.Length() < raw) throw Napi::RangeError::New(env, "lz4Decompress: out too small");
  int n = LZ4_decompress_safe(reinterpret_cast<const char*>(src.Data()), reinterpret_cast<char*>(out.Data()),
                              static_cast<int>(src.Length()), static_cast<int>(raw));
  if (n < 0 || static_cast<size_t>(n) != raw) throw Napi::Error::New(env, "lz4Decompress: malformed block");
  return out;
}

// threadCpuNs(): CPU time of the calling thread (CLOCK_THREAD_CPUTIME_ID), in ns: what
// one core spent, whatever else runs on the machine.
Napi::Value ThreadCpuNsJs(const Napi::CallbackInfo& info) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return Napi::Number::New(info.Env(), static_cast<double>(ts.tv_sec) * 1e9 + static_cast<double>(ts.tv_nsec));
}

}  // namespace

void InitCodecBench(Napi::Env env, Napi::Object exports) {
  Napi::Object b = Napi::Object::New(env);
  b.Set("xbzrleEncode", Napi::Function::New<XbzrleEncodeJs>(env, "xbzrleEncode"));
  b.Set("xbzrleDecode", Napi::Function::New<XbzrleDecodeJs>(env, "xbzrleDecode"));
  b.Set("lz4Compress", Napi::Function::New<Lz4CompressJs>(env, "lz4Compress"));
  b.Set("lz4Decompress", Napi::Function::New<Lz4DecompressJs>(env, "lz4Decompress"));
  b.Set("threadCpuNs", Napi::Function::New<ThreadCpuNsJs>(env, "threadCpuNs"));
  exports.Set("codecBench", b);
}

}  // namespace remus
