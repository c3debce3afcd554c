#include "codec/large_buffer.h"

#include <mutex>
#include <new>
#include <sys/mman.h>
#include <vector>

namespace remus {
namespace {

constexpr size_t kFrom = 64 * 1024;
constexpr size_t kMaxBlocks = 16;
constexpr size_t kMaxBytes = size_t{128} << 20;

struct Cache {
  std::mutex mu;
  std::vector<std::pair<uint8_t*, size_t>> free;  // most recently freed last
  size_t bytes = 0;
};

Cache& C() {
  static Cache* c = new Cache();  // never destroyed: JS finalizers may free late
  return *c;
}

}  // namespace

LargeBuffer::LargeBuffer(size_t size) {
  if (size < kFrom) {
    p_ = size ? new uint8_t[size] : nullptr;
    cap_ = 0;
    return;
  }
  Cache& c = C();
  {
    std::lock_guard<std::mutex> lock(c.mu);
    // The most recently freed block that fits without wasting more than half of it.
    for (size_t i = c.free.size(); i-- > 0;) {
      auto [p, cap] = c.free[i];
      if (cap >= size && cap / 2 <= size) {
        c.free.erase(c.free.begin() + static_cast<long>(i));
        c.bytes -= cap;
        p_ = p;
        cap_ = cap;
        return;
      }
    }
  }
  size_t cap = (size + kFrom - 1) & ~(kFrom - 1);
  void* p = mmap(nullptr, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  p_ = static_cast<uint8_t*>(p);
  cap_ = cap;
}

void LargeBuffer::Reset() {
  if (p_) FreeLargeBuffer(p_, cap_);
  p_ = nullptr;
  cap_ = 0;
}

void FreeLargeBuffer(uint8_t* p, size_t cap) {
  if (!p) return;
  if (cap == 0) {
    delete[] p;
    return;
  }
  Cache& c = C();
  std::vector<std::pair<uint8_t*, size_t>> drop;
  {
    std::lock_guard<std::mutex> lock(c.mu);
    c.free.emplace_back(p, cap);
    c.bytes += cap;
    while (c.free.size() > kMaxBlocks || c.bytes > kMaxBytes) {
      drop.push_back(c.free.front());  // the oldest goes
      c.bytes -= c.free.front().second;
      c.free.erase(c.free.begin());
    }
  }
  for (auto& [q, n] : drop) munmap(q, n);
}

}  // namespace remus
