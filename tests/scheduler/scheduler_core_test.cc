// The Scheduler core with a FakeClock and in-memory worker/event sinks (no gRPC;
// fixture in core_fixture.h).
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/time_util.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "proto/contract/error_details.h"
#include "scheduler/scheduler.h"
#include "tests/scheduler/core_fixture.h"
#include "tests/testing/fake_clock.h"
#include "tests/testing/status_matchers.h"

namespace zfarm::scheduler {
namespace {

using ::testing::HasSubstr;
using ::zfarm::contract::FindRequestIdConflict;
using ::zfarm::contract::RequestIdConflict;
using ::zfarm::contract::RetryDelay;
using ::zfarm::testing::FakeClock;
using ::zfarm::testing::StatusIs;

using core_testing::Call;
using core_testing::EventLog;
using core_testing::RecordingSink;
using core_testing::SchedulerCoreTest;

TEST_F(SchedulerCoreTest, SubmitDispatchProgressCommitSucceeds) {
  Open();
  ASSERT_OK_AND_ASSIGN(auto sub, Submit("r1"));
  EXPECT_TRUE(sub.created());
  EXPECT_TRUE(sub.job().spec().has_seed());
  EXPECT_EQ(sub.job().state(), v1::JOB_STATE_QUEUED);
  const std::string id = sub.job().job_id();
  auto events = std::make_shared<EventLog>();
  ASSERT_OK(sched_->Watch(id, "", "", events));

  auto sink = std::make_shared<RecordingSink>();
  uint64_t s = Connect("w1", sink);
  EXPECT_EQ(sink->Take(v1::SchedulerMessage::kWelcome).size(), 1u);
  auto leases = sink->TakeLeases();
  ASSERT_EQ(leases.size(), 1u);
  EXPECT_EQ(leases[0].lease().job_id(), id);
  EXPECT_EQ(leases[0].lease().attempt(), 1);
  EXPECT_EQ(leases[0].spec().seed(), sub.job().spec().seed());
  EXPECT_THAT(leases[0].output_path(), HasSubstr(id + ".png"));
  EXPECT_EQ(Get(id).state(), v1::JOB_STATE_ASSIGNED);

  ASSERT_OK(Msg(s, Started(leases[0].lease())));
  EXPECT_EQ(Get(id).state(), v1::JOB_STATE_RUNNING);
  v1::WorkerMessage p;
  *p.mutable_progress()->mutable_lease() = leases[0].lease();
  p.mutable_progress()->set_step(1);
  p.mutable_progress()->set_total_steps(2);
  ASSERT_OK(Msg(s, p));
  EXPECT_EQ(Get(id).progress().step(), 1);
  ASSERT_OK(Msg(s, Commit(leases[0])));
  auto replies = sink->Take(v1::SchedulerMessage::kCommitReply);
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_TRUE(replies[0].commit_reply().accepted());
  EXPECT_EQ(Get(id).state(), v1::JOB_STATE_RUNNING);  // not final before Finalized
  WriteResult(leases[0]);  // what the worker renamed into place
  ASSERT_OK(Msg(s, Finalized(leases[0].lease())));
  v1::Job done = Get(id);
  EXPECT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(done.result().path(), leases[0].output_path());

  absl::MutexLock l(&events->mu_);
  std::vector<v1::JobState> states;
  ASSERT_GE(events->events.size(), 5u);
  EXPECT_EQ(events->events.front().type(), v1::JOB_EVENT_TYPE_SNAPSHOT);
  bool saw_progress = false;
  for (const auto& e : events->events) {
    if (e.type() == v1::JOB_EVENT_TYPE_PROGRESS) saw_progress = true;
    if (e.type() == v1::JOB_EVENT_TYPE_STATE_CHANGED &&
        (states.empty() || states.back() != e.job().state())) {
      states.push_back(e.job().state());
    }
  }
  EXPECT_TRUE(saw_progress);
  EXPECT_EQ(states, (std::vector<v1::JobState>{v1::JOB_STATE_ASSIGNED, v1::JOB_STATE_RUNNING,
                                               v1::JOB_STATE_SUCCEEDED}));
  sched_->Unwatch(events);
}

TEST_F(SchedulerCoreTest, IdempotentResubmitSurvivesPruning) {
  options_.retention = absl::Hours(1);
  options_.tombstone_ttl = absl::Hours(24);
  Open();
  ASSERT_OK_AND_ASSIGN(auto a, Submit("same"));
  ASSERT_OK_AND_ASSIGN(auto b, Submit("same"));
  EXPECT_FALSE(b.created());
  EXPECT_EQ(a.job().job_id(), b.job().job_id());
  EXPECT_EQ(a.job().spec().seed(), b.job().spec().seed());
  EXPECT_THAT(Submit("same", "a different prompt"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("request_id"), HasSubstr("different spec"))));
  std::optional<RequestIdConflict> conflict =
      FindRequestIdConflict(Submit("same", "a different prompt").status());
  ASSERT_TRUE(conflict.has_value());
  EXPECT_EQ(conflict->job_id, a.job().job_id());
  // Finish and prune the job: the tombstone still answers.
  ASSERT_OK(CancelJob(a.job().job_id()));
  clock_.Advance(absl::Hours(2));
  sched_->Tick();
  Sync();
  EXPECT_THAT(TryGet(a.job().job_id()), StatusIs(absl::StatusCode::kNotFound, HasSubstr("job_id")));
  ASSERT_OK_AND_ASSIGN(auto again, Submit("same"));
  EXPECT_FALSE(again.created());
  EXPECT_EQ(again.job().job_id(), a.job().job_id());
  // The tombstone survives a restart too.
  sched_.reset();
  Open();
  ASSERT_OK_AND_ASSIGN(auto after_restart, Submit("same"));
  EXPECT_FALSE(after_restart.created());
  EXPECT_EQ(after_restart.job().job_id(), a.job().job_id());
  // After the tombstone TTL the id is free again.
  clock_.Advance(absl::Hours(25));
  sched_->Tick();
  Sync();
  ASSERT_OK_AND_ASSIGN(auto fresh, Submit("same"));
  EXPECT_TRUE(fresh.created());
  EXPECT_NE(fresh.job().job_id(), a.job().job_id());
}

TEST_F(SchedulerCoreTest, FinishedJobsBeyondTheCapArePrunedOldestFirst) {
  options_.max_finished_jobs = 3;
  Open();
  std::vector<std::string> ids;
  for (int i = 0; i < 6; ++i) {
    ASSERT_OK_AND_ASSIGN(auto r, Submit(absl::StrCat("cap-", i), absl::StrCat("prompt ", i)));
    ids.push_back(r.job().job_id());
  }
  ASSERT_OK_AND_ASSIGN(auto queued, Submit("cap-queued", "still queued"));
  for (int i = 0; i < 6; ++i) {  // end times one minute apart, in submit order
    ASSERT_OK(CancelJob(ids[i]));
    clock_.Advance(absl::Minutes(1));
  }
  clock_.Advance(absl::Seconds(11));  // the next prune pass (well within --retention)
  sched_->Tick();
  Sync();
  for (int i = 0; i < 6; ++i) {
    auto got = TryGet(ids[i]);
    if (i < 3) {
      EXPECT_THAT(got, StatusIs(absl::StatusCode::kNotFound, HasSubstr("job_id"))) << i;
    } else {
      EXPECT_OK(got.status()) << i;
    }
  }
  // Unfinished jobs never count or go; pruned ids stay idempotent (tombstones).
  EXPECT_OK(TryGet(queued.job().job_id()).status());
  ASSERT_OK_AND_ASSIGN(auto again, Submit("cap-0", "prompt 0"));
  EXPECT_FALSE(again.created());
  EXPECT_EQ(again.job().job_id(), ids[0]);
  // The cap holds across a restart (the journal was pruned too).
  sched_.reset();
  Open();
  EXPECT_THAT(TryGet(ids[2]), StatusIs(absl::StatusCode::kNotFound, HasSubstr("job_id")));
  EXPECT_OK(TryGet(ids[3]).status());
}

TEST_F(SchedulerCoreTest, TombstonesBeyondTheCapArePrunedOldestFirst) {
  options_.max_finished_jobs = 1;
  options_.max_tombstones = 2;
  Open();
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    ASSERT_OK_AND_ASSIGN(auto r, Submit(absl::StrCat("t-", i), absl::StrCat("prompt ", i)));
    ids.push_back(r.job().job_id());
    ASSERT_OK(CancelJob(ids.back()));
    clock_.Advance(absl::Minutes(1));  // submit (tombstone) times one minute apart
  }
  clock_.Advance(absl::Seconds(11));
  sched_->Tick();  // prunes jobs 0..3 (one finished job kept), caps their 4 tombstones at 2
  Sync();
  // Tombstones of jobs 2 and 3 still answer; those of 0 and 1 are gone (a new job).
  for (int i : {2, 3}) {
    ASSERT_OK_AND_ASSIGN(auto again, Submit(absl::StrCat("t-", i), absl::StrCat("prompt ", i)));
    EXPECT_FALSE(again.created()) << i;
    EXPECT_EQ(again.job().job_id(), ids[i]);
  }
  ASSERT_OK_AND_ASSIGN(auto fresh, Submit("t-0", "prompt 0"));
  EXPECT_TRUE(fresh.created());
  EXPECT_NE(fresh.job().job_id(), ids[0]);
  // Job 4 is still kept (within --max-finished-jobs): its request id is not a tombstone yet.
  ASSERT_OK_AND_ASSIGN(auto kept, Submit("t-4", "prompt 4"));
  EXPECT_FALSE(kept.created());
  EXPECT_EQ(kept.job().job_id(), ids[4]);
}

TEST_F(SchedulerCoreTest, BackpressureCarriesRetryHint) {
  options_.max_queued_jobs = 2;
  options_.retry_after = absl::Milliseconds(750);
  Open();
  ASSERT_OK(Submit("a").status());
  ASSERT_OK(Submit("b").status());
  EXPECT_THAT(Submit("c"), StatusIs(absl::StatusCode::kResourceExhausted,
                                    AllOf(HasSubstr("retry after 750 ms"), HasSubstr("2"))));
  EXPECT_EQ(RetryDelay(Submit("c").status()), absl::Milliseconds(750));
  // A duplicate of an admitted request is still answered.
  EXPECT_OK(Submit("a").status());
}

TEST_F(SchedulerCoreTest, PrioritiesAndAging) {
  options_.aging_per_minute = 1.0;
  Open();
  ASSERT_OK_AND_ASSIGN(auto low, Submit("low", "low", 0));
  clock_.Advance(absl::Minutes(30));
  ASSERT_OK_AND_ASSIGN(auto high, Submit("high", "high", 10));
  ASSERT_OK_AND_ASSIGN(auto high2, Submit("high2", "high2", 50));
  auto sink = std::make_shared<RecordingSink>();
  uint64_t s = Connect("w", sink, 1);
  auto first = sink->TakeLeases();
  ASSERT_EQ(first.size(), 1u);
  // high2 (50) beats low (0 + 30 aged) which beats high (10).
  EXPECT_EQ(first[0].lease().job_id(), high2.job().job_id());
  ASSERT_OK(Msg(s, Failure(first[0].lease(), v1::FAILURE_REASON_MODEL_ERROR, false)));
  auto second = sink->TakeLeases();
  ASSERT_EQ(second.size(), 1u);
  EXPECT_EQ(second[0].lease().job_id(), low.job().job_id());
  EXPECT_EQ(Get(high2.job().job_id()).state(), v1::JOB_STATE_FAILED);
}

TEST_F(SchedulerCoreTest, WorkerLostRequeuesAndStaleCommitIsRefused) {
  Open();
  ASSERT_OK_AND_ASSIGN(auto sub, Submit("r"));
  const std::string id = sub.job().job_id();
  auto a = std::make_shared<RecordingSink>();
  uint64_t sa = Connect("a", a);
  auto la = a->TakeLeases();
  ASSERT_EQ(la.size(), 1u);
  ASSERT_OK(Msg(sa, Started(la[0].lease())));
  // Heartbeats stop: lost after the lease timeout.
  clock_.Advance(options_.lease_timeout + absl::Seconds(1));
  sched_->Tick();
  Sync();
  EXPECT_THAT(a->closed(), StatusIs(absl::StatusCode::kUnavailable, HasSubstr("heartbeat")));
  v1::Job j = Get(id);
  EXPECT_EQ(j.state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(j.error().reason(), v1::FAILURE_REASON_WORKER_LOST);
  auto b = std::make_shared<RecordingSink>();
  uint64_t sb = Connect("b", b);
  auto lb = b->TakeLeases();
  ASSERT_EQ(lb.size(), 1u);
  EXPECT_EQ(lb[0].lease().attempt(), 2);
  // Worker a comes back (new session) and tries to commit its old lease.
  auto a2 = std::make_shared<RecordingSink>();
  uint64_t sa2 = Connect("a", a2);
  ASSERT_OK(Msg(sa2, Commit(la[0])));
  auto refused = a2->Take(v1::SchedulerMessage::kCommitReply);
  ASSERT_EQ(refused.size(), 1u);
  EXPECT_FALSE(refused[0].commit_reply().accepted());
  EXPECT_THAT(refused[0].commit_reply().reason(), HasSubstr("stale"));
  ASSERT_OK(Msg(sb, Started(lb[0].lease())));
  ASSERT_OK(Msg(sb, Commit(lb[0])));
  WriteResult(lb[0]);  // what the worker renamed into place
  ASSERT_OK(Msg(sb, Finalized(lb[0].lease())));
  EXPECT_EQ(Get(id).state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(Get(id).worker(), "b");
}

TEST_F(SchedulerCoreTest, PoisonJobFailsAfterMaxAttempts) {
  options_.max_attempts = 3;
  Open();
  ASSERT_OK_AND_ASSIGN(auto sub, Submit("poison"));
  for (int i = 1; i <= 3; ++i) {
    auto sink = std::make_shared<RecordingSink>();
    uint64_t s = Connect("w" + std::to_string(i), sink);
    auto l = sink->TakeLeases();
    ASSERT_EQ(l.size(), 1u) << "attempt " << i;
    EXPECT_EQ(l[0].lease().attempt(), i);
    ASSERT_OK(Msg(s, Started(l[0].lease())));
    sched_->WorkerDisconnected(s, "crash");
    Sync();
  }
  v1::Job j = Get(sub.job().job_id());
  EXPECT_EQ(j.state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(j.error().reason(), v1::FAILURE_REASON_TOO_MANY_ATTEMPTS);
  EXPECT_THAT(j.error().message(), HasSubstr("WORKER_LOST"));
}

TEST_F(SchedulerCoreTest, PrefetchedLossDoesNotCountAnAttempt) {
  options_.max_attempts = 1;
  Open();
  ASSERT_OK_AND_ASSIGN(auto sub, Submit("p"));
  auto a = std::make_shared<RecordingSink>();
  uint64_t sa = Connect("a", a);
  ASSERT_EQ(a->TakeLeases().size(), 1u);
  sched_->WorkerDisconnected(sa, "gone");  // never started
  Sync();
  EXPECT_EQ(Get(sub.job().job_id()).state(), v1::JOB_STATE_QUEUED);
}

TEST_F(SchedulerCoreTest, OutOfMemoryRetriesOnlyOnBiggerWorker) {
  Open();
  ASSERT_OK_AND_ASSIGN(auto sub, Submit("oom"));
  auto small = std::make_shared<RecordingSink>();
  uint64_t ss = Connect("small", small, 1, int64_t{16} << 30);
  auto l = small->TakeLeases();
  ASSERT_EQ(l.size(), 1u);
  ASSERT_OK(Msg(ss, Started(l[0].lease())));
  ASSERT_OK(Msg(ss, Failure(l[0].lease(), v1::FAILURE_REASON_OUT_OF_MEMORY, true)));
  EXPECT_EQ(Get(sub.job().job_id()).state(), v1::JOB_STATE_QUEUED);
  EXPECT_TRUE(small->TakeLeases().empty());  // not re-offered to the same size
  auto same = std::make_shared<RecordingSink>();
  Connect("same", same, 1, int64_t{16} << 30);
  EXPECT_TRUE(same->TakeLeases().empty());
  auto big = std::make_shared<RecordingSink>();
  Connect("big", big, 1, int64_t{80} << 30);
  auto lb = big->TakeLeases();
  ASSERT_EQ(lb.size(), 1u);
  EXPECT_EQ(lb[0].lease().job_id(), sub.job().job_id());
}

TEST_F(SchedulerCoreTest, DrainAndResumeWorker) {
  Open();
  auto a = std::make_shared<RecordingSink>();
  Connect("a", a);
  ASSERT_OK_AND_ASSIGN(Scheduler::WorkerChange d, sched_->DrainWorker("a"));
  EXPECT_TRUE(d.changed);
  EXPECT_EQ(d.worker.state(), v1::WORKER_STATE_DRAINING);
  EXPECT_EQ(a->Take(v1::SchedulerMessage::kDrain).size(), 1u);
  // Draining again changes nothing and sends nothing.
  ASSERT_OK_AND_ASSIGN(d, sched_->DrainWorker("a"));
  EXPECT_FALSE(d.changed);
  EXPECT_EQ(d.worker.state(), v1::WORKER_STATE_DRAINING);
  EXPECT_TRUE(a->Take(v1::SchedulerMessage::kDrain).empty());
  ASSERT_OK_AND_ASSIGN(auto sub, Submit("while-drained"));
  EXPECT_TRUE(a->TakeLeases().empty());

  // Resume: READY again, Resume is sent, and the queued job is assigned.
  ASSERT_OK_AND_ASSIGN(Scheduler::WorkerChange r, sched_->ResumeWorker("a"));
  EXPECT_TRUE(r.changed);
  EXPECT_EQ(r.worker.state(), v1::WORKER_STATE_READY);
  Sync();
  EXPECT_EQ(a->Take(v1::SchedulerMessage::kResume).size(), 1u);
  auto leases = a->TakeLeases();
  ASSERT_EQ(leases.size(), 1u);
  EXPECT_EQ(leases[0].lease().job_id(), sub.job().job_id());

  // Not draining: OK, unchanged, nothing sent.
  ASSERT_OK_AND_ASSIGN(r, sched_->ResumeWorker("a"));
  EXPECT_FALSE(r.changed);
  EXPECT_EQ(r.worker.state(), v1::WORKER_STATE_READY);
  EXPECT_TRUE(a->Take(v1::SchedulerMessage::kResume).empty());

  EXPECT_THAT(sched_->ResumeWorker("nobody").status(),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("\"nobody\"")));
  EXPECT_THAT(sched_->DrainWorker("nobody").status(),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("\"nobody\"")));
}

TEST_F(SchedulerCoreTest, ResumeLeavesAnUnhealthyOrLostWorkerAsItIs) {
  Open();
  auto a = std::make_shared<RecordingSink>();
  uint64_t sa = Connect("a", a);
  v1::WorkerMessage m;
  m.mutable_status()->set_healthy(false);
  ASSERT_OK(Msg(sa, m));
  ASSERT_OK_AND_ASSIGN(Scheduler::WorkerChange r, sched_->ResumeWorker("a"));
  EXPECT_FALSE(r.changed);
  EXPECT_EQ(r.worker.state(), v1::WORKER_STATE_UNHEALTHY);
  sched_->WorkerDisconnected(sa, "gone");
  Sync();
  ASSERT_OK_AND_ASSIGN(r, sched_->ResumeWorker("a"));
  EXPECT_FALSE(r.changed);
  EXPECT_EQ(r.worker.state(), v1::WORKER_STATE_LOST);
  EXPECT_TRUE(a->Take(v1::SchedulerMessage::kResume).empty());
}

TEST_F(SchedulerCoreTest, CancelQueuedAndRunning) {
  Open();
  ASSERT_OK_AND_ASSIGN(auto run, Submit("run"));
  auto sink = std::make_shared<RecordingSink>();
  uint64_t s = Connect("w", sink);
  auto l = sink->TakeLeases();
  ASSERT_EQ(l.size(), 1u);
  ASSERT_OK(Msg(s, Started(l[0].lease())));
  ASSERT_OK_AND_ASSIGN(auto queued, Submit("queued"));
  v1::CancelJobRequest c;
  c.set_job_id(queued.job().job_id());
  ASSERT_OK_AND_ASSIGN(
      auto r, Call<v1::CancelJobResponse>([&](auto cb) { sched_->Cancel(c, std::move(cb)); }));
  EXPECT_EQ(r.job_ids_size(), 1);
  EXPECT_EQ(Get(queued.job().job_id()).state(), v1::JOB_STATE_CANCELLED);
  c.set_job_id(run.job().job_id());
  ASSERT_OK(Call<v1::CancelJobResponse>([&](auto cb) { sched_->Cancel(c, std::move(cb)); }));
  EXPECT_EQ(Get(run.job().job_id()).state(), v1::JOB_STATE_RUNNING);  // until the worker confirms
  auto cancels = sink->Take(v1::SchedulerMessage::kCancel);
  ASSERT_EQ(cancels.size(), 1u);
  EXPECT_EQ(cancels[0].cancel().lease().job_id(), run.job().job_id());
  ASSERT_OK(Msg(s, Failure(l[0].lease(), v1::FAILURE_REASON_CANCELLED_BY_CLIENT, false)));
  v1::Job j = Get(run.job().job_id());
  EXPECT_EQ(j.state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(j.error().reason(), v1::FAILURE_REASON_CANCELLED_BY_CLIENT);
}

TEST_F(SchedulerCoreTest, DeadlineCancels) {
  Open();
  v1::SubmitJobRequest r;
  r.mutable_spec()->set_prompt("late");
  *r.mutable_spec()->mutable_deadline() =
      google::protobuf::util::TimeUtil::SecondsToTimestamp(absl::ToUnixSeconds(clock_.Now()) + 60);
  ASSERT_OK_AND_ASSIGN(auto sub, Call<v1::SubmitJobResponse>([&](auto cb) {
                         sched_->Submit(r, "anonymous", std::move(cb));
                       }));
  sched_->Tick();
  Sync();
  EXPECT_EQ(Get(sub.job().job_id()).state(), v1::JOB_STATE_QUEUED);
  clock_.Advance(absl::Seconds(61));
  sched_->Tick();
  Sync();
  v1::Job j = Get(sub.job().job_id());
  EXPECT_EQ(j.state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(j.error().reason(), v1::FAILURE_REASON_DEADLINE_EXCEEDED);
  // A deadline already in the past is rejected at the edge.
  EXPECT_THAT(
      Call<v1::SubmitJobResponse>([&](auto cb) { sched_->Submit(r, "anonymous", std::move(cb)); }),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("spec.deadline")));
}

TEST_F(SchedulerCoreTest, LostAfterAcceptedCommitChecksTheFile) {
  Open();
  ASSERT_OK_AND_ASSIGN(auto with_file, Submit("f1"));
  ASSERT_OK_AND_ASSIGN(auto without, Submit("f2"));
  auto sink = std::make_shared<RecordingSink>();
  uint64_t s = Connect("w", sink, 2);
  auto l = sink->TakeLeases();
  ASSERT_EQ(l.size(), 2u);
  for (const auto& le : l) {
    ASSERT_OK(Msg(s, Started(le.lease())));
    ASSERT_OK(Msg(s, Commit(le)));
  }
  WriteResult(l[0].lease().job_id() == with_file.job().job_id() ? l[0] : l[1]);
  sched_->WorkerDisconnected(s, "partition");
  Sync();
  EXPECT_EQ(Get(with_file.job().job_id()).state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(Get(without.job().job_id()).state(), v1::JOB_STATE_QUEUED);
}

TEST_F(SchedulerCoreTest, RestartRequeuesLeasedJobs) {
  Open();
  ASSERT_OK_AND_ASSIGN(auto a, Submit("a"));
  ASSERT_OK_AND_ASSIGN(auto b, Submit("b"));
  ASSERT_OK_AND_ASSIGN(auto c, Submit("c"));
  auto sink = std::make_shared<RecordingSink>();
  uint64_t s = Connect("w", sink, 2);
  auto l = sink->TakeLeases();
  ASSERT_EQ(l.size(), 2u);
  ASSERT_OK(Msg(s, Started(l[0].lease())));
  ASSERT_OK(Msg(s, Commit(l[0])));
  WriteResult(l[0]);  // what the worker renamed into place
  ASSERT_OK(Msg(s, Finalized(l[0].lease())));
  ASSERT_OK(Msg(s, Started(l[1].lease())));
  v1::Job done_before = Get(l[0].lease().job_id());
  sched_.reset();
  Open();
  v1::Job done_after = Get(l[0].lease().job_id());
  EXPECT_EQ(done_after.SerializeAsString(), done_before.SerializeAsString());
  EXPECT_EQ(Get(l[1].lease().job_id()).state(), v1::JOB_STATE_QUEUED);
  for (const auto& id : {a.job().job_id(), b.job().job_id(), c.job().job_id()}) {
    EXPECT_NE(Get(id).state(), v1::JOB_STATE_UNSPECIFIED);
  }
  // The worker reconnects holding its lease: it is re-adopted, not re-rendered.
  v1::WorkerHello h;
  h.set_worker_name("w");
  h.set_capacity(1);
  h.set_model("z-image-turbo");
  *h.add_held_leases() = l[1].lease();
  auto sink2 = std::make_shared<RecordingSink>();
  ASSERT_OK_AND_ASSIGN(uint64_t s2, sched_->WorkerHello(h, sink2));
  Sync();
  EXPECT_TRUE(sink2->TakeLeases().empty());
  EXPECT_EQ(Get(l[1].lease().job_id()).state(), v1::JOB_STATE_ASSIGNED);
  ASSERT_OK(Msg(s2, Commit(l[1])));
  EXPECT_TRUE(sink2->Take(v1::SchedulerMessage::kCommitReply).at(0).commit_reply().accepted());
}

TEST_F(SchedulerCoreTest, MalformedAndOutOfOrderWorkerMessages) {
  Open();
  ASSERT_OK_AND_ASSIGN(auto sub, Submit("x"));
  auto sink = std::make_shared<RecordingSink>();
  uint64_t s = Connect("w", sink);
  auto l = sink->TakeLeases();
  ASSERT_EQ(l.size(), 1u);
  EXPECT_THAT(sched_->WorkerMessage(s, v1::WorkerMessage()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("empty")));
  v1::WorkerMessage p;
  *p.mutable_progress()->mutable_lease() = l[0].lease();
  p.mutable_progress()->set_step(1);
  p.mutable_progress()->set_total_steps(2);
  EXPECT_THAT(sched_->WorkerMessage(s, p),
              StatusIs(absl::StatusCode::kFailedPrecondition, ::testing::_));
  EXPECT_THAT(sched_->WorkerMessage(s, Finalized(l[0].lease())),
              StatusIs(absl::StatusCode::kFailedPrecondition, ::testing::_));
  v1::WorkerMessage hello;
  hello.mutable_hello()->set_worker_name("w");
  EXPECT_THAT(sched_->WorkerMessage(s, hello),
              StatusIs(absl::StatusCode::kFailedPrecondition, ::testing::_));
  v1::WorkerMessage no_lease;
  no_lease.mutable_started();
  EXPECT_THAT(sched_->WorkerMessage(s, no_lease),
              StatusIs(absl::StatusCode::kInvalidArgument, ::testing::_));
  v1::WorkerHello bad;
  bad.set_worker_name("z");
  bad.set_capacity(0);
  EXPECT_THAT(sched_->WorkerHello(bad, sink),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("capacity")));
}

TEST_F(SchedulerCoreTest, BatchIsAllOrNothing) {
  Open();
  v1::SubmitJobsRequest req;
  for (int i = 0; i < 3; ++i) {
    auto* j = req.add_jobs();
    j->set_request_id("b" + std::to_string(i));
    j->mutable_spec()->set_prompt("p");
  }
  req.mutable_jobs(2)->mutable_spec()->set_steps(99);
  EXPECT_THAT(
      Call<v1::SubmitJobsResponse>([&](auto cb) { sched_->SubmitBatch(req, "o", std::move(cb)); }),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("jobs[2].spec.steps")));
  EXPECT_EQ(sched_->QueuedJobs(), 0);
  req.mutable_jobs(2)->mutable_spec()->set_steps(4);
  ASSERT_OK_AND_ASSIGN(auto resp, Call<v1::SubmitJobsResponse>([&](auto cb) {
                         sched_->SubmitBatch(req, "o", std::move(cb));
                       }));
  EXPECT_EQ(resp.jobs_size(), 3);
  EXPECT_FALSE(resp.batch_id().empty());
  EXPECT_EQ(sched_->QueuedJobs(), 3);
  v1::SubmitJobsRequest big;
  for (int i = 0; i < 1001; ++i) big.add_jobs()->mutable_spec()->set_prompt("p");
  EXPECT_THAT(
      Call<v1::SubmitJobsResponse>([&](auto cb) { sched_->SubmitBatch(big, "o", std::move(cb)); }),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("1000")));
}

}  // namespace
}  // namespace zfarm::scheduler

namespace zfarm::scheduler {
namespace {

double Metric(prometheus::Registry& r, const std::string& name, const std::string& label_value) {
  for (const auto& fam : r.Collect()) {
    if (fam.name != name) continue;
    for (const auto& m : fam.metric) {
      bool match = label_value.empty();
      for (const auto& l : m.label) match |= l.value == label_value;
      if (!match) continue;
      if (fam.type == prometheus::MetricType::Counter) return m.counter.value;
      if (fam.type == prometheus::MetricType::Gauge) return m.gauge.value;
    }
  }
  return -1;
}

TEST_F(SchedulerCoreTest, ExportsPrometheusMetrics) {
  auto registry = std::make_shared<prometheus::Registry>();
  auto s = Scheduler::Create(options_, &clock_, registry);
  ASSERT_OK(s.status());
  sched_ = *std::move(s);
  ASSERT_OK(Submit("m1", "a", 5).status());
  ASSERT_OK(Submit("m2", "b", 5).status());
  ASSERT_OK(Submit("m3", "c", -1).status());
  EXPECT_FALSE(Submit("bad", "").ok());
  sched_->Tick();
  Sync();
  EXPECT_EQ(Metric(*registry, "zfarm_submits_total", ""), 3);
  EXPECT_EQ(Metric(*registry, "zfarm_submit_rejections_total", "invalid_argument"), 1);
  EXPECT_EQ(Metric(*registry, "zfarm_queue_depth", "5"), 2);
  EXPECT_EQ(Metric(*registry, "zfarm_queue_depth", "-1"), 1);
  EXPECT_EQ(Metric(*registry, "zfarm_jobs", "queued"), 3);
  EXPECT_EQ(Metric(*registry, "zfarm_jobs", "JOB_STATE_QUEUED"), -1);  // the old label value
}

// ---------------------------------------------------------------- capabilities

namespace {
v1::WorkerHello CapableHello(const std::string& name, std::vector<std::string> features,
                             std::vector<std::string> loras) {
  v1::WorkerHello h;
  h.set_worker_name(name);
  h.set_capacity(1);
  h.set_memory_total_bytes(int64_t{80} << 30);
  h.set_model("z-image-turbo");
  h.set_dtype("bfloat16");
  for (auto& f : features) h.add_features(f);
  for (auto& l : loras) {
    auto* i = h.add_loras();
    i->set_name(l);
    i->set_sha256(std::string(64, 'a'));
  }
  return h;
}
v1::WorkerMessage ActiveLoras(std::vector<std::string> names) {
  v1::WorkerMessage m;
  m.mutable_heartbeat()->set_memory_free_bytes(1);
  for (auto& n : names) m.mutable_heartbeat()->add_active_loras(n);
  return m;
}
}  // namespace

class CapabilityTest : public SchedulerCoreTest {
 protected:
  uint64_t ConnectWith(const v1::WorkerHello& h, std::shared_ptr<RecordingSink> sink) {
    auto s = sched_->WorkerHello(h, sink);
    EXPECT_OK(s.status());
    Sync();
    return s.ok() ? *s : 0;
  }
  std::string SubmitSpec(const std::string& id, const std::function<void(v1::JobSpec&)>& edit) {
    v1::SubmitJobRequest r = Request(id);
    edit(*r.mutable_spec());
    auto resp = SubmitAs("anonymous", r);
    EXPECT_OK(resp.status());
    return resp.ok() ? resp->job().job_id() : "";
  }
  static void WithLora(v1::JobSpec& s, const std::string& name) {
    s.add_loras()->set_name(name);
  }
};

TEST_F(CapabilityTest, ControlJobsGoOnlyToWorkersWithAControlNet) {
  Open();
  auto plain = std::make_shared<RecordingSink>();
  ConnectWith(CapableHello("plain", {"img2img", "inpaint", "lora"}, {}), plain);
  const std::string control = SubmitSpec("control", [](v1::JobSpec& s) {
    s.mutable_control()->mutable_image()->set_path("pose.png");
    s.mutable_control()->set_conditioning_scale(0.8f);
  });
  // No worker with a ControlNet: QUEUED (as a size no worker renders), nothing leased.
  EXPECT_TRUE(plain->TakeLeases().empty());
  EXPECT_EQ(Get(control).state(), v1::JOB_STATE_QUEUED);
  auto cn = std::make_shared<RecordingSink>();
  ConnectWith(CapableHello("cn", {"img2img", "inpaint", "controlnet"}, {}), cn);
  auto got = cn->TakeLeases();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].lease().job_id(), control);
  EXPECT_FLOAT_EQ(got[0].spec().control().conditioning_scale(), 0.8f);
  EXPECT_TRUE(plain->TakeLeases().empty());
}

TEST_F(CapabilityTest, JobsGoOnlyToWorkersWithTheirFeaturesAndLoras) {
  options_.lora_affinity_wait = absl::ZeroDuration();
  Open();
  auto plain = std::make_shared<RecordingSink>();
  ConnectWith(CapableHello("plain", {}, {}), plain);
  // Nobody can run these yet: they stay QUEUED (as a size no worker renders does).
  const std::string img = SubmitSpec("img", [](v1::JobSpec& s) {
    s.mutable_init_image()->set_path("in.png");
  });
  const std::string lora = SubmitSpec("lora", [](v1::JobSpec& s) { WithLora(s, "brand"); });
  EXPECT_TRUE(plain->TakeLeases().empty());
  EXPECT_EQ(Get(img).state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(Get(lora).state(), v1::JOB_STATE_QUEUED);
  // A LoRA worker without "brand" in its catalog does not get the LoRA job.
  auto other = std::make_shared<RecordingSink>();
  ConnectWith(CapableHello("other-lora", {"lora"}, {"other"}), other);
  EXPECT_TRUE(other->TakeLeases().empty());
  // The file without the "lora" feature is not enough...
  auto file_only = std::make_shared<RecordingSink>();
  ConnectWith(CapableHello("file-only", {}, {"brand"}), file_only);
  EXPECT_TRUE(file_only->TakeLeases().empty());
  // ...and neither is another feature.
  auto no_feature = std::make_shared<RecordingSink>();
  ConnectWith(CapableHello("no-feature", {"img2img"}, {"brand"}), no_feature);
  auto got = no_feature->TakeLeases();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].lease().job_id(), img);  // img2img yes, the LoRA job no
  auto brand = std::make_shared<RecordingSink>();
  ConnectWith(CapableHello("brand", {"lora"}, {"brand"}), brand);
  got = brand->TakeLeases();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].lease().job_id(), lora);
  // Inpainting needs "inpaint" as well.
  const std::string mask = SubmitSpec("mask", [](v1::JobSpec& s) {
    s.mutable_init_image()->set_path("in.png");
    s.mutable_mask_image()->set_path("m.png");
  });
  auto img_only = std::make_shared<RecordingSink>();
  ConnectWith(CapableHello("img-only", {"img2img"}, {}), img_only);
  EXPECT_TRUE(img_only->TakeLeases().empty());
  auto inpaint = std::make_shared<RecordingSink>();
  ConnectWith(CapableHello("inpaint", {"img2img", "inpaint"}, {}), inpaint);
  got = inpaint->TakeLeases();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].lease().job_id(), mask);

  // ListWorkers shows what each worker can do.
  bool seen = false;
  for (const v1::WorkerInfo& i : sched_->ListWorkers()) {
    if (i.worker_name() != "brand") continue;
    seen = true;
    EXPECT_EQ(i.dtype(), "bfloat16");
    ASSERT_EQ(i.features_size(), 1);
    EXPECT_EQ(i.features(0), "lora");
    ASSERT_EQ(i.loras_size(), 1);
    EXPECT_EQ(i.loras(0).name(), "brand");
  }
  EXPECT_TRUE(seen);
}

TEST_F(CapabilityTest, HeartbeatCatalogLetsAQueuedLoraJobRun) {
  Open();
  auto w = std::make_shared<RecordingSink>();
  uint64_t sw = ConnectWith(CapableHello("w", {"lora"}, {}), w);
  const std::string id = SubmitSpec("late", [](v1::JobSpec& s) { WithLora(s, "fresh"); });
  EXPECT_TRUE(w->TakeLeases().empty());
  v1::WorkerMessage hb = ActiveLoras({});
  auto* info = hb.mutable_heartbeat()->mutable_lora_catalog()->add_loras();
  info->set_name("fresh");
  ASSERT_OK(Msg(sw, hb));
  auto got = w->TakeLeases();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].lease().job_id(), id);
  ASSERT_EQ(sched_->ListWorkers()[0].loras_size(), 1);
}

TEST_F(CapabilityTest, AffinityPrefersAWorkerWithTheJobsLorasActive) {
  Open();
  // "a-cold" sorts first, so without affinity it would get the job.
  auto cold = std::make_shared<RecordingSink>();
  ConnectWith(CapableHello("a-cold", {"lora"}, {"brand"}), cold);
  auto warm = std::make_shared<RecordingSink>();
  uint64_t sw = ConnectWith(CapableHello("b-warm", {"lora"}, {"brand"}), warm);
  ASSERT_OK(Msg(sw, ActiveLoras({"brand"})));
  const std::string id = SubmitSpec("j", [](v1::JobSpec& s) { WithLora(s, "brand"); });
  auto got = warm->TakeLeases();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].lease().job_id(), id);
  EXPECT_TRUE(cold->TakeLeases().empty());
}

TEST_F(CapabilityTest, AffinityWaitIsBoundedAndOtherJobsDoNotStarve) {
  options_.lora_affinity_wait = absl::Seconds(10);
  Open();
  // The warm worker is busy; the cold one is free.
  auto warm = std::make_shared<RecordingSink>();
  uint64_t sw = ConnectWith(CapableHello("warm", {"lora"}, {"brand"}), warm);
  ASSERT_OK(Msg(sw, ActiveLoras({"brand"})));
  const std::string first = SubmitSpec("first", [](v1::JobSpec& s) { WithLora(s, "brand"); });
  ASSERT_EQ(warm->TakeLeases().size(), 1u);
  auto cold = std::make_shared<RecordingSink>();
  const uint64_t sc = ConnectWith(CapableHello("cold", {"lora"}, {"brand"}), cold);
  const std::string waiting = SubmitSpec("waiting", [](v1::JobSpec& s) { WithLora(s, "brand"); });
  // A plain job behind it is not held up: it takes the cold worker at once.
  ASSERT_OK_AND_ASSIGN(auto plain, Submit("plain"));
  auto got = cold->TakeLeases();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].lease().job_id(), plain.job().job_id());
  EXPECT_EQ(Get(waiting).state(), v1::JOB_STATE_QUEUED);
  // The cold worker frees up; the LoRA job still waits for the warm one...
  ASSERT_OK(Msg(sc, Started(got[0].lease())));
  WriteResult(got[0]);
  ASSERT_OK(Msg(sc, Commit(got[0])));
  ASSERT_OK(Msg(sc, Finalized(got[0].lease())));
  clock_.Advance(absl::Seconds(5));
  sched_->Tick();
  Sync();
  EXPECT_TRUE(cold->TakeLeases().empty());
  EXPECT_EQ(Get(waiting).state(), v1::JOB_STATE_QUEUED);
  // ...but no longer than lora_affinity_wait: then any capable worker takes it.
  clock_.Advance(absl::Seconds(6));
  sched_->Tick();
  Sync();
  got = cold->TakeLeases();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].lease().job_id(), waiting);
  EXPECT_EQ(Get(first).state(), v1::JOB_STATE_ASSIGNED);
}

}  // namespace
}  // namespace zfarm::scheduler
