#pragma once

#include <functional>
#include <unordered_map>

#include "dirty/backend.h"

namespace remus {

// Compares a 64-bit hash of every page with the previous epoch's. Needs nothing from
// the kernel beyond /proc/PID/pagemap and process_vm_readv; reads all tracked memory
// each epoch, so it is the slowest. Also covers, inside the uffd-wp backend, the
// mappings a kernel will not write-protect.
class HashBackend : public DirtyBackend {
 public:
  using Selector = std::function<bool(const Vma&)>;
  explicit HashBackend(Selector select = nullptr) : select_(std::move(select)) {}
  const char* name() const override { return "hash"; }
  void Arm(TargetView& target) override;
  void Collect(TargetView& target, DirtyReport& out) override;

 private:
  static const uint64_t kZeroHash;
  Selector select_;
  IntervalSet tracked_;
  std::unordered_map<uint64_t, uint64_t> hashes_;  // page address -> hash of its content
  std::vector<uint8_t> buf_;
};

// 64-bit hash of one 4 KiB page; never 0.
uint64_t HashPage(const uint8_t* page);

}  // namespace remus
