// Page ranges and sets of address intervals.
#pragma once

#include <cstdint>
#include <map>
#include <utility>
#include <vector>

namespace remus {

struct PageRange {
  uint64_t start;   // page-aligned address
  uint64_t npages;
  uint64_t end() const { return start + npages * 4096; }
};

// Sorts and merges adjacent or overlapping ranges in place.
void Normalize(std::vector<PageRange>& ranges);
uint64_t CountPages(const std::vector<PageRange>& ranges);

// A set of disjoint half-open address intervals [start, end).
class IntervalSet {
 public:
  void Add(uint64_t start, uint64_t end);
  void Remove(uint64_t start, uint64_t end);
  // The parts of [start, end) that are in the set / not in the set.
  std::vector<std::pair<uint64_t, uint64_t>> Inside(uint64_t start, uint64_t end) const;
  std::vector<std::pair<uint64_t, uint64_t>> Outside(uint64_t start, uint64_t end) const;
  // Keeps only the parts that are also in `keep` (sorted, disjoint intervals).
  void IntersectWith(const std::vector<std::pair<uint64_t, uint64_t>>& keep);
  const std::map<uint64_t, uint64_t>& intervals() const { return map_; }
  bool empty() const { return map_.empty(); }
  void Clear() { map_.clear(); }

 private:
  std::map<uint64_t, uint64_t> map_;  // start -> end
};

}  // namespace remus
