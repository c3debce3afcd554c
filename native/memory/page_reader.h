// Reading many pages of another process at once.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <sys/types.h>
#include <thread>
#include <vector>

#include "memory/ranges.h"

namespace remus {

class PageReader {
 public:
  explicit PageReader(pid_t pid);
  ~PageReader();
  PageReader(const PageReader&) = delete;
  PageReader& operator=(const PageReader&) = delete;

  // Reads every page of `ranges` into `out`, in order. process_vm_readv does the bulk in
  // batches of IOV_MAX ranges; pages it cannot read (PROT_NONE, a range that just went
  // away) are read through /proc/PID/mem, which may read non-readable mappings. Large
  // sets are split in two and read by two threads: the target is frozen while this runs,
  // so its cores are idle, and copying is what the pause is made of. Throws NativeError
  // if a page can be read neither way.
  void Read(const std::vector<PageRange>& ranges, uint8_t* out);

 private:
  void ReadSerial(const std::vector<PageRange>& ranges, uint8_t* out);
  void ReadSlow(uint64_t addr, uint64_t len, uint8_t* out);
  void HelperLoop();

  pid_t pid_;
  std::mutex mem_mu_;
  int mem_fd_ = -1;

  // The second reader thread, started on first use.
  std::thread helper_;
  std::mutex mu_;
  std::condition_variable cv_;
  const std::vector<PageRange>* job_ = nullptr;
  uint8_t* job_out_ = nullptr;
  bool job_done_ = false;
  bool stopping_ = false;
  std::exception_ptr job_error_;
};

}  // namespace remus
