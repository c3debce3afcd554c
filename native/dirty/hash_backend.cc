#include "dirty/hash_backend.h"

#include <cstring>

#include "core/errors.h"
#include "dirty/pagemap.h"
#include "memory/page_reader.h"

namespace remus {

uint64_t HashPage(const uint8_t* page) {
  // Four independent multiply-rotate lanes over the page's 512 words, then a mix.
  constexpr uint64_t k1 = 0x9E3779B185EBCA87ull, k2 = 0xC2B2AE3D27D4EB4Full;
  uint64_t a = k1, b = k2, c = k1 ^ k2, d = k2 * 3;
  for (size_t i = 0; i < 4096; i += 32) {
    uint64_t w[4];
    memcpy(w, page + i, 32);
    a = ((a ^ w[0]) * k1);
    a = (a << 31) | (a >> 33);
    b = ((b ^ w[1]) * k1);
    b = (b << 31) | (b >> 33);
    c = ((c ^ w[2]) * k1);
    c = (c << 31) | (c >> 33);
    d = ((d ^ w[3]) * k1);
    d = (d << 31) | (d >> 33);
  }
  uint64_t h = a * k2 ^ ((b << 17) | (b >> 47)) ^ c * k1 ^ ((d << 43) | (d >> 21));
  h ^= h >> 29;
  h *= k2;
  h ^= h >> 32;
  return h | 1;
}

const uint64_t HashBackend::kZeroHash = [] {
  static const uint8_t zero[4096] = {};
  return HashPage(zero);
}();

void HashBackend::Arm(TargetView& target) {
  DirtyReport discard;
  Collect(target, discard);
}

void HashBackend::Collect(TargetView& target, DirtyReport& out) {
  // Which ranges to hash: selected mappings that are writable, plus what was tracked
  // before and is still mapped privately.
  IntervalSet now;
  for (const auto& v : target.vmas) {
    if (!v.private_memory() || (select_ && !select_(v))) continue;
    if (v.writable()) {
      now.Add(v.start, v.end);
    } else {
      for (auto& [s, e] : tracked_.Inside(v.start, v.end)) now.Add(s, e);
    }
  }
  std::unordered_map<uint64_t, uint64_t> next;
  next.reserve(hashes_.size());
  std::vector<uint64_t> entries;
  std::vector<PageRange> present;
  for (const auto& [start, end] : now.intervals()) {
    if (int e = ReadPagemap(target.pagemap_fd, start, end, entries))
      ThrowSys(target.pid, "hash_scan", e, "reading /proc/PID/pagemap");
    present.clear();
    ParsePagemap(entries.data(), entries.size(), start, &present, nullptr);
    // Read present pages in chunks of at most 16 MiB and hash them.
    constexpr uint64_t kChunkPages = 4096;
    for (const auto& r : present) {
      for (uint64_t done = 0; done < r.npages; done += kChunkPages) {
        PageRange part{r.start + done * 4096, std::min(kChunkPages, r.npages - done)};
        buf_.resize(part.npages * 4096);
        target.reader.Read({part}, buf_.data());
        out.pages_hashed += part.npages;
        for (uint64_t i = 0; i < part.npages; ++i) {
          uint64_t addr = part.start + i * 4096;
          uint64_t h = HashPage(buf_.data() + i * 4096);
          // A page without content reads as zeros: both count as the zero page (reading a
          // dropped page maps the zero page, which must not look like a write).
          if (h == kZeroHash) continue;
          next[addr] = h;
          auto old = hashes_.find(addr);
          if (old == hashes_.end()) {
            out.Add(addr, 1, tracked_.Inside(addr, addr + 4096).empty() ? out.pages_new : out.pages_written);
          } else if (old->second != h) {
            out.Add(addr, 1, out.pages_written);
          }
        }
      }
    }
  }
  // Pages that had content and have none (or only zeros) now: they read as zeros.
  for (const auto& [addr, h] : hashes_) {
    if (next.count(addr) || now.Inside(addr, addr + 4096).empty()) continue;
    out.Add(addr, 1, out.pages_zapped);
  }
  hashes_ = std::move(next);
  tracked_ = std::move(now);
}

}  // namespace remus
