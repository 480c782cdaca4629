#ifndef ZFARM_SCHEDULER_JOB_QUEUE_H_
#define ZFARM_SCHEDULER_JOB_QUEUE_H_

// The priority queue of QUEUED jobs: higher priority first, FIFO within a level,
// and aging: a job's effective priority is
//   priority + aging_per_minute * minutes waited
// so a low-priority job eventually overtakes a stream of newer high-priority ones.
//
// One FIFO per priority level; Pick() compares the level heads (the oldest job of a
// level always has that level's highest effective priority), so a pick costs
// O(levels + skipped jobs). Not thread-safe: the Scheduler guards it.

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"

namespace zfarm::scheduler {

class JobQueue {
 public:
  explicit JobQueue(double aging_per_minute) : aging_per_minute_(aging_per_minute) {}

  // Adds a job. `seq` orders jobs within a level (smaller = earlier) and must be
  // unique; `enqueue_time` is when it (re)entered the queue.
  void Push(const std::string& job_id, int priority, uint64_t seq, absl::Time enqueue_time);
  // Removes a job; false if absent.
  bool Remove(const std::string& job_id);
  bool Contains(const std::string& job_id) const { return index_.contains(job_id); }
  size_t size() const { return index_.size(); }
  // Jobs per priority level (for metrics).
  std::map<int, size_t> DepthByPriority() const;

  // The job with the highest effective priority at `now` for which `accept`
  // returns true, without removing it. Scans at most `max_scan` jobs.
  std::optional<std::string> Pick(absl::Time now,
                                  const std::function<bool(const std::string&)>& accept,
                                  size_t max_scan = 4096) const;

  // 0-based position of `job_id` if picked by an accept-all worker now (ignoring
  // aging across levels ahead of it); -1 if absent. O(n) in the worst case.
  int Position(const std::string& job_id) const;

  double EffectivePriority(int priority, absl::Time enqueue_time, absl::Time now) const;

 private:
  struct Item {
    std::string job_id;
    absl::Time enqueue_time;
  };
  struct Where {
    int priority;
    uint64_t seq;
  };

  const double aging_per_minute_;
  // priority -> (seq -> item); highest priority last.
  std::map<int, std::map<uint64_t, Item>> levels_;
  absl::flat_hash_map<std::string, Where> index_;
};

}  // namespace zfarm::scheduler

#endif  // ZFARM_SCHEDULER_JOB_QUEUE_H_
