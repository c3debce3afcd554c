#include "memory/buffer_pool.h"

#include <thread>

#include <algorithm>
#include <new>
#include <sys/mman.h>

namespace remus {

PageBuffer::~PageBuffer() {
  if (data_) munmap(data_, capacity_);
}

std::unique_ptr<PageBuffer> PageBuffer::Allocate(size_t capacity) {
  capacity = std::max<size_t>((capacity + 0xFFFF) & ~size_t{0xFFFF}, 0x10000);
  void* p = mmap(nullptr, capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  return std::make_unique<PageBuffer>(static_cast<uint8_t*>(p), capacity);
}

std::unique_ptr<PageBuffer> BufferPool::Take(size_t bytes) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    // Smallest retained buffer that fits.
    auto best = free_.end();
    for (auto it = free_.begin(); it != free_.end(); ++it)
      if ((*it)->capacity() >= bytes && (best == free_.end() || (*it)->capacity() < (*best)->capacity())) best = it;
    if (best != free_.end()) {
      auto buf = std::move(*best);
      free_.erase(best);
      return buf;
    }
  }
  // Leave room to grow: dirty sets fluctuate from epoch to epoch.
  return PageBuffer::Allocate(bytes + bytes / 4);
}

void BufferPool::Give(std::unique_ptr<PageBuffer> buf) {
  std::lock_guard<std::mutex> lock(mu_);
  free_.push_back(std::move(buf));
  auto retained = [this] {
    size_t n = 0;
    for (auto& b : free_) n += b->capacity();
    return n;
  };
  std::vector<std::unique_ptr<PageBuffer>> dropped;
  while (!free_.empty() && (free_.size() > max_buffers_ || retained() > max_bytes_)) {
    // Drop the smallest: the large ones are the expensive ones to make again.
    auto smallest = free_.begin();
    for (auto it = free_.begin(); it != free_.end(); ++it)
      if ((*it)->capacity() < (*smallest)->capacity()) smallest = it;
    dropped.push_back(std::move(*smallest));
    free_.erase(smallest);
  }
  // Unmapping a buffer of a whole large process (1 GiB: ~100 ms) would hold the caller,
  // the JavaScript thread that sends heartbeats: large ones are freed on a thread of their own.
  size_t bytes = 0;
  for (auto& b : dropped) bytes += b->capacity();
  if (bytes >= (size_t{64} << 20)) std::thread([d = std::move(dropped)]() mutable { d.clear(); }).detach();
}

}  // namespace remus
