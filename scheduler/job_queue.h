#ifndef ZFARM_SCHEDULER_JOB_QUEUE_H_
#define ZFARM_SCHEDULER_JOB_QUEUE_H_

// The priority queue of QUEUED jobs: higher priority first, fair share between
// owners within a level, and aging across levels.
//
//  - Levels are ordered by the effective priority of their oldest job,
//      priority + aging_per_minute * minutes waited,
//    so an old low-priority job eventually overtakes a stream of newer
//    high-priority ones.
//  - Within a level, owners (principals, Job.owner) take turns: the owner served
//    least recently goes first, FIFO within an owner. One team's 1,000 queued
//    jobs delay another team's single job by at most one pick per worker slot.
//    Take() (a dispatch) moves the owner to the back of its level's turn order;
//    Remove() (cancel, deadline) does not.
//
// Pick() costs O(levels + owners in the level + skipped jobs). Not thread-safe:
// the Scheduler guards it.

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

  // Adds a job. `seq` orders jobs within an owner (smaller = earlier) and must be
  // unique; `enqueue_time` is when it (re)entered the queue.
  void Push(const std::string& job_id, int priority, uint64_t seq, absl::Time enqueue_time,
            const std::string& owner = "");
  // Removes a job; false if absent.
  bool Remove(const std::string& job_id);
  // Removes a job that is being dispatched: its owner's turn ends (fair share).
  bool Take(const std::string& job_id);
  bool Contains(const std::string& job_id) const { return index_.contains(job_id); }
  size_t size() const { return index_.size(); }
  // QUEUED jobs of `owner` across all levels.
  size_t OwnerSize(const std::string& owner) const;
  // Jobs per priority level (for metrics).
  std::map<int, size_t> DepthByPriority() const;

  // The next job to dispatch at `now` for which `accept` returns true, without
  // removing it. Scans at most `max_scan` jobs.
  std::optional<std::string> Pick(absl::Time now,
                                  const std::function<bool(const std::string&)>& accept,
                                  size_t max_scan = 4096) const;

  // 0-based position of `job_id` if picked by an accept-all worker now (ignoring
  // aging across levels ahead of it); -1 if absent. O(owners in its level +
  // min(distance to the front, to the back) of its owner's FIFO).
  int Position(const std::string& job_id) const;

  double EffectivePriority(int priority, absl::Time enqueue_time, absl::Time now) const;

 private:
  struct Item {
    std::string job_id;
    absl::Time enqueue_time;
  };
  struct Owner {
    std::map<uint64_t, Item> items;  // FIFO by seq
    uint64_t turn = 0;               // smaller = served sooner
  };
  struct Level {
    std::map<std::string, Owner> owners;
    std::map<uint64_t, std::string> turns;  // turn -> owner
    uint64_t next_turn = 0;
    size_t size = 0;
  };
  struct Where {
    int priority;
    uint64_t seq;
    std::string owner;
  };
  bool RemoveImpl(const std::string& job_id, bool rotate);

  const double aging_per_minute_;
  // priority -> level; highest priority last.
  std::map<int, Level> levels_;
  absl::flat_hash_map<std::string, Where> index_;
  absl::flat_hash_map<std::string, size_t> owner_size_;
};

}  // namespace zfarm::scheduler

#endif  // ZFARM_SCHEDULER_JOB_QUEUE_H_
