#include "memory/page_reader.h"

#include "core/sched.h"

#include <cerrno>
#include <climits>
#include <cstring>
#include <fcntl.h>
#include <string>
#include <sys/uio.h>
#include <unistd.h>

#include "core/errors.h"

namespace remus {

PageReader::PageReader(pid_t pid) : pid_(pid) {}

PageReader::~PageReader() {
  if (helper_.joinable()) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    helper_.join();
  }
  if (mem_fd_ >= 0) close(mem_fd_);
}

void PageReader::HelperLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [this] { return stopping_ || job_ != nullptr; });
    if (stopping_) return;
    const std::vector<PageRange>* job = job_;
    uint8_t* out = job_out_;
    lock.unlock();
    std::exception_ptr error;
    try {
      ScopedUrgency urgent;  // it works inside a freeze, like the tracer thread
      ReadSerial(*job, out);
    } catch (...) {
      error = std::current_exception();
    }
    lock.lock();
    job_ = nullptr;
    job_error_ = error;
    job_done_ = true;
    cv_.notify_all();
  }
}

void PageReader::Read(const std::vector<PageRange>& ranges, uint8_t* out) {
  constexpr uint64_t kParallelPages = 512;  // below 2 MiB a second thread does not pay
  uint64_t total = CountPages(ranges);
  if (total < kParallelPages) return ReadSerial(ranges, out);
  // Split at half the pages, cutting a range in two if needed.
  std::vector<PageRange> first, second;
  uint64_t half = total / 2, seen = 0;
  for (const auto& r : ranges) {
    if (seen >= half) {
      second.push_back(r);
    } else if (seen + r.npages <= half) {
      first.push_back(r);
    } else {
      uint64_t head = half - seen;
      first.push_back({r.start, head});
      second.push_back({r.start + head * 4096, r.npages - head});
    }
    seen += r.npages;
  }
  if (!helper_.joinable()) helper_ = std::thread([this] { HelperLoop(); });
  {
    std::lock_guard<std::mutex> lock(mu_);
    job_ = &second;
    job_out_ = out + half * 4096;
    job_done_ = false;
    job_error_ = nullptr;
  }
  cv_.notify_all();
  std::exception_ptr mine;
  try {
    ReadSerial(first, out);
  } catch (...) {
    mine = std::current_exception();
  }
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [this] { return job_done_; });
  if (mine) std::rethrow_exception(mine);
  if (job_error_) std::rethrow_exception(job_error_);
}

void PageReader::ReadSlow(uint64_t addr, uint64_t len, uint8_t* out) {
  {
    std::lock_guard<std::mutex> lock(mem_mu_);
    if (mem_fd_ < 0) {
      mem_fd_ = open(("/proc/" + std::to_string(pid_) + "/mem").c_str(), O_RDONLY | O_CLOEXEC);
      if (mem_fd_ < 0) ThrowSys(pid_, "read_pages", errno, "opening /proc/PID/mem");
    }
  }
  while (len > 0) {
    ssize_t n = pread(mem_fd_, out, len, static_cast<off_t>(addr));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      // The range is gone (unmapped): it reads as nothing. Report it; the caller's
      // layout no longer has it either if the target is frozen, so this is a real error.
      ThrowSys(pid_, "read_pages", n < 0 ? errno : EFAULT,
               "reading page " + std::to_string(addr) + " through /proc/PID/mem");
    }
    addr += static_cast<uint64_t>(n);
    out += n;
    len -= static_cast<uint64_t>(n);
  }
}

void PageReader::ReadSerial(const std::vector<PageRange>& ranges, uint8_t* out) {
  constexpr size_t kBatch = IOV_MAX;
  std::vector<struct iovec> remote;
  remote.reserve(kBatch);
  size_t i = 0;
  while (i < ranges.size()) {
    remote.clear();
    uint64_t batch_bytes = 0;
    size_t first = i;
    for (; i < ranges.size() && remote.size() < kBatch; ++i) {
      uint64_t len = ranges[i].npages * 4096;
      remote.push_back({reinterpret_cast<void*>(ranges[i].start), len});
      batch_bytes += len;
    }
    struct iovec local = {out, batch_bytes};
    ssize_t n = process_vm_readv(pid_, &local, 1, remote.data(), remote.size(), 0);
    if (n < 0 && errno != EFAULT) ThrowSys(pid_, "read_pages", errno, "process_vm_readv");
    uint64_t done = n < 0 ? 0 : static_cast<uint64_t>(n);
    if (done < batch_bytes) {
      // process_vm_readv stops at the first range it cannot read: finish the rest of the
      // batch range by range, the unreadable ones through /proc/PID/mem.
      uint64_t off = 0;
      for (size_t k = first; k < i; ++k) {
        uint64_t len = ranges[k].npages * 4096;
        if (off + len <= done) {
          off += len;
          continue;
        }
        uint64_t skip = done > off ? done - off : 0;
        uint64_t addr = ranges[k].start + skip;
        uint64_t rest = len - skip;
        struct iovec l = {out + off + skip, rest};
        struct iovec r = {reinterpret_cast<void*>(addr), rest};
        ssize_t m = process_vm_readv(pid_, &l, 1, &r, 1, 0);
        uint64_t got = m > 0 ? static_cast<uint64_t>(m) : 0;
        if (got < rest) ReadSlow(addr + got, rest - got, out + off + skip + got);
        off += len;
      }
    }
    out += batch_bytes;
  }
}

}  // namespace remus
