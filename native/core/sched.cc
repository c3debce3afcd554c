#include "core/sched.h"

#include <cerrno>
#include <pthread.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace remus {

ScopedUrgency::ScopedUrgency() {
  if (pthread_getschedparam(pthread_self(), &old_policy_, &old_param_) != 0) return;
  struct sched_param p {};
  p.sched_priority = 1;  // the lowest real-time priority is enough to beat every normal thread
  if (pthread_setschedparam(pthread_self(), SCHED_FIFO, &p) == 0) {
    mode_ = Mode::kFifo;
    return;
  }
  pid_t tid = static_cast<pid_t>(syscall(SYS_gettid));
  errno = 0;
  old_nice_ = getpriority(PRIO_PROCESS, static_cast<id_t>(tid));
  if (errno == 0 && setpriority(PRIO_PROCESS, static_cast<id_t>(tid), -10) == 0) mode_ = Mode::kNice;
}

ScopedUrgency::~ScopedUrgency() {
  if (mode_ == Mode::kFifo) {
    pthread_setschedparam(pthread_self(), old_policy_, &old_param_);
  } else if (mode_ == Mode::kNice) {
    setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), old_nice_);
  }
}

}  // namespace remus
