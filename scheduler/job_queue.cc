#include "scheduler/job_queue.h"

#include <algorithm>
#include <vector>

namespace zfarm::scheduler {

void JobQueue::Push(const std::string& job_id, int priority, uint64_t seq,
                    absl::Time enqueue_time) {
  Remove(job_id);
  levels_[priority].emplace(seq, Item{job_id, enqueue_time});
  index_[job_id] = Where{priority, seq};
}

bool JobQueue::Remove(const std::string& job_id) {
  auto it = index_.find(job_id);
  if (it == index_.end()) return false;
  auto level = levels_.find(it->second.priority);
  level->second.erase(it->second.seq);
  if (level->second.empty()) levels_.erase(level);
  index_.erase(it);
  return true;
}

std::map<int, size_t> JobQueue::DepthByPriority() const {
  std::map<int, size_t> out;
  for (const auto& [p, items] : levels_) out[p] = items.size();
  return out;
}

double JobQueue::EffectivePriority(int priority, absl::Time enqueue_time, absl::Time now) const {
  double waited_min = std::max(0.0, absl::ToDoubleMinutes(now - enqueue_time));
  return priority + aging_per_minute_ * waited_min;
}

std::optional<std::string> JobQueue::Pick(absl::Time now,
                                          const std::function<bool(const std::string&)>& accept,
                                          size_t max_scan) const {
  // Order levels by the effective priority of their heads; within a level FIFO
  // order is also effective-priority order. Ties go to the higher base level.
  struct Head {
    double eff;
    int priority;
    const std::map<uint64_t, Item>* items;
  };
  std::vector<Head> heads;
  heads.reserve(levels_.size());
  for (auto it = levels_.rbegin(); it != levels_.rend(); ++it) {
    const Item& first = it->second.begin()->second;
    heads.push_back(
        {EffectivePriority(it->first, first.enqueue_time, now), it->first, &it->second});
  }
  std::stable_sort(heads.begin(), heads.end(),
                   [](const Head& a, const Head& b) { return a.eff > b.eff; });
  // Merge the level FIFOs by effective priority, skipping rejected jobs.
  std::vector<std::map<uint64_t, Item>::const_iterator> cursor;
  for (const Head& h : heads) cursor.push_back(h.items->begin());
  size_t scanned = 0;
  while (scanned < max_scan) {
    int best = -1;
    double best_eff = 0;
    for (size_t i = 0; i < heads.size(); ++i) {
      if (cursor[i] == heads[i].items->end()) continue;
      double eff = EffectivePriority(heads[i].priority, cursor[i]->second.enqueue_time, now);
      if (best < 0 || eff > best_eff) {
        best = static_cast<int>(i);
        best_eff = eff;
      }
    }
    if (best < 0) return std::nullopt;
    const std::string& id = cursor[best]->second.job_id;
    if (accept(id)) return id;
    ++cursor[best];
    ++scanned;
  }
  return std::nullopt;
}

int JobQueue::Position(const std::string& job_id) const {
  auto it = index_.find(job_id);
  if (it == index_.end()) return -1;
  size_t pos = 0;
  for (auto level = levels_.rbegin(); level != levels_.rend(); ++level) {
    if (level->first > it->second.priority) {
      pos += level->second.size();
    } else if (level->first == it->second.priority) {
      // Walk from both ends at once: O(min(distance to front, distance to back)),
      // so the newest job (a submit reply) and the oldest are both O(1).
      const auto& items = level->second;
      auto target = items.find(it->second.seq);
      auto fwd = items.begin();
      auto back = items.end();
      size_t from_front = 0, from_back = 0;
      for (;;) {
        if (fwd == target) {
          pos += from_front;
          break;
        }
        --back;
        ++from_back;
        if (back == target) {
          pos += items.size() - from_back;
          break;
        }
        ++fwd;
        ++from_front;
      }
      break;
    }
  }
  return static_cast<int>(pos);
}

}  // namespace zfarm::scheduler
