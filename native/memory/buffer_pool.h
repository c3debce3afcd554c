// Page buffers that are handed to JavaScript without a copy and come back when JS is
// done with them (explicit release or garbage collection), so that steady-state epochs
// read into memory that is already faulted in: a fresh buffer costs a page fault and a
// zeroing per page, inside the pause.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

namespace remus {

class PageBuffer {
 public:
  PageBuffer(uint8_t* data, size_t capacity) : data_(data), capacity_(capacity) {}
  PageBuffer(const PageBuffer&) = delete;
  PageBuffer& operator=(const PageBuffer&) = delete;
  ~PageBuffer();
  uint8_t* data() const { return data_; }
  size_t capacity() const { return capacity_; }
  static std::unique_ptr<PageBuffer> Allocate(size_t capacity);

 private:
  uint8_t* data_;
  size_t capacity_;
};

class BufferPool : public std::enable_shared_from_this<BufferPool> {
 public:
  // Keeps at most `max_buffers` idle buffers, whatever their size: an epoch's buffer is as
  // large as its dirty set, and allocating one inside the pause costs a fault per page.
  // Several epochs can be alive at once (queued for the sender), hence more than two.
  // Idle memory stays under `max_bytes` (the smallest buffers go first).
  explicit BufferPool(size_t max_buffers = 8, size_t max_bytes = size_t{256} << 20)
      : max_buffers_(max_buffers), max_bytes_(max_bytes) {}
  // A buffer of at least `bytes`, reused when possible. Thread-safe.
  std::unique_ptr<PageBuffer> Take(size_t bytes);
  // Returns a buffer; kept for reuse while the pool holds less than its limit.
  void Give(std::unique_ptr<PageBuffer> buf);

 private:
  std::mutex mu_;
  std::vector<std::unique_ptr<PageBuffer>> free_;
  size_t max_buffers_;
  size_t max_bytes_;
};

}  // namespace remus
