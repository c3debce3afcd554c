// Scheduling priority for the few milliseconds a target is frozen. On a busy machine a
// tracer thread of normal priority waits for a core while the target it froze stands
// still: the pause grows with the machine's load. Inside a freeze we ask for SCHED_FIFO
// (root or CAP_SYS_NICE), else the highest nice we may have, and give it back at thaw.
#pragma once

#include <sched.h>

namespace remus {

class ScopedUrgency {
 public:
  ScopedUrgency();
  ~ScopedUrgency();
  ScopedUrgency(const ScopedUrgency&) = delete;
  ScopedUrgency& operator=(const ScopedUrgency&) = delete;

 private:
  int old_policy_ = SCHED_OTHER;
  struct sched_param old_param_ {};
  int old_nice_ = 0;
  enum class Mode { kNone, kFifo, kNice } mode_ = Mode::kNone;
};

}  // namespace remus
