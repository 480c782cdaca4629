#include "scheduler/job_queue.h"

#include <algorithm>
#include <vector>

namespace zfarm::scheduler {

void JobQueue::Push(const std::string& job_id, int priority, uint64_t seq, absl::Time enqueue_time,
                    const std::string& owner) {
  Remove(job_id);
  Level& level = levels_[priority];
  auto [it, fresh] = level.owners.try_emplace(owner);
  if (fresh) {  // a new owner joins at the back of the turn order
    it->second.turn = level.next_turn++;
    level.turns[it->second.turn] = owner;
  }
  it->second.items.emplace(seq, Item{job_id, enqueue_time});
  ++level.size;
  ++owner_size_[owner];
  index_[job_id] = Where{priority, seq, owner};
}

bool JobQueue::Remove(const std::string& job_id) { return RemoveImpl(job_id, false); }
bool JobQueue::Take(const std::string& job_id) { return RemoveImpl(job_id, true); }

bool JobQueue::RemoveImpl(const std::string& job_id, bool rotate) {
  auto it = index_.find(job_id);
  if (it == index_.end()) return false;
  const Where& w = it->second;
  auto level = levels_.find(w.priority);
  Level& l = level->second;
  auto owner = l.owners.find(w.owner);
  owner->second.items.erase(w.seq);
  --l.size;
  if (owner->second.items.empty()) {
    l.turns.erase(owner->second.turn);
    l.owners.erase(owner);
  } else if (rotate) {
    l.turns.erase(owner->second.turn);
    owner->second.turn = l.next_turn++;
    l.turns[owner->second.turn] = w.owner;
  }
  if (l.size == 0) levels_.erase(level);
  auto os = owner_size_.find(w.owner);
  if (--os->second == 0) owner_size_.erase(os);
  index_.erase(it);
  return true;
}

size_t JobQueue::OwnerSize(const std::string& owner) const {
  auto it = owner_size_.find(owner);
  return it == owner_size_.end() ? 0 : it->second;
}

std::map<int, size_t> JobQueue::DepthByPriority() const {
  std::map<int, size_t> out;
  for (const auto& [p, level] : levels_) out[p] = level.size;
  return out;
}

double JobQueue::EffectivePriority(int priority, absl::Time enqueue_time, absl::Time now) const {
  double waited_min = std::max(0.0, absl::ToDoubleMinutes(now - enqueue_time));
  return priority + aging_per_minute_ * waited_min;
}

std::optional<std::string> JobQueue::Pick(absl::Time now,
                                          const std::function<bool(const std::string&)>& accept,
                                          size_t max_scan) const {
  // Levels by the effective priority of their oldest job (ties: higher base level).
  struct Head {
    double eff;
    const Level* level;
  };
  std::vector<Head> heads;
  heads.reserve(levels_.size());
  for (auto it = levels_.rbegin(); it != levels_.rend(); ++it) {
    const Item* oldest = nullptr;
    uint64_t oldest_seq = UINT64_MAX;
    for (const auto& [name, o] : it->second.owners) {
      const auto& first = *o.items.begin();
      if (first.first < oldest_seq) {
        oldest_seq = first.first;
        oldest = &first.second;
      }
    }
    heads.push_back({EffectivePriority(it->first, oldest->enqueue_time, now), &it->second});
  }
  std::stable_sort(heads.begin(), heads.end(),
                   [](const Head& a, const Head& b) { return a.eff > b.eff; });
  size_t scanned = 0;
  for (const Head& h : heads) {
    // Round-robin over the level's owners in turn order: each owner's 1st job,
    // then each owner's 2nd, ...
    using Cursor = std::pair<std::map<uint64_t, Item>::const_iterator,
                             std::map<uint64_t, Item>::const_iterator>;
    std::vector<Cursor> cursors;
    cursors.reserve(h.level->turns.size());
    for (const auto& [turn, name] : h.level->turns) {
      const Owner& o = h.level->owners.at(name);
      cursors.emplace_back(o.items.begin(), o.items.end());
    }
    bool any = true;
    while (any) {
      any = false;
      for (Cursor& c : cursors) {
        if (c.first == c.second) continue;
        any = true;
        if (accept(c.first->second.job_id)) return c.first->second.job_id;
        ++c.first;
        if (++scanned >= max_scan) return std::nullopt;
      }
    }
  }
  return std::nullopt;
}

int JobQueue::Position(const std::string& job_id) const {
  auto it = index_.find(job_id);
  if (it == index_.end()) return -1;
  const Where& w = it->second;
  size_t pos = 0;
  for (auto level = levels_.rbegin(); level != levels_.rend(); ++level) {
    if (level->first > w.priority) {
      pos += level->second.size;
      continue;
    }
    if (level->first < w.priority) break;
    const Level& l = level->second;
    const Owner& mine = l.owners.at(w.owner);
    // Rank k of the job in its owner's FIFO, walking from both ends at once:
    // O(min(distance to front, distance to back)), so the newest job (a submit
    // reply) and the oldest are both O(1).
    const auto& items = mine.items;
    auto target = items.find(w.seq);
    auto fwd = items.begin();
    auto back = items.end();
    size_t from_front = 0, from_back = 0, k = 0;
    for (;;) {
      if (fwd == target) {
        k = from_front;
        break;
      }
      --back;
      ++from_back;
      if (back == target) {
        k = items.size() - from_back;
        break;
      }
      ++fwd;
      ++from_front;
    }
    // Each other owner gets min(its size, k) turns before ours, +1 if its turn
    // comes before ours in the current round.
    for (const auto& [name, o] : l.owners) {
      if (name == w.owner) continue;
      pos += std::min(o.items.size(), k + (o.turn < mine.turn ? 1 : 0));
    }
    pos += k;
    break;
  }
  return static_cast<int>(pos);
}

}  // namespace zfarm::scheduler
