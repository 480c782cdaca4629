#include "scheduler/job_queue.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace zfarm::scheduler {
namespace {

const absl::Time t0 = absl::FromUnixSeconds(1'800'000'000);
auto kAll = [](const std::string&) { return true; };

std::vector<std::string> Drain(JobQueue& q, absl::Time now) {
  std::vector<std::string> out;
  while (auto id = q.Pick(now, kAll)) {
    out.push_back(*id);
    q.Remove(*id);
  }
  return out;
}

TEST(JobQueueTest, HigherPriorityFirstFifoWithinLevel) {
  JobQueue q(/*aging_per_minute=*/0);
  q.Push("low1", 0, 1, t0);
  q.Push("high1", 5, 2, t0);
  q.Push("low2", 0, 3, t0);
  q.Push("high2", 5, 4, t0);
  EXPECT_EQ(q.Position("high2"), 1);
  EXPECT_EQ(q.Position("low1"), 2);
  EXPECT_EQ(Drain(q, t0), (std::vector<std::string>{"high1", "high2", "low1", "low2"}));
  EXPECT_EQ(q.size(), 0u);
}

TEST(JobQueueTest, AgingLetsOldLowPriorityOvertake) {
  JobQueue q(/*aging_per_minute=*/1.0);
  q.Push("old-low", 0, 1, t0);
  q.Push("new-high", 10, 2, t0 + absl::Minutes(5));
  // After 5 minutes old-low has effective 5 < 10.
  EXPECT_EQ(*q.Pick(t0 + absl::Minutes(5), kAll), "new-high");
  // After 11 minutes old-low has 11 > 10 + 6*1 = 16? no: new-high ages too.
  // Aging is equal for both, so the gap closes only with time since enqueue:
  // at t0+20m old-low = 20, new-high = 10 + 15 = 25.
  EXPECT_EQ(*q.Pick(t0 + absl::Minutes(20), kAll), "new-high");
  // A stream of NEW high-priority jobs cannot starve old-low.
  q.Remove("new-high");
  q.Push("fresh-high", 10, 3, t0 + absl::Minutes(20));
  EXPECT_EQ(*q.Pick(t0 + absl::Minutes(20), kAll), "old-low");  // 20 > 10
}

TEST(JobQueueTest, PickSkipsRejectedWithoutRemoving) {
  JobQueue q(0);
  q.Push("big", 1, 1, t0);
  q.Push("small", 0, 2, t0);
  auto id = q.Pick(t0, [](const std::string& id) { return id != "big"; });
  ASSERT_TRUE(id.has_value());
  EXPECT_EQ(*id, "small");
  EXPECT_TRUE(q.Contains("big"));
  EXPECT_FALSE(q.Pick(t0, [](const std::string&) { return false; }).has_value());
}

TEST(JobQueueTest, RemoveAndDepth) {
  JobQueue q(0);
  q.Push("a", 1, 1, t0);
  q.Push("b", 1, 2, t0);
  q.Push("c", -3, 3, t0);
  EXPECT_TRUE(q.Remove("a"));
  EXPECT_FALSE(q.Remove("a"));
  auto depth = q.DepthByPriority();
  EXPECT_EQ(depth[1], 1u);
  EXPECT_EQ(depth[-3], 1u);
  EXPECT_EQ(q.Position("a"), -1);
}

// Drains with Take() (a dispatch), as the scheduler does.
std::vector<std::string> Dispatch(JobQueue& q, absl::Time now, size_t n) {
  std::vector<std::string> out;
  while (out.size() < n) {
    auto id = q.Pick(now, kAll);
    if (!id) break;
    out.push_back(*id);
    q.Take(*id);
  }
  return out;
}

TEST(JobQueueFairShareTest, BusyOwnerCannotStarveAnotherInTheSameLevel) {
  JobQueue q(/*aging_per_minute=*/0);
  for (int i = 0; i < 1000; ++i) q.Push("a" + std::to_string(i), 0, 1 + i, t0, "team-a");
  q.Push("b0", 0, 5000, t0 + absl::Minutes(1), "team-b");
  EXPECT_EQ(q.OwnerSize("team-a"), 1000u);
  EXPECT_EQ(q.OwnerSize("team-b"), 1u);
  // team-a was first in line; team-b's single job goes second, not 1001st.
  EXPECT_EQ(q.Position("b0"), 1);
  EXPECT_EQ(Dispatch(q, t0, 3), (std::vector<std::string>{"a0", "b0", "a1"}));
  EXPECT_EQ(q.OwnerSize("team-b"), 0u);
}

TEST(JobQueueFairShareTest, OwnersAlternateAndPriorityStillWins) {
  JobQueue q(0);
  uint64_t seq = 1;
  for (int i = 0; i < 3; ++i) q.Push("a" + std::to_string(i), 0, seq++, t0, "a");
  for (int i = 0; i < 3; ++i) q.Push("b" + std::to_string(i), 0, seq++, t0, "b");
  q.Push("c0", 0, seq++, t0, "c");
  q.Push("urgent", 9, seq++, t0, "a");
  EXPECT_EQ(q.Position("urgent"), 0);
  EXPECT_EQ(q.Position("b1"), 1 + 4);  // urgent, a0 b0 c0 a1, then b1
  EXPECT_EQ(Dispatch(q, t0, 8),
            (std::vector<std::string>{"urgent", "a0", "b0", "c0", "a1", "b1", "a2", "b2"}));
}

TEST(JobQueueFairShareTest, RemoveDoesNotCostATurnAndRejectedJobsAreSkipped) {
  JobQueue q(0);
  q.Push("a0", 0, 1, t0, "a");
  q.Push("a1", 0, 2, t0, "a");
  q.Push("b0", 0, 3, t0, "b");
  EXPECT_TRUE(q.Remove("a0"));  // a cancel: "a" keeps its turn
  auto id = q.Pick(t0, [](const std::string& id) { return id != "a1"; });
  ASSERT_TRUE(id.has_value());
  EXPECT_EQ(*id, "b0");
  EXPECT_EQ(*q.Pick(t0, kAll), "a1");
}

}  // namespace
}  // namespace zfarm::scheduler
