#include "memory/ranges.h"

#include <algorithm>

namespace remus {

void Normalize(std::vector<PageRange>& ranges) {
  std::sort(ranges.begin(), ranges.end(), [](const PageRange& a, const PageRange& b) { return a.start < b.start; });
  size_t out = 0;
  for (size_t i = 0; i < ranges.size(); ++i) {
    if (ranges[i].npages == 0) continue;
    if (out > 0 && ranges[i].start <= ranges[out - 1].end()) {
      uint64_t end = std::max(ranges[out - 1].end(), ranges[i].end());
      ranges[out - 1].npages = (end - ranges[out - 1].start) / 4096;
    } else {
      ranges[out++] = ranges[i];
    }
  }
  ranges.resize(out);
}

uint64_t CountPages(const std::vector<PageRange>& ranges) {
  uint64_t n = 0;
  for (auto& r : ranges) n += r.npages;
  return n;
}

void IntervalSet::Add(uint64_t start, uint64_t end) {
  if (start >= end) return;
  auto it = map_.upper_bound(start);
  if (it != map_.begin()) {
    auto prev = std::prev(it);
    if (prev->second >= start) {
      start = prev->first;
      end = std::max(end, prev->second);
      it = map_.erase(prev);
    }
  }
  while (it != map_.end() && it->first <= end) {
    end = std::max(end, it->second);
    it = map_.erase(it);
  }
  map_[start] = end;
}

void IntervalSet::Remove(uint64_t start, uint64_t end) {
  if (start >= end) return;
  auto it = map_.upper_bound(start);
  if (it != map_.begin()) --it;
  while (it != map_.end() && it->first < end) {
    uint64_t s = it->first, e = it->second;
    if (e <= start) {
      ++it;
      continue;
    }
    it = map_.erase(it);
    if (s < start) map_[s] = start;
    if (e > end) {
      map_[end] = e;
      break;
    }
  }
}

std::vector<std::pair<uint64_t, uint64_t>> IntervalSet::Inside(uint64_t start, uint64_t end) const {
  std::vector<std::pair<uint64_t, uint64_t>> out;
  auto it = map_.upper_bound(start);
  if (it != map_.begin()) --it;
  for (; it != map_.end() && it->first < end; ++it) {
    uint64_t s = std::max(start, it->first), e = std::min(end, it->second);
    if (s < e) out.emplace_back(s, e);
  }
  return out;
}

std::vector<std::pair<uint64_t, uint64_t>> IntervalSet::Outside(uint64_t start, uint64_t end) const {
  std::vector<std::pair<uint64_t, uint64_t>> out;
  uint64_t pos = start;
  for (auto& [s, e] : Inside(start, end)) {
    if (s > pos) out.emplace_back(pos, s);
    pos = e;
  }
  if (pos < end) out.emplace_back(pos, end);
  return out;
}

void IntervalSet::IntersectWith(const std::vector<std::pair<uint64_t, uint64_t>>& keep) {
  IntervalSet result;
  for (auto& [s, e] : keep)
    for (auto& [a, b] : Inside(s, e)) result.Add(a, b);
  map_ = std::move(result.map_);
}

}  // namespace remus
