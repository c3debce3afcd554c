#include "codec/delta_batch.h"

#include <cstdio>
#include <cstring>
#include <lz4.h>

#include "codec/crc32c.h"
#include "codec/page_delta.h"

namespace remus {
namespace {

constexpr size_t kPage = 4096;
// The largest entry: an 8-byte head (zigzag(pn delta) << 2 stays below 2^56) and a page.
constexpr size_t kMaxEntryBytes = 8 + kPage;
// A DELTA is 4 (base_crc) + varint(len) + len bytes and must stay below a page: with
// len < 4090 the varint takes at most 2 bytes, so 4 + 2 + len < 4096.
constexpr size_t kRunsLimit = kPage - 4 - 2;

inline void Put32(uint8_t* p, uint32_t v) { memcpy(p, &v, 4); }
inline uint32_t Get32(const uint8_t* p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}

inline uint64_t ZigZag(uint64_t delta) {
  int64_t d = static_cast<int64_t>(delta);
  return (static_cast<uint64_t>(d) << 1) ^ static_cast<uint64_t>(d >> 63);
}
inline uint64_t UnZigZag(uint64_t z) { return (z >> 1) ^ (0 - (z & 1)); }

std::string Hex(uint64_t v) {
  char b[24];
  snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
  return b;
}

std::string Hex32(uint32_t v) {
  char b[16];
  snprintf(b, sizeof b, "0x%08x", v);
  return b;
}

std::string EntryName(size_t i, uint64_t addr) { return "entry " + std::to_string(i) + " (page " + Hex(addr) + ")"; }

}  // namespace

std::string EncodeBatch(ShadowCache& cache, const uint64_t* addrs, const uint8_t* pages, size_t count,
                        const EncodeOptions& options, OwnedBytes* out, EncodeStats* st) {
  *st = EncodeStats{};
  if (count > kMaxBatchPages)
    return std::to_string(count) + " pages in one batch: more than the limit of " + std::to_string(kMaxBatchPages);
  for (size_t i = 0; i < count; ++i)
    if (addrs[i] & (kPage - 1)) return "page address " + Hex(addrs[i]) + " is not 4096-aligned";

  std::vector<uint8_t>& scratch = cache.scratch();
  if (scratch.size() < count * kMaxEntryBytes) scratch.resize(count * kMaxEntryBytes);
  uint8_t* body = scratch.data();
  size_t o = 0;
  const uint32_t stamp = cache.NextStamp();
  const bool xr = options.xor_runs;
  const CacheCounters before = cache.counters();
  uint64_t prev = 0;
  st->pages = static_cast<uint32_t>(count);

  for (size_t i = 0; i < count; ++i) {
    const uint64_t pn = addrs[i] >> 12;
    const uint64_t zz = ZigZag(pn - prev) << 2;
    prev = pn;
    const uint8_t* page = pages + i * kPage;
    if (IsZeroPageFast(page)) {
      o += PutVarint(body + o, zz | kZero);
      cache.Erase(pn);  // the standby stores a zero page; the next write goes FULL
      ++st->zero;
      continue;
    }
    uint32_t s = cache.Find(pn);
    if (s != ShadowCache::kNone && cache.Meta(s).stamp != stamp) {
      CacheSlot& m = cache.Meta(s);
      uint8_t* base = cache.Data(s);
      size_t hl = PutVarint(body + o, zz | kDelta);
      uint8_t* runs = body + o + hl + 4 + 2;
      long n = EncodeRunsMode(base, page, runs, kRunsLimit, xr, options.merge_gap);
      if (n >= 0) {
        if (!m.crc_valid) {
          m.crc = Crc32cPage(base);
          m.crc_valid = 1;
        }
        Put32(body + o + hl, m.crc);
        size_t lv = PutVarint(body + o + hl + 4, static_cast<uint64_t>(n));
        if (lv == 1) memmove(runs - 1, runs, static_cast<size_t>(n));
        runs = body + o + hl + 4 + lv;
        if (n > 0) {
          PatchFromRunsMode(base, runs, static_cast<size_t>(n), xr);
          m.crc_valid = 0;  // computed when this version becomes a base
        } else {
          ++st->unchanged;
        }
        m.stamp = stamp;
        o += hl + 4 + lv + static_cast<size_t>(n);
        ++st->delta;
        st->delta_bytes += static_cast<uint64_t>(n);
        continue;
      }
      // The delta is not smaller than the page: FULL, and the slot takes the new version.
    } else if (s == ShadowCache::kNone) {
      s = cache.Insert(pn);
    }
    // FULL: a miss, a delta that does not pay, or the page's second entry in this batch
    // (a delta must be against what the standby has before the batch).
    o += PutVarint(body + o, zz | kFull);
    memcpy(body + o, page, kPage);
    o += kPage;
    memcpy(cache.Data(s), page, kPage);
    CacheSlot& m = cache.Meta(s);
    m.crc_valid = 0;
    m.stamp = stamp;
    ++st->full;
  }

  const CacheCounters& after = cache.counters();
  st->hits = static_cast<uint32_t>(after.hits - before.hits);
  st->misses = static_cast<uint32_t>(after.misses - before.misses);
  st->evictions = static_cast<uint32_t>(after.evictions - before.evictions);

  uint8_t flags = xr ? kFlagXorRuns : 0;
  const uint8_t* payload = body;
  size_t payload_len = o;
  if (options.compress && o > 0) {
    int bound = LZ4_compressBound(static_cast<int>(o));
    std::vector<uint8_t>& z = cache.scratch2();
    if (z.size() < static_cast<size_t>(bound)) z.resize(static_cast<size_t>(bound));
    int n = LZ4_compress_default(reinterpret_cast<const char*>(body), reinterpret_cast<char*>(z.data()),
                                 static_cast<int>(o), bound);
    if (n > 0 && static_cast<size_t>(n) < o) {
      payload = z.data();
      payload_len = static_cast<size_t>(n);
      flags |= kFlagLz4;
    }
  }
  uint8_t header[kDeltaHeaderBytes];
  header[0] = kDeltaMagic0;
  header[1] = kDeltaMagic1;
  header[2] = kDeltaVersion;
  header[3] = flags;
  Put32(header + 4, static_cast<uint32_t>(count));
  Put32(header + 8, static_cast<uint32_t>(o));
  Put32(header + 12, Crc32c(Crc32c(0, header, 12), body, o));
  out->size = kDeltaHeaderBytes + payload_len;
  out->data = LargeBuffer(out->size);
  memcpy(out->data.get(), header, kDeltaHeaderBytes);
  if (payload_len) memcpy(out->data.get() + kDeltaHeaderBytes, payload, payload_len);
  st->body_bytes = o;
  st->wire_bytes = out->size;
  st->compressed = flags & kFlagLz4;
  return "";
}

std::string ParseBatch(const uint8_t* data, size_t len, ParsedBatch* out, size_t max_pages) {
  if (len < kDeltaHeaderBytes)
    return "batch of " + std::to_string(len) + " bytes is shorter than its " + std::to_string(kDeltaHeaderBytes) + "-byte header";
  if (data[0] != kDeltaMagic0 || data[1] != kDeltaMagic1) return "not a page-delta batch (bad magic)";
  if (data[2] != kDeltaVersion)
    return "page-delta format version " + std::to_string(data[2]) + " is not supported (this build reads version " +
           std::to_string(kDeltaVersion) + ")";
  const uint8_t flags = data[3];
  if (flags & ~(kFlagLz4 | kFlagXorRuns)) return "unknown flags " + Hex(flags);
  const uint32_t count = Get32(data + 4);
  const uint32_t body_len = Get32(data + 8);
  const uint32_t crc = Get32(data + 12);
  if (count > max_pages)
    return std::to_string(count) + " pages in one batch: more than the limit of " + std::to_string(max_pages);
  if (body_len > static_cast<uint64_t>(count) * kMaxEntryBytes)
    return "body of " + std::to_string(body_len) + " bytes is more than " + std::to_string(count) + " pages can take";
  const uint8_t* payload = data + kDeltaHeaderBytes;
  const size_t plen = len - kDeltaHeaderBytes;
  out->flags = flags;
  out->body_len = body_len;
  out->body = LargeBuffer(body_len);
  uint8_t* body = out->body.get();
  if (flags & kFlagLz4) {
    // An LZ4 block expands at most 255 times (plus a little), and an empty one is invalid.
    if (plen == 0 || body_len == 0) return "empty LZ4 block";
    if (static_cast<uint64_t>(body_len) > static_cast<uint64_t>(plen) * 255 + 16)
      return "LZ4 block of " + std::to_string(plen) + " bytes cannot decode to " + std::to_string(body_len) + " bytes";
    if (plen > static_cast<size_t>(LZ4_MAX_INPUT_SIZE)) return "LZ4 block too large";
    // LZ4_decompress_safe reads only [payload, payload + plen) and writes only [body, body + body_len).
    int n = LZ4_decompress_safe(reinterpret_cast<const char*>(payload), reinterpret_cast<char*>(body),
                                static_cast<int>(plen), static_cast<int>(body_len));
    if (n < 0) return "malformed LZ4 block";
    if (static_cast<uint32_t>(n) != body_len)
      return "LZ4 block decodes to " + std::to_string(n) + " bytes, the header says " + std::to_string(body_len);
  } else {
    if (plen != body_len)
      return "payload of " + std::to_string(plen) + " bytes, the header says " + std::to_string(body_len);
    if (body_len) memcpy(body, payload, body_len);
  }
  uint32_t computed = Crc32c(Crc32c(0, data, 12), body, body_len);
  if (computed != crc) return "batch checksum mismatch (damaged): CRC-32C " + Hex32(computed) + ", the header says " + Hex32(crc);

  out->entries.clear();
  out->entries.reserve(count);
  out->full = out->delta = out->zero = 0;
  const uint8_t* p = body;
  const uint8_t* end = body + body_len;
  uint64_t prev = 0;
  for (uint32_t i = 0; i < count; ++i) {
    uint64_t head;
    if (!GetVarint(p, end, &head)) return "entry " + std::to_string(i) + ": truncated or bad head";
    const uint8_t kind = head & 3;
    const uint64_t pn = prev + UnZigZag(head >> 2);
    if (pn >= kMaxPageNumber) return "entry " + std::to_string(i) + ": page number out of range";
    prev = pn;
    ParsedBatch::Entry e{pn << 12, 0, 0, 0, static_cast<uint32_t>(out->full + out->delta), kind};
    switch (kind) {
      case kZero:
        ++out->zero;
        break;
      case kFull:
        if (static_cast<size_t>(end - p) < kPage) return EntryName(i, e.addr) + ": truncated page";
        e.offset = static_cast<uint32_t>(p - body);
        p += kPage;
        ++out->full;
        break;
      case kDelta: {
        const uint8_t* start = p;
        if (end - p < 4) return EntryName(i, e.addr) + ": truncated delta";
        e.base_crc = Get32(p);
        p += 4;
        uint64_t n;
        if (!GetVarint(p, end, &n)) return EntryName(i, e.addr) + ": truncated delta length";
        if (n >= kPage || static_cast<size_t>(p - start) + n >= kPage)
          return EntryName(i, e.addr) + ": delta of " + std::to_string(n) + " bytes is not smaller than the page";
        if (n > static_cast<size_t>(end - p)) return EntryName(i, e.addr) + ": delta runs truncated";
        std::string err = CheckRuns(p, static_cast<size_t>(n));
        if (!err.empty()) return EntryName(i, e.addr) + ": " + err;
        e.offset = static_cast<uint32_t>(p - body);
        e.len = static_cast<uint32_t>(n);
        p += n;
        ++out->delta;
        break;
      }
      default:
        return EntryName(i, e.addr) + ": invalid kind 3";
    }
    out->entries.push_back(e);
  }
  if (p != end) return std::to_string(end - p) + " bytes after the last entry";
  return "";
}

// The version check refusing a delta (the same words from both apply paths).
static std::string VersionMismatch(uint64_t addr, uint32_t want, uint32_t have) {
  return "page " + Hex(addr) + ": version check failed: the delta was made against a page with CRC-32C " + Hex32(want) +
         " but the standby's page has " + Hex32(have) +
         " (primary and standby disagree on its previous version; batch refused, nothing applied)";
}

std::string ApplyBatch(const ParsedBatch& batch, const uint8_t* bases, size_t bases_len, uint8_t* pages, DecodedBatch* out) {
  if (bases_len != batch.delta * kPage)
    return "bases: " + std::to_string(bases_len) + " bytes for " + std::to_string(batch.delta) +
           " delta pages (expected " + std::to_string(batch.delta * kPage) + ")";
  const size_t data_pages = batch.full + batch.delta;
  out->addrs.clear();
  out->zeros.clear();
  out->addrs.reserve(data_pages);
  out->zeros.reserve(batch.zero);
  const uint8_t* body = batch.body.get();
  const bool xr = batch.flags & kFlagXorRuns;
  size_t k = 0, j = 0;
  for (size_t i = 0; i < batch.entries.size(); ++i) {
    const ParsedBatch::Entry& e = batch.entries[i];
    if (e.kind == kZero) {
      out->zeros.push_back(e.addr);
      continue;
    }
    uint8_t* dst = pages + k * kPage;
    if (e.kind == kFull) {
      memcpy(dst, body + e.offset, kPage);
    } else {
      // Copy and checksum in one pass: what is checked is what is applied.
      uint32_t have = Crc32cPageCopy(dst, bases + j * kPage, j + 1 < batch.delta ? bases + (j + 1) * kPage : nullptr);
      ++j;
      if (have != e.base_crc)
        return VersionMismatch(e.addr, e.base_crc, have);
      // ParseBatch checked every run of this body (CheckRuns), and the body is ours: no
      // second check.
      PatchFromRunsMode(dst, body + e.offset, e.len, xr);
    }
    out->addrs.push_back(e.addr);
    ++k;
  }
  return "";
}

std::string ApplyBatchInPlace(const ParsedBatch& batch, uint8_t* pages, size_t pages_len, DecodedBatch* out) {
  const size_t data_pages = batch.full + batch.delta;
  if (pages_len != data_pages * kPage)
    return "pages: " + std::to_string(pages_len) + " bytes for " + std::to_string(data_pages) + " pages with data (expected " +
           std::to_string(data_pages * kPage) + ")";
  out->addrs.clear();
  out->zeros.clear();
  out->addrs.reserve(data_pages);
  out->zeros.reserve(batch.zero);
  const uint8_t* body = batch.body.get();
  const bool xr = batch.flags & kFlagXorRuns;
  for (size_t i = 0; i < batch.entries.size(); ++i) {
    const ParsedBatch::Entry& e = batch.entries[i];
    if (e.kind == kZero) {
      out->zeros.push_back(e.addr);
      continue;
    }
    uint8_t* dst = pages + static_cast<size_t>(e.slot) * kPage;  // slot < data_pages: set by ParseBatch
    if (e.kind == kFull) {
      memcpy(dst, body + e.offset, kPage);
    } else {
      uint32_t have = Crc32cPage(dst);
      if (have != e.base_crc)
        return VersionMismatch(e.addr, e.base_crc, have);
      // ParseBatch checked every run of this body (CheckRuns), and the body is ours: no
      // second check.
      PatchFromRunsMode(dst, body + e.offset, e.len, xr);
    }
    out->addrs.push_back(e.addr);
  }
  return "";
}

}  // namespace remus
