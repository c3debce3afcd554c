// Buffers for batches (64 KiB and more) kept for reuse: a fresh megabyte from malloc or
// mmap costs 256 page faults and zeroings, more than encoding or decoding it, and glibc
// gives large freed blocks back to the kernel. Blocks come from mmap and go back to a small
// process-wide cache (at most 16 blocks, 128 MiB) when freed; smaller buffers use the heap.
// Thread-safe. Napi-free (the fuzz harness uses it too).
#pragma once

#include <cstddef>
#include <cstdint>

namespace remus {

class LargeBuffer {
 public:
  LargeBuffer() = default;
  explicit LargeBuffer(size_t size);  // uninitialized; throws std::bad_alloc
  ~LargeBuffer() { Reset(); }
  LargeBuffer(const LargeBuffer&) = delete;
  LargeBuffer& operator=(const LargeBuffer&) = delete;
  LargeBuffer(LargeBuffer&& o) noexcept : p_(o.p_), cap_(o.cap_) { o.p_ = nullptr; o.cap_ = 0; }
  LargeBuffer& operator=(LargeBuffer&& o) noexcept {
    if (this != &o) {
      Reset();
      p_ = o.p_; cap_ = o.cap_;
      o.p_ = nullptr; o.cap_ = 0;
    }
    return *this;
  }
  uint8_t* get() const { return p_; }
  // Gives up ownership: the caller frees with FreeLargeBuffer(p, *cap).
  uint8_t* Release(size_t* cap) {
    uint8_t* p = p_;
    *cap = cap_;
    p_ = nullptr;
    cap_ = 0;
    return p;
  }
  void Reset();

 private:
  uint8_t* p_ = nullptr;
  size_t cap_ = 0;  // 0: heap (new[]); otherwise the mapped block's size
};

void FreeLargeBuffer(uint8_t* p, size_t cap);

}  // namespace remus
