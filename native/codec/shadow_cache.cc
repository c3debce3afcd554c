#include "codec/shadow_cache.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <sys/mman.h>

namespace remus {
namespace {

size_t TableSizeFor(size_t capacity) {
  size_t n = 16;
  while (n < 2 * capacity) n <<= 1;  // load factor at most 1/2
  return n;
}

}  // namespace

size_t ShadowCache::MetaBytesFor(size_t capacity) {
  return capacity * (sizeof(CacheSlot) + sizeof(uint32_t)) + TableSizeFor(capacity) * sizeof(uint32_t);
}

ShadowCache::ShadowCache(size_t max_bytes, Eviction policy) : max_bytes_(max_bytes), policy_(policy) {
  auto fits = [max_bytes](size_t cap) { return cap * kPage + MetaBytesFor(cap) <= max_bytes; };
  size_t cap = max_bytes / (kPage + sizeof(CacheSlot) + 5 * sizeof(uint32_t));
  while (cap > 0 && !fits(cap)) --cap;
  while (fits(cap + 1)) ++cap;
  if (cap == 0)
    throw std::invalid_argument("maxBytes " + std::to_string(max_bytes) + " cannot hold one page (at least " +
                                std::to_string(kPage + MetaBytesFor(1)) + " bytes)");
  if (cap >= kNone) throw std::invalid_argument("maxBytes is too large");
  capacity_ = cap;
  meta_bytes_ = MetaBytesFor(cap);
  slab_len_ = cap * kPage;
  void* p = mmap(nullptr, slab_len_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED)
    throw std::runtime_error(std::string("shadow cache: cannot reserve ") + std::to_string(slab_len_) +
                             " bytes: " + strerror(errno));
  slab_ = static_cast<uint8_t*>(p);
  slots_.assign(cap, CacheSlot{0, 0, 0, kNone, kNone, 0, 0, 0, 0});
  size_t tsize = TableSizeFor(cap);
  table_.assign(tsize, kNone);
  mask_ = tsize - 1;
  shift_ = 64 - static_cast<unsigned>(__builtin_ctzll(tsize));
  free_.reserve(cap);
}

ShadowCache::~ShadowCache() {
  if (slab_) munmap(slab_, slab_len_);
}

size_t ShadowCache::Lookup(uint64_t pn) const {
  size_t b = Bucket(pn);
  for (;;) {
    uint32_t s = table_[b];
    if (s == kNone) return kNoBucket;
    if (slots_[s].pn == pn) return b;
    b = (b + 1) & mask_;
  }
}

void ShadowCache::TableErase(size_t i) {
  // Backward-shift deletion keeps every probe sequence unbroken without tombstones.
  size_t j = i;
  for (;;) {
    j = (j + 1) & mask_;
    uint32_t s = table_[j];
    if (s == kNone) break;
    size_t k = Bucket(slots_[s].pn);
    bool stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
    if (!stays) {
      table_[i] = s;
      i = j;
    }
  }
  table_[i] = kNone;
}

void ShadowCache::Unlink(uint32_t s) {
  CacheSlot& m = slots_[s];
  if (m.prev != kNone) slots_[m.prev].next = m.next; else head_ = m.next;
  if (m.next != kNone) slots_[m.next].prev = m.prev; else tail_ = m.prev;
  m.prev = m.next = kNone;
}

void ShadowCache::PushFront(uint32_t s) {
  CacheSlot& m = slots_[s];
  m.prev = kNone;
  m.next = head_;
  if (head_ != kNone) slots_[head_].prev = s; else tail_ = s;
  head_ = s;
}

uint32_t ShadowCache::Find(uint64_t pn) {
  size_t b = Lookup(pn);
  if (b == kNoBucket) {
    ++counters_.misses;
    return kNone;
  }
  ++counters_.hits;
  uint32_t s = table_[b];
  if (policy_ == Eviction::kClock) {
    slots_[s].ref = 1;
  } else if (head_ != s) {
    Unlink(s);
    PushFront(s);
  }
  return s;
}

uint32_t ShadowCache::Victim() {
  if (policy_ == Eviction::kLru) return tail_;
  // Every slot is in use when we evict (entries == capacity).
  for (;;) {
    uint32_t s = hand_;
    hand_ = hand_ + 1 == capacity_ ? 0 : hand_ + 1;
    if (!slots_[s].ref) return s;
    slots_[s].ref = 0;
  }
}

void ShadowCache::Remove(uint32_t s) {
  TableErase(Lookup(slots_[s].pn));
  if (policy_ == Eviction::kLru) Unlink(s);
  slots_[s].used = 0;
  slots_[s].ref = 0;
  free_.push_back(s);
  --entries_;
}

uint32_t ShadowCache::Insert(uint64_t pn) {
  if (entries_ == capacity_) {
    Remove(Victim());
    ++counters_.evictions;
  }
  uint32_t s;
  if (!free_.empty()) {
    s = free_.back();
    free_.pop_back();
  } else {
    s = static_cast<uint32_t>(high_water_++);
  }
  CacheSlot& m = slots_[s];
  m.pn = pn;
  m.used = 1;
  m.ref = 1;
  m.crc_valid = 0;
  m.stamp = 0;
  size_t b = Bucket(pn);
  while (table_[b] != kNone) b = (b + 1) & mask_;
  table_[b] = s;
  if (policy_ == Eviction::kLru) PushFront(s);
  ++entries_;
  ++counters_.inserts;
  return s;
}

void ShadowCache::Erase(uint64_t pn) {
  size_t b = Lookup(pn);
  if (b == kNoBucket) return;
  Remove(table_[b]);
  ++counters_.erased;
}

size_t ShadowCache::Retain(const uint64_t* ranges, size_t n) {
  size_t dropped = 0;
  for (size_t s = 0; s < high_water_; ++s) {
    if (!slots_[s].used) continue;
    uint64_t addr = slots_[s].pn << 12;
    // The last range starting at or before addr.
    size_t lo = 0, hi = n;
    while (lo < hi) {
      size_t mid = (lo + hi) / 2;
      if (ranges[2 * mid] <= addr) lo = mid + 1; else hi = mid;
    }
    bool inside = lo > 0 && addr < ranges[2 * (lo - 1) + 1];
    if (!inside) {
      Remove(static_cast<uint32_t>(s));
      ++counters_.erased;
      ++dropped;
    }
  }
  return dropped;
}

void ShadowCache::Clear() {
  std::fill(table_.begin(), table_.end(), kNone);
  for (size_t s = 0; s < high_water_; ++s) slots_[s] = CacheSlot{0, 0, 0, kNone, kNone, 0, 0, 0, 0};
  free_.clear();
  if (high_water_) madvise(slab_, high_water_ * kPage, MADV_DONTNEED);
  high_water_ = 0;
  entries_ = 0;
  hand_ = 0;
  head_ = tail_ = kNone;
}

std::string ShadowCache::CheckInvariants() const {
  size_t used = 0;
  for (size_t s = 0; s < high_water_; ++s) {
    if (!slots_[s].used) continue;
    ++used;
    size_t b = Lookup(slots_[s].pn);
    if (b == kNoBucket || table_[b] != s) return "slot " + std::to_string(s) + " is not found through the table";
  }
  if (used != entries_) return "entries " + std::to_string(entries_) + " but " + std::to_string(used) + " slots in use";
  size_t in_table = 0;
  for (uint32_t s : table_)
    if (s != kNone) ++in_table;
  if (in_table != entries_) return "table holds " + std::to_string(in_table) + " entries, expected " + std::to_string(entries_);
  if (entries_ > capacity_) return "more entries than capacity";
  if (bytes() > max_bytes_) return "bytes above max_bytes";
  if (policy_ == Eviction::kLru) {
    size_t n = 0;
    for (uint32_t s = head_; s != kNone; s = slots_[s].next)
      if (++n > entries_) return "LRU list has a cycle";
    if (n != entries_) return "LRU list holds " + std::to_string(n) + " entries, expected " + std::to_string(entries_);
  }
  if (free_.size() + entries_ != high_water_) return "free list and entries do not add up";
  return "";
}

}  // namespace remus
