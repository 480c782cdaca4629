#ifndef ZFARM_TESTS_SCHEDULER_JOURNAL_CONTRACT_H_
#define ZFARM_TESTS_SCHEDULER_JOURNAL_CONTRACT_H_

// What every Journal backend must do, checked the same way for SQLite
// (journal_test.cc) and PostgreSQL (postgres_journal_test.cc).

#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/blocking_counter.h"
#include "gtest/gtest.h"
#include "scheduler/journal.h"
#include "tests/testing/status_matchers.h"

namespace zfarm::scheduler {

inline Journal::Op PutJob(const std::string& id, v1::JobState state, uint64_t seq) {
  Journal::Op op{Journal::Op::Kind::kPutJob, {}, {}, {}};
  op.job.job.set_job_id(id);
  op.job.job.set_state(state);
  op.job.seq = seq;
  op.job.runs = 2;
  op.job.fingerprint = "fp";
  return op;
}

// 8 threads x 50 concurrent appends: all durable and loaded back, in fewer
// transactions than batches.
inline void ExpectGroupCommitSharesTransactions(Journal& j) {
  constexpr int kThreads = 8, kPer = 50;
  std::vector<std::thread> threads;
  absl::BlockingCounter done(kThreads * kPer);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPer; ++i) {
        j.Append({PutJob(absl::StrCat("j", t * 1000 + i), v1::JOB_STATE_QUEUED, t * 1000 + i)},
                 [&](absl::Status s) {
                   EXPECT_OK(s);
                   done.DecrementCount();
                 });
      }
    });
  }
  for (auto& t : threads) t.join();
  done.Wait();
  ASSERT_OK(j.Flush());
  EXPECT_EQ(j.batches(), kThreads * kPer);
  EXPECT_LT(j.commits(), j.batches());  // batching happened
  ASSERT_OK_AND_ASSIGN(auto c, j.Load());
  EXPECT_EQ(c.jobs.size(), static_cast<size_t>(kThreads * kPer));
}

}  // namespace zfarm::scheduler

#endif  // ZFARM_TESTS_SCHEDULER_JOURNAL_CONTRACT_H_
