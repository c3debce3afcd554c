// Mutation fuzzer for the page-delta codec (native/codec), built with
// -fsanitize=address,undefined from the addon's own codec sources by
// test/30-codec-fuzz.test.ts and run from `npm test`.
//
//   fuzz_codec [--iterations N] [--seed S] [--mutations M]
//
// Each iteration encodes a batch of pages (random addresses among a small set, repeats
// included, contents from zero pages to sparse changes to random) with a small ShadowCache
// (so that pages are evicted), checks that it decodes to exactly the input against a
// model of the standby's store, then decodes M mutations of it:
//   - raw mutations of the bytes as sent (bit flips, byte sets, truncations, extensions,
//     insertions, deletions, header field edits): the result must be an error or exactly
//     the right pages (the checksum covers the whole batch);
//   - structural mutations of the decoded body with the checksum recomputed (edited
//     varints, kinds, truncations, appended bytes, and edits of the runs at the page's
//     boundaries: runs ending 1 or 2 bytes past the page, skips past it, empty runs, entry
//     lengths off by one; the body re-compressed with LZ4 or not): the result must
//     equal, page for page, what a simple reference
//     decoder written here with bounds-checked accesses produces (or both must refuse);
//   - wrong bases: a DELTA applied against another version must be refused.
// The output pages are surrounded by guard bytes that must stay intact, and the
// sanitizers catch any other stray access. Ends with one line:
//   codec-fuzz: seed S, N iterations, B batches decoded, K mutations: R refused, A accepted (I identical), F failures
// and exit status 0 when F is 0.
#include <lz4.h>

#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "codec/crc32c.h"
#include "codec/delta_batch.h"
#include "codec/page_delta.h"
#include "codec/shadow_cache.h"

using namespace remus;

namespace {

constexpr size_t kPage = 4096;
constexpr size_t kGuard = 64;
constexpr uint8_t kGuardByte = 0xa5;

struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9e3779b97f4a7c15ull + 1) {}
  uint64_t Next() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 0x2545f4914f6cdd1dull;
  }
  uint64_t Below(uint64_t n) { return n ? Next() % n : 0; }
  bool Chance(unsigned percent) { return Below(100) < percent; }
};

using Page = std::vector<uint8_t>;
using Store = std::map<uint64_t, Page>;  // address -> content; absent: zero page

struct Outcome {
  bool ok = false;
  std::string error;
  std::vector<uint64_t> addrs, zeros;
  std::vector<uint8_t> pages;
};

// --- the reference decoder: straightforward, every access bounds-checked (.at) ----------

uint64_t RefVarint(const std::vector<uint8_t>& b, size_t& i) {
  uint64_t r = 0;
  for (unsigned shift = 0; shift < 64; shift += 7) {
    uint8_t x = b.at(i++);
    if (shift == 63 && x > 1) throw std::runtime_error("varint overflow");
    r |= static_cast<uint64_t>(x & 0x7f) << shift;
    if (!(x & 0x80)) return r;
  }
  throw std::runtime_error("varint too long");
}

uint32_t Rd32(const std::vector<uint8_t>& b, size_t i) {
  return static_cast<uint32_t>(b.at(i)) | static_cast<uint32_t>(b.at(i + 1)) << 8 | static_cast<uint32_t>(b.at(i + 2)) << 16 |
         static_cast<uint32_t>(b.at(i + 3)) << 24;
}

Outcome RefDecode(const std::vector<uint8_t>& data, const Store& store) {
  Outcome out;
  try {
    if (data.size() < 16) throw std::runtime_error("short");
    if (data[0] != 'R' || data[1] != 'D' || data[2] != 1) throw std::runtime_error("magic/version");
    uint8_t flags = data[3];
    if (flags & ~3) throw std::runtime_error("flags");
    uint32_t count = Rd32(data, 4), body_len = Rd32(data, 8), crc = Rd32(data, 12);
    if (count > kMaxBatchPages) throw std::runtime_error("count");
    if (static_cast<uint64_t>(body_len) > static_cast<uint64_t>(count) * (8 + kPage)) throw std::runtime_error("body_len");
    std::vector<uint8_t> body;
    size_t plen = data.size() - 16;
    if (flags & 1) {
      if (plen == 0 || body_len == 0 || static_cast<uint64_t>(body_len) > static_cast<uint64_t>(plen) * 255 + 16)
        throw std::runtime_error("lz4 size");
      body.resize(body_len);
      int n = LZ4_decompress_safe(reinterpret_cast<const char*>(data.data() + 16), reinterpret_cast<char*>(body.data()),
                                  static_cast<int>(plen), static_cast<int>(body_len));
      if (n != static_cast<int>(body_len)) throw std::runtime_error("lz4");
    } else {
      if (plen != body_len) throw std::runtime_error("payload size");
      body.assign(data.begin() + 16, data.end());
    }
    // The portable CRC: another implementation than the decoder's.
    uint32_t c = Crc32cPortable(Crc32cPortable(0, data.data(), 12), body.data(), body.size());
    if (c != crc) throw std::runtime_error("crc");
    size_t i = 0;
    uint64_t prev = 0;
    std::vector<uint8_t> pages;
    for (uint32_t e = 0; e < count; ++e) {
      uint64_t head = RefVarint(body, i);
      uint64_t z = head >> 2;
      uint64_t pn = prev + ((z >> 1) ^ (0 - (z & 1)));
      if (pn >= (1ull << 52)) throw std::runtime_error("pn");
      prev = pn;
      uint64_t addr = pn << 12;
      switch (head & 3) {
        case 0:
          out.zeros.push_back(addr);
          break;
        case 1: {
          if (i + kPage > body.size()) throw std::runtime_error("full truncated");
          pages.insert(pages.end(), body.begin() + static_cast<long>(i), body.begin() + static_cast<long>(i + kPage));
          i += kPage;
          out.addrs.push_back(addr);
          break;
        }
        case 2: {
          size_t start = i;
          uint32_t base_crc = Rd32(body, i);
          i += 4;
          uint64_t len = RefVarint(body, i);
          if (len >= kPage || (i - start) + len >= kPage) throw std::runtime_error("delta too long");
          if (i + len > body.size()) throw std::runtime_error("delta truncated");
          auto it = store.find(addr);
          Page page = it == store.end() ? Page(kPage, 0) : it->second;
          if (Crc32cPortable(0, page.data(), kPage) != base_crc) throw std::runtime_error("version check");
          size_t end = i + len, pos = 0;
          while (i < end) {
            uint64_t skip = RefVarint(body, i);
            if (i > end) throw std::runtime_error("varint past delta");
            if (skip > kPage - pos) throw std::runtime_error("skip");
            pos += skip;
            uint64_t n = RefVarint(body, i);
            if (i > end) throw std::runtime_error("varint past delta");
            if (n == 0 || n > kPage - pos || n > end - i) throw std::runtime_error("run");
            for (uint64_t k = 0; k < n; ++k) {
              if (flags & 2) page.at(pos + k) ^= body.at(i + k);
              else page.at(pos + k) = body.at(i + k);
            }
            i += n;
            pos += n;
          }
          pages.insert(pages.end(), page.begin(), page.end());
          out.addrs.push_back(addr);
          break;
        }
        default:
          throw std::runtime_error("kind 3");
      }
    }
    if (i != body.size()) throw std::runtime_error("trailing");
    out.pages = std::move(pages);
    out.ok = true;
  } catch (const std::exception& e) {
    out = Outcome{};
    out.error = e.what();
  }
  return out;
}

// --- the decoder under test, the way the standby drives it -------------------------------

struct Checks {
  uint64_t failures = 0;
  void Fail(const std::string& what) {
    if (failures < 20) fprintf(stderr, "FAILURE: %s\n", what.c_str());
    ++failures;
  }
};

// Decodes with bases from `store` (zeros where it has none), through ApplyBatch (bases
// copied) or ApplyBatchInPlace (bases put in their output slots); `wrong_base` alters the
// base of the first DELTA page. Verifies the guard bytes around the output.
Outcome Decode(const std::vector<uint8_t>& data, const Store& store, Checks& checks, bool in_place, bool wrong_base = false) {
  Outcome out;
  ParsedBatch b;
  std::string err = ParseBatch(data.data(), data.size(), &b);
  if (!err.empty()) {
    out.error = err;
    return out;
  }
  std::vector<uint8_t> bases(b.delta * kPage + 1);  // +1: never empty, data() valid
  size_t j = 0;
  for (const auto& e : b.entries) {
    if (e.kind != kDelta) continue;
    auto it = store.find(e.addr);
    if (it != store.end()) memcpy(bases.data() + j * kPage, it->second.data(), kPage);
    else memset(bases.data() + j * kPage, 0, kPage);
    ++j;
  }
  if (wrong_base && b.delta) bases[7] ^= 0x40;
  size_t n = (b.full + b.delta) * kPage;
  std::vector<uint8_t> buf(n + 2 * kGuard, kGuardByte);
  DecodedBatch d;
  if (in_place) {
    size_t k = 0;
    for (const auto& e : b.entries)
      if (e.kind == kDelta) memcpy(buf.data() + kGuard + static_cast<size_t>(e.slot) * kPage, bases.data() + (k++) * kPage, kPage);
    err = ApplyBatchInPlace(b, buf.data() + kGuard, n, &d);
  } else {
    err = ApplyBatch(b, bases.data(), b.delta * kPage, buf.data() + kGuard, &d);
  }
  for (size_t k = 0; k < kGuard; ++k)
    if (buf[k] != kGuardByte || buf[kGuard + n + k] != kGuardByte) {
      checks.Fail("a write outside the output pages");
      break;
    }
  if (!err.empty()) {
    out.error = err;
    return out;
  }
  out.ok = true;
  out.addrs = std::move(d.addrs);
  out.zeros = std::move(d.zeros);
  out.pages.assign(buf.begin() + kGuard, buf.begin() + static_cast<long>(kGuard + n));
  return out;
}

bool Same(const Outcome& a, const Outcome& b) { return a.addrs == b.addrs && a.zeros == b.zeros && a.pages == b.pages; }

void Commit(Store& store, const Outcome& o, const std::vector<uint64_t>& order_addrs, const std::vector<uint8_t>& order_kinds) {
  // Entries in order: the decoder reports data pages and zero pages as two ordered lists.
  size_t di = 0, zi = 0;
  for (size_t i = 0; i < order_addrs.size(); ++i) {
    if (order_kinds[i] == kZero) {
      store.erase(o.zeros[zi++]);
    } else {
      store[o.addrs[di]] = Page(o.pages.begin() + static_cast<long>(di * kPage), o.pages.begin() + static_cast<long>((di + 1) * kPage));
      ++di;
    }
  }
}

// --- inputs --------------------------------------------------------------------------------

void NewVersion(Rng& r, Page& p) {
  switch (r.Below(10)) {
    case 0:  // zero page
      std::fill(p.begin(), p.end(), 0);
      break;
    case 1:  // random page
      for (auto& x : p) x = static_cast<uint8_t>(r.Next());
      break;
    case 2: {  // text-like, compressible
      const char* words[] = {"key:", "value", "\r\n", "$3", "SET", "0000", "node", "{\"a\":"};
      size_t i = 0;
      while (i < kPage) {
        const char* w = words[r.Below(8)];
        for (size_t k = 0; w[k] && i < kPage; ++k) p[i++] = static_cast<uint8_t>(w[k]);
      }
      break;
    }
    case 3:  // both ends
      p[0] ^= static_cast<uint8_t>(r.Next() | 1);
      p[kPage - 1] ^= static_cast<uint8_t>(r.Next() | 1);
      break;
    case 4: {  // one word at any offset
      uint64_t w = r.Next() | 1;
      size_t off = r.Below(kPage - 7);
      for (size_t k = 0; k < 8; ++k) p[off + k] ^= static_cast<uint8_t>(w >> (8 * k));
      break;
    }
    case 5:  // nothing changed
      break;
    case 6: {  // a dense half
      size_t off = r.Below(kPage / 2);
      for (size_t k = 0; k < kPage / 2; ++k) p[off + k] = static_cast<uint8_t>(r.Next());
      break;
    }
    default: {  // a few sparse changes
      size_t n = 1 + r.Below(40);
      for (size_t k = 0; k < n; ++k) p[r.Below(kPage)] = static_cast<uint8_t>(r.Next());
      break;
    }
  }
}

// Raw mutation of the bytes as sent.
void MutateRaw(Rng& r, std::vector<uint8_t>& d) {
  int n = 1 + static_cast<int>(r.Below(3));
  for (int m = 0; m < n; ++m) {
    size_t len = d.size();
    switch (r.Below(9)) {
      case 0:
        if (len) d[r.Below(len)] ^= static_cast<uint8_t>(1u << r.Below(8));
        break;
      case 1:
        if (len) d[r.Below(len)] = static_cast<uint8_t>(r.Next());
        break;
      case 2:
        d.resize(r.Below(len + 1));
        break;
      case 3: {
        size_t k = 1 + r.Below(64);
        for (size_t i = 0; i < k; ++i) d.push_back(static_cast<uint8_t>(r.Next()));
        break;
      }
      case 4:
        if (len) d.insert(d.begin() + static_cast<long>(r.Below(len)), static_cast<uint8_t>(r.Next()));
        break;
      case 5:
        if (len) d.erase(d.begin() + static_cast<long>(r.Below(len)));
        break;
      case 6: {  // header fields: count, body_len
        if (len < 16) break;
        size_t off = r.Chance(50) ? 4 : 8;
        uint32_t v;
        memcpy(&v, d.data() + off, 4);
        static const int64_t deltas[] = {-1, 1, -4096, 4096, 1 << 20, -(1 << 20)};
        v = r.Chance(20) ? static_cast<uint32_t>(r.Next()) : static_cast<uint32_t>(v + deltas[r.Below(6)]);
        memcpy(d.data() + off, &v, 4);
        break;
      }
      case 7:
        if (len >= 4) d[2 + r.Below(2)] = static_cast<uint8_t>(r.Below(8));  // version, flags
        break;
      default:
        if (len > 16) d[16 + r.Below(std::min<size_t>(len - 16, 32))] = static_cast<uint8_t>(r.Next());  // LZ4 tokens
        break;
    }
  }
}

// Re-packs `body` as a batch with a correct checksum (LZ4 or not).
std::vector<uint8_t> Pack(const std::vector<uint8_t>& body, uint8_t flags, uint32_t count, bool lz4) {
  std::vector<uint8_t> out(16);
  out[0] = 'R';
  out[1] = 'D';
  out[2] = 1;
  flags = static_cast<uint8_t>((flags & ~1) | (lz4 && !body.empty() ? 1 : 0));
  out[3] = flags;
  uint32_t bl = static_cast<uint32_t>(body.size());
  memcpy(out.data() + 4, &count, 4);
  memcpy(out.data() + 8, &bl, 4);
  uint32_t crc = Crc32c(Crc32c(0, out.data(), 12), body.data(), body.size());
  memcpy(out.data() + 12, &crc, 4);
  if (flags & 1) {
    std::vector<char> z(static_cast<size_t>(LZ4_compressBound(static_cast<int>(body.size()))));
    int n = LZ4_compress_default(reinterpret_cast<const char*>(body.data()), z.data(), static_cast<int>(body.size()),
                                 static_cast<int>(z.size()));
    out.insert(out.end(), z.begin(), z.begin() + n);
  } else {
    out.insert(out.end(), body.begin(), body.end());
  }
  return out;
}

void PutVarintVec(std::vector<uint8_t>& b, size_t at, uint64_t v, size_t old_len) {
  uint8_t tmp[10];
  size_t n = PutVarint(tmp, v);
  b.erase(b.begin() + static_cast<long>(at), b.begin() + static_cast<long>(std::min(at + old_len, b.size())));
  b.insert(b.begin() + static_cast<long>(at), tmp, tmp + n);
}

// Structural mutation of a decoded body (then re-packed with a valid checksum).
void MutateBody(Rng& r, std::vector<uint8_t>& b, uint32_t& count, uint8_t& flags) {
  size_t len = b.size();
  switch (r.Below(10)) {
    case 0:  // a varint-looking byte somewhere becomes a large varint
      if (len) PutVarintVec(b, r.Below(len), r.Chance(50) ? r.Below(1 << 14) : r.Next(), 1 + r.Below(2));
      break;
    case 1:
      if (len) b[r.Below(len)] = static_cast<uint8_t>(r.Next());
      break;
    case 2:
      if (len) b[r.Below(len)] ^= 3;  // kind bits, often
      break;
    case 3:
      b.resize(r.Below(len + 1));
      break;
    case 4:
      for (size_t k = 1 + r.Below(8); k > 0; --k) b.push_back(static_cast<uint8_t>(r.Next()));
      break;
    case 5:
      count = static_cast<uint32_t>(count + (r.Chance(50) ? 1 : -1));
      break;
    case 6:
      flags ^= 2;  // XOR runs
      break;
    case 7:  // a run length byte: 0, large, or max
      if (len) b[r.Below(len)] = static_cast<uint8_t>(r.Chance(50) ? 0 : 0x7f);
      break;
    case 8:
      if (len > 8) {
        size_t s = r.Below(len), e = std::min(len, s + 1 + r.Below(8));
        b.erase(b.begin() + static_cast<long>(s), b.begin() + static_cast<long>(e));
      }
      break;
    default:
      if (len) b.insert(b.begin() + static_cast<long>(r.Below(len)), static_cast<uint8_t>(0x80 | r.Next()));
      break;
  }
}

// Entries of a body as laid out (for targeted edits); stops at the first malformed one.
struct BodyEntry {
  size_t head, end;  // [head, end) is the whole entry
  uint64_t kind;
  size_t runs_off, runs_len;  // DELTA
};

std::vector<BodyEntry> WalkBody(const std::vector<uint8_t>& b, uint32_t count) {
  std::vector<BodyEntry> out;
  size_t i = 0;
  try {
    for (uint32_t e = 0; e < count && i < b.size(); ++e) {
      BodyEntry be{i, 0, 0, 0, 0};
      be.kind = RefVarint(b, i) & 3;
      if (be.kind == 1) i += kPage;
      if (be.kind == 2) {
        i += 4;
        uint64_t len = RefVarint(b, i);
        be.runs_off = i;
        be.runs_len = static_cast<size_t>(len);
        i += static_cast<size_t>(len);
      }
      if (i > b.size()) break;
      be.end = i;
      out.push_back(be);
    }
  } catch (const std::exception&) {
  }
  return out;
}

// Edits the runs of one DELTA entry at the page's boundaries (runs that end 1 or 2 bytes
// past the page, skips that jump past it, empty runs, a run added after the last, the
// entry's length off by one) and rewrites the entry consistently around the edit.
bool MutateRuns(Rng& r, std::vector<uint8_t>& b, uint32_t count) {
  std::vector<BodyEntry> deltas;
  for (const auto& e : WalkBody(b, count))
    if (e.kind == 2) deltas.push_back(e);
  if (deltas.empty()) return false;
  const BodyEntry e = deltas[r.Below(deltas.size())];
  struct Run { uint64_t skip; std::vector<uint8_t> bytes; };
  std::vector<Run> rs;
  std::vector<size_t> starts;  // page position of each run's bytes
  try {
    size_t i = e.runs_off, end = e.runs_off + e.runs_len, pos = 0;
    while (i < end) {
      Run run;
      run.skip = RefVarint(b, i);
      uint64_t n = RefVarint(b, i);
      if (n > end - i) return false;
      run.bytes.assign(b.begin() + static_cast<long>(i), b.begin() + static_cast<long>(i + n));
      i += n;
      pos += run.skip;
      starts.push_back(pos);
      pos += n;
      rs.push_back(std::move(run));
    }
  } catch (const std::exception&) {
    return false;
  }
  int64_t len_adjust = 0;
  const int64_t d = static_cast<int64_t>(r.Below(4)) - 1;  // -1 .. 2
  switch (r.Below(5)) {
    case 0:  // the last run ends at the page end + d
      if (rs.empty()) return false;
      rs.back().bytes.resize(static_cast<size_t>(std::max<int64_t>(1, static_cast<int64_t>(kPage) + d - static_cast<int64_t>(starts.back()))), 0x5a);
      break;
    case 1: {  // a skip that lands at the page end + d
      if (rs.empty()) return false;
      size_t k = r.Below(rs.size());
      size_t before = starts[k] - rs[k].skip;
      rs[k].skip = static_cast<uint64_t>(std::max<int64_t>(0, static_cast<int64_t>(kPage) + d - static_cast<int64_t>(before)));
      break;
    }
    case 2:  // an empty run
      if (rs.empty()) return false;
      rs[r.Below(rs.size())].bytes.clear();
      break;
    case 3: {  // a run after the last: from the page end + d, 1 to 3 bytes
      size_t end_pos = rs.empty() ? 0 : starts.back() + rs.back().bytes.size();
      rs.push_back(Run{static_cast<uint64_t>(std::max<int64_t>(0, static_cast<int64_t>(kPage) + d - static_cast<int64_t>(end_pos))),
                       std::vector<uint8_t>(1 + r.Below(3), 0x77)});
      break;
    }
    default:  // the entry's length off by d (the runs unchanged)
      len_adjust = d == 0 ? 1 : d;
      break;
  }
  std::vector<uint8_t> runs;
  uint8_t tmp[10];
  for (const auto& run : rs) {
    runs.insert(runs.end(), tmp, tmp + PutVarint(tmp, run.skip));
    runs.insert(runs.end(), tmp, tmp + PutVarint(tmp, run.bytes.size()));
    runs.insert(runs.end(), run.bytes.begin(), run.bytes.end());
  }
  // head and base_crc unchanged; then the length and the runs.
  size_t i = e.head;
  RefVarint(b, i);
  std::vector<uint8_t> entry(b.begin() + static_cast<long>(e.head), b.begin() + static_cast<long>(i + 4));
  int64_t len = static_cast<int64_t>(runs.size()) + len_adjust;
  entry.insert(entry.end(), tmp, tmp + PutVarint(tmp, static_cast<uint64_t>(std::max<int64_t>(0, len))));
  entry.insert(entry.end(), runs.begin(), runs.end());
  b.erase(b.begin() + static_cast<long>(e.head), b.begin() + static_cast<long>(e.end));
  b.insert(b.begin() + static_cast<long>(e.head), entry.begin(), entry.end());
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t iterations = 2000, seed = 1, mutations = 24;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    uint64_t v = strtoull(argv[i + 1], nullptr, 10);
    if (a == "--iterations") iterations = v;
    else if (a == "--seed") seed = v;
    else if (a == "--mutations") mutations = v;
    else {
      fprintf(stderr, "usage: fuzz_codec [--iterations N] [--seed S] [--mutations M]\n");
      return 2;
    }
  }
  Rng r(seed);
  Checks checks;
  ShadowCache cache(40 * (kPage + 64), Eviction::kClock);  // about 40 pages: evictions happen
  Store store;  // the standby's pages
  std::map<uint64_t, Page> current;  // the primary's pages
  std::vector<uint64_t> pool;
  for (int i = 0; i < 24; ++i) pool.push_back((0x7f0000000ull + static_cast<uint64_t>(i)) << 12);   // adjacent
  for (int i = 0; i < 24; ++i) pool.push_back((r.Below(1ull << 35) + 16) << 12);                   // scattered
  pool.push_back(0);                                                                                // address 0
  pool.push_back(((1ull << 52) - 1) << 12);                                                         // the highest page
  uint64_t decoded = 0, mutated = 0, refused = 0, accepted = 0, identical = 0;

  for (uint64_t it = 0; it < iterations; ++it) {
    size_t n = 1 + r.Below(r.Chance(10) ? 200 : 24);
    std::vector<uint64_t> addrs;
    std::vector<uint8_t> pages;
    for (size_t i = 0; i < n; ++i) {
      uint64_t a = pool[r.Below(pool.size())];
      Page& p = current[a];
      if (p.empty()) p.assign(kPage, 0);
      NewVersion(r, p);
      addrs.push_back(a);
      pages.insert(pages.end(), p.begin(), p.end());
    }
    OwnedBytes enc;
    EncodeStats st;
    EncodeOptions opt;
    opt.xor_runs = r.Chance(10);
    opt.compress = !r.Chance(10);
    std::string err = EncodeBatch(cache, addrs.data(), pages.data(), n, opt, &enc, &st);
    if (!err.empty()) {
      checks.Fail("encode failed: " + err);
      continue;
    }
    std::string inv = cache.CheckInvariants();
    if (!inv.empty()) checks.Fail("cache invariant: " + inv);
    std::vector<uint8_t> data(enc.data.get(), enc.data.get() + enc.size);

    // The batch itself decodes to exactly the input.
    Outcome good = Decode(data, store, checks, r.Chance(50));
    ++decoded;
    Outcome ref = RefDecode(data, store);
    if (!good.ok) {
      checks.Fail("iteration " + std::to_string(it) + ": a good batch was refused: " + good.error);
      continue;
    }
    if (!ref.ok || !Same(good, ref)) checks.Fail("iteration " + std::to_string(it) + ": reference decoder disagrees on a good batch: " + ref.error);
    {
      std::vector<uint8_t> expect_pages;
      std::vector<uint64_t> expect_addrs, expect_zeros;
      std::vector<uint8_t> kinds;
      for (size_t i = 0; i < n; ++i) {
        const uint8_t* p = pages.data() + i * kPage;
        bool zero = true;
        for (size_t k = 0; k < kPage && zero; ++k) zero = p[k] == 0;
        kinds.push_back(zero ? kZero : kFull);
        if (zero) expect_zeros.push_back(addrs[i]);
        else {
          expect_addrs.push_back(addrs[i]);
          expect_pages.insert(expect_pages.end(), p, p + kPage);
        }
      }
      if (good.addrs != expect_addrs || good.zeros != expect_zeros || good.pages != expect_pages)
        checks.Fail("iteration " + std::to_string(it) + ": decoded pages differ from the input");
      // A delta against another version is refused.
      if (st.delta > 0) {
        Outcome wrong = Decode(data, store, checks, r.Chance(50), true);
        if (wrong.ok || wrong.error.find("version check failed") == std::string::npos)
          checks.Fail("iteration " + std::to_string(it) + ": a delta against a wrong base was not refused: " + wrong.error);
      }

      ParsedBatch parsed;
      ParseBatch(data.data(), data.size(), &parsed);
      std::vector<uint8_t> body(parsed.body.get(), parsed.body.get() + parsed.body_len);
      for (uint64_t m = 0; m < mutations; ++m) {
        ++mutated;
        std::vector<uint8_t> bad;
        bool raw = r.Chance(50);
        if (raw) {
          bad = data;
          MutateRaw(r, bad);
        } else {
          std::vector<uint8_t> b2 = body;
          uint32_t count = static_cast<uint32_t>(n);
          uint8_t flags = parsed.flags;
          if (!r.Chance(40) || !MutateRuns(r, b2, count))
            for (int k = 1 + static_cast<int>(r.Below(2)); k > 0; --k) MutateBody(r, b2, count, flags);
          bad = Pack(b2, flags, count, r.Chance(50));
        }
        Outcome o = Decode(bad, store, checks, r.Chance(50));
        if (!o.ok) {
          ++refused;
          if (o.error.empty()) checks.Fail("an error without a message");
        } else {
          ++accepted;
        }
        if (raw) {
          if (o.ok) {
            if (Same(o, good)) ++identical;
            else checks.Fail("iteration " + std::to_string(it) + " mutation " + std::to_string(m) + ": damaged batch accepted with other pages");
          }
        } else {
          Outcome rf = RefDecode(bad, store);
          if (o.ok != rf.ok || (o.ok && !Same(o, rf)))
            checks.Fail("iteration " + std::to_string(it) + " mutation " + std::to_string(m) + ": decoder " +
                        (o.ok ? "accepted" : "refused (" + o.error + ")") + ", reference " + (rf.ok ? "accepted" : "refused (" + rf.error + ")"));
          if (o.ok && Same(o, good)) ++identical;
        }
      }
      Commit(store, good, addrs, kinds);
    }
  }
  printf("codec-fuzz: seed %" PRIu64 ", %" PRIu64 " iterations, %" PRIu64 " batches decoded, %" PRIu64
         " mutations: %" PRIu64 " refused, %" PRIu64 " accepted (%" PRIu64 " identical), %" PRIu64 " failures\n",
         seed, iterations, decoded, mutated, refused, accepted, identical, checks.failures);
  return checks.failures ? 1 : 0;
}
