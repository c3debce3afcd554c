#include "dirty/pagemap.h"

#include <algorithm>
#include <cerrno>
#include <unistd.h>

#include "core/kernel_abi.h"

namespace remus {

int ReadPagemap(int pagemap_fd, uint64_t start, uint64_t end, std::vector<uint64_t>& out) {
  uint64_t n = (end - start) / 4096;
  out.resize(n);
  uint64_t done = 0;
  while (done < n) {
    ssize_t r = pread(pagemap_fd, out.data() + done, (n - done) * 8, static_cast<off_t>((start / 4096 + done) * 8));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return r < 0 ? errno : EIO;
    done += static_cast<uint64_t>(r) / 8;
  }
  return 0;
}

namespace {
void AppendRun(std::vector<PageRange>* out, uint64_t addr) {
  if (!out) return;
  if (!out->empty() && out->back().end() == addr) {
    out->back().npages++;
  } else {
    out->push_back({addr, 1});
  }
}
}  // namespace

void ParsePagemap(const uint64_t* entries, uint64_t count, uint64_t start, std::vector<PageRange>* present,
                  std::vector<PageRange>* soft_dirty, uint64_t marker_frame) {
  constexpr uint64_t kFrameMask = (1ull << 55) - 1;
  for (uint64_t i = 0; i < count; ++i) {
    uint64_t e = entries[i];
    if (!(e & (abi::kPmPresent | abi::kPmSwapped)) || (e & abi::kPmFileOrShared)) continue;
    if (marker_frame && !(e & abi::kPmPresent) && (e & kFrameMask) == marker_frame) continue;
    uint64_t addr = start + i * 4096;
    AppendRun(present, addr);
    if (e & abi::kPmSoftDirty) AppendRun(soft_dirty, addr);
  }
}

void PresenceMap::Update(uint64_t start, uint64_t end, const std::vector<PageRange>& present,
                         std::vector<PageRange>& zapped) {
  constexpr uint64_t kChunkBytes = 64 * 4096;
  uint64_t first = start / kChunkBytes, last = (end - 1) / kChunkBytes;
  // New bits for every chunk the range touches, from the present runs.
  std::vector<uint64_t> bits(last - first + 1, 0);
  for (const auto& r : present)
    for (uint64_t p = r.start; p < r.end(); p += 4096) bits[p / kChunkBytes - first] |= 1ull << ((p / 4096) % 64);
  auto it = std::lower_bound(current_.begin(), current_.end(), std::make_pair(first, uint64_t{0}));
  for (; it != current_.end() && it->first <= last; ++it) {
    uint64_t chunk = it->first;
    // Only pages inside [start, end) of this chunk belong to this update.
    uint64_t lo = std::max(start, chunk * kChunkBytes), hi = std::min(end, (chunk + 1) * kChunkBytes);
    uint64_t mask = 0;
    for (uint64_t p = lo; p < hi; p += 4096) mask |= 1ull << ((p / 4096) % 64);
    uint64_t lost = it->second & mask & ~bits[chunk - first];
    for (uint64_t b = 0; lost; ++b, lost >>= 1)
      if (lost & 1) AppendRun(&zapped, chunk * kChunkBytes + b * 4096);
  }
  for (uint64_t c = first; c <= last; ++c)
    if (bits[c - first]) next_.emplace_back(c, bits[c - first]);
}

void PresenceMap::Commit() {
  std::sort(next_.begin(), next_.end());
  // Two updates may share a chunk (adjacent ranges): merge their bits.
  std::vector<std::pair<uint64_t, uint64_t>> merged;
  for (auto& e : next_) {
    if (!merged.empty() && merged.back().first == e.first) {
      merged.back().second |= e.second;
    } else {
      merged.push_back(e);
    }
  }
  current_ = std::move(merged);
  next_.clear();
}

}  // namespace remus
