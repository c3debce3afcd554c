// The primary's shadow cache: the version of each page last sent to the standby, the base
// of the next delta of that page. Bounded in bytes: every byte it allocates (page slots,
// their metadata, the hash table) counts against `max_bytes`, all fixed at construction
// (the page slab is reserved with mmap and filled as pages arrive, so a cache that holds
// little costs little).
//
// Eviction (when full and a page that is not cached is sent whole): LRU, the default, or
// CLOCK. LRU evicts the page least recently sent (a doubly linked list through the slots,
// relinked on every hit); CLOCK keeps one reference bit per page, set on every use, and a
// hand that sweeps the slots clearing set bits and evicts the first page whose bit is clear.
// Measured on Zipf-skewed streams of dirty pages (bench/codec, "shadow cache eviction" in
// docs/benchmarks.md: s = 0.8 to 1.2, working sets 2x to 16x the cache), LRU's hit ratio
// is higher than CLOCK's in every case, by about one point, and the relinking CLOCK saves
// does not show next to the 4 KiB a hit compares: hence LRU. Every miss costs a FULL page
// (about 4 KiB on the wire before LZ4) instead of a delta of tens of bytes.
//
// Not thread-safe: one caller at a time (ShadowCacheWrap serialises JS calls).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace remus {

enum class Eviction { kClock, kLru };

struct CacheSlot {
  uint64_t pn;       // page number (address >> 12)
  uint32_t crc;      // CRC-32C of the slot's content, when crc_valid
  uint32_t stamp;    // the batch that last touched this page (see EncodeBatch)
  uint32_t prev, next;  // LRU list (kNone at the ends)
  uint8_t ref;       // CLOCK reference bit
  uint8_t crc_valid;
  uint8_t used;
  uint8_t pad;
};

struct CacheCounters {
  uint64_t hits = 0, misses = 0, evictions = 0, inserts = 0, erased = 0;
};

class ShadowCache {
 public:
  static constexpr uint32_t kNone = 0xffffffffu;
  static constexpr size_t kPage = 4096;

  // Throws std::invalid_argument when `max_bytes` cannot hold a single page.
  ShadowCache(size_t max_bytes, Eviction policy);
  ~ShadowCache();
  ShadowCache(const ShadowCache&) = delete;
  ShadowCache& operator=(const ShadowCache&) = delete;

  // The slot of page `pn`, or kNone; a hit counts as a use (CLOCK bit, LRU position).
  uint32_t Find(uint64_t pn);
  // Adds `pn` (which must not be cached), evicting a page when full. Returns its slot,
  // whose content is undefined until the caller writes it.
  uint32_t Insert(uint64_t pn);
  // Forgets `pn` if cached.
  void Erase(uint64_t pn);
  // Forgets every page whose address is not inside one of `n` [start, end) byte ranges
  // (sorted by start, not overlapping). Returns how many were forgotten.
  size_t Retain(const uint64_t* ranges, size_t n);
  // Forgets everything and gives the slab's memory back to the kernel.
  void Clear();

  uint8_t* Data(uint32_t slot) { return slab_ + static_cast<size_t>(slot) * kPage; }
  CacheSlot& Meta(uint32_t slot) { return slots_[slot]; }

  size_t entries() const { return entries_; }
  size_t capacity() const { return capacity_; }
  size_t max_bytes() const { return max_bytes_; }
  // Bytes in use: cached pages plus the fixed metadata. Never above max_bytes().
  size_t bytes() const { return entries_ * kPage + meta_bytes_; }
  Eviction policy() const { return policy_; }
  const CacheCounters& counters() const { return counters_; }
  CacheCounters& counters() { return counters_; }

  // Per-batch scratch space owned by the cache (EncodeBatch), not counted in bytes().
  std::vector<uint8_t>& scratch() { return scratch_; }
  std::vector<uint8_t>& scratch2() { return scratch2_; }
  uint32_t NextStamp() { return ++stamp_ == 0 ? ++stamp_ : stamp_; }

  // For tests: checks the table, the list and the counts; returns what is wrong or "".
  std::string CheckInvariants() const;

  // The metadata bytes a cache of `capacity` pages needs.
  static size_t MetaBytesFor(size_t capacity);

 private:
  size_t Bucket(uint64_t pn) const { return static_cast<size_t>((pn * 0x9e3779b97f4a7c15ull) >> shift_); }
  size_t Lookup(uint64_t pn) const;  // bucket index holding pn, or kNoBucket
  void TableErase(size_t bucket);
  void Unlink(uint32_t slot);
  void PushFront(uint32_t slot);
  uint32_t Victim();
  void Remove(uint32_t slot);

  static constexpr size_t kNoBucket = ~static_cast<size_t>(0);

  size_t max_bytes_;
  Eviction policy_;
  size_t capacity_ = 0;
  size_t meta_bytes_ = 0;
  uint8_t* slab_ = nullptr;
  size_t slab_len_ = 0;
  std::vector<CacheSlot> slots_;
  std::vector<uint32_t> table_;  // slot index or kNone; power-of-two size
  unsigned shift_ = 0;
  size_t mask_ = 0;
  std::vector<uint32_t> free_;
  size_t high_water_ = 0;
  size_t entries_ = 0;
  uint32_t hand_ = 0;
  uint32_t head_ = kNone, tail_ = kNone;
  uint32_t stamp_ = 0;
  CacheCounters counters_;
  std::vector<uint8_t> scratch_, scratch2_;
};

}  // namespace remus
