// JobStore's state table: every (state, event) pair, the legal ones with the
// state they lead to and what they do, every other one refused with the job left
// unchanged.
#include "scheduler/job_store.h"

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/contract/contract.h"
#include "tests/testing/status_matchers.h"

namespace zfarm::scheduler {
namespace {

namespace v1 = ::zfarm::v1;
using ::testing::HasSubstr;
using ::zfarm::contract::IsFinal;
using ::zfarm::testing::StatusIs;
using Event = JobStore::Event;

const absl::Time kT0 = absl::FromUnixSeconds(1'800'000'000);

constexpr Event kEvents[] = {Event::kDispatch, Event::kReadopt,       Event::kStart,
                             Event::kProgress, Event::kCommit,        Event::kRequestCancel,
                             Event::kRequeue,  Event::kRecover,       Event::kSucceed,
                             Event::kFail,     Event::kCancel};

// A job in each state the table knows. RUNNING appears twice: with and without
// an accepted commit (kSucceed needs one, kCommit refuses a second).
struct From {
  v1::JobState state;
  bool commit_pending;
};
constexpr From kFroms[] = {
    {v1::JOB_STATE_QUEUED, false},    {v1::JOB_STATE_ASSIGNED, false},
    {v1::JOB_STATE_RUNNING, false},   {v1::JOB_STATE_RUNNING, true},
    {v1::JOB_STATE_SUCCEEDED, false}, {v1::JOB_STATE_FAILED, false},
    {v1::JOB_STATE_CANCELLED, false},
};

// The table, written out independently of the implementation: the state each
// legal pair leads to. Absent = refused.
std::optional<v1::JobState> Expected(From f, Event e) {
  const bool queued = f.state == v1::JOB_STATE_QUEUED;
  const bool assigned = f.state == v1::JOB_STATE_ASSIGNED;
  const bool running = f.state == v1::JOB_STATE_RUNNING;
  const bool leased = assigned || running;
  switch (e) {
    case Event::kDispatch:
    case Event::kReadopt:
      if (queued) return v1::JOB_STATE_ASSIGNED;
      break;
    case Event::kStart:
      if (assigned) return v1::JOB_STATE_RUNNING;
      break;
    case Event::kProgress:
      if (running) return v1::JOB_STATE_RUNNING;
      break;
    case Event::kCommit:
      if (leased && !f.commit_pending) return v1::JOB_STATE_RUNNING;
      break;
    case Event::kRequestCancel:
      if (leased) return f.state;
      break;
    case Event::kRequeue:
    case Event::kRecover:
      if (leased) return v1::JOB_STATE_QUEUED;
      break;
    case Event::kSucceed:
      if (running && f.commit_pending) return v1::JOB_STATE_SUCCEEDED;
      break;
    case Event::kFail:
      if (leased) return v1::JOB_STATE_FAILED;
      break;
    case Event::kCancel:
      if (queued || leased) return v1::JOB_STATE_CANCELLED;
      break;
  }
  return std::nullopt;
}

class JobStoreTest : public ::testing::Test {
 protected:
  // Admits a job and walks it to `f` through legal events.
  JobRecord& Make(const std::string& id, From f) {
    JobRecord r;
    r.seq = store_.NextSeq();
    r.job.set_job_id(id);
    r.job.set_owner("alice");
    r.job.set_request_id("r-" + id);
    r.job.mutable_spec()->set_prompt("a cat");
    r.job.set_state(v1::JOB_STATE_QUEUED);
    *r.job.mutable_create_time() = google::protobuf::Timestamp();
    r.job.mutable_create_time()->set_seconds(absl::ToUnixSeconds(kT0));
    store_.Admit(std::move(r), std::nullopt);
    JobRecord& rec = *store_.Find(id);
    auto step = [&](Event e) {
      JobStore::Change c;
      c.event = e;
      c.now = kT0;
      c.worker = "w1";
      c.reason = v1::FAILURE_REASON_INTERNAL;
      c.message = "setup";
      EXPECT_OK(store_.Transition(rec, c).status());
    };
    switch (f.state) {
      case v1::JOB_STATE_QUEUED:
        break;
      case v1::JOB_STATE_ASSIGNED:
        step(Event::kDispatch);
        break;
      case v1::JOB_STATE_RUNNING:
        step(Event::kDispatch);
        step(Event::kStart);
        if (f.commit_pending) step(Event::kCommit);
        break;
      case v1::JOB_STATE_SUCCEEDED:
        step(Event::kDispatch);
        step(Event::kCommit);
        step(Event::kSucceed);
        break;
      case v1::JOB_STATE_FAILED:
        step(Event::kDispatch);
        step(Event::kFail);
        break;
      case v1::JOB_STATE_CANCELLED:
        step(Event::kCancel);
        break;
      default:
        ADD_FAILURE() << "no such state";
    }
    EXPECT_EQ(rec.job.state(), f.state);
    EXPECT_EQ(rec.commit_pending, f.commit_pending);
    return rec;
  }

  JobStore store_{1.0};
};

TEST_F(JobStoreTest, EveryPairIsEitherLegalWithItsTargetOrRefusedUnchanged) {
  int n = 0, legal = 0;
  for (const From& f : kFroms) {
    for (Event e : kEvents) {
      SCOPED_TRACE(absl::StrCat(v1::JobState_Name(f.state), f.commit_pending ? "+commit" : "",
                                " / ", JobStore::EventName(e)));
      JobRecord& r = Make(absl::StrCat("j", n++), f);
      const std::string before = r.job.SerializeAsString();
      const bool queued_before = store_.queue().Contains(r.job.job_id());
      JobStore::Change c;
      c.event = e;
      c.now = kT0 + absl::Seconds(5);
      c.worker = "w2";
      c.reason = v1::FAILURE_REASON_INTERNAL;
      c.message = "why";
      c.step = 1;
      c.total_steps = 2;
      absl::StatusOr<JobStore::Effects> fx = store_.Transition(r, c);
      std::optional<v1::JobState> want = Expected(f, e);
      if (!want) {
        EXPECT_THAT(fx.status(), StatusIs(absl::StatusCode::kFailedPrecondition,
                                          HasSubstr(JobStore::EventName(e))));
        EXPECT_EQ(r.job.SerializeAsString(), before);
        EXPECT_EQ(store_.queue().Contains(r.job.job_id()), queued_before);
        continue;
      }
      ++legal;
      ASSERT_OK(fx.status());
      EXPECT_EQ(r.job.state(), *want);
      // Queue membership follows the state, always.
      EXPECT_EQ(store_.queue().Contains(r.job.job_id()), *want == v1::JOB_STATE_QUEUED);
      EXPECT_EQ(fx->final, IsFinal(*want));
      // Progress is the only change not journaled.
      if (e == Event::kProgress) {
        EXPECT_TRUE(fx->ops.empty());
        EXPECT_EQ(fx->event_type, v1::JOB_EVENT_TYPE_PROGRESS);
        EXPECT_EQ(r.job.progress().step(), 1);
      } else {
        ASSERT_EQ(fx->ops.size(), 1u);
        EXPECT_EQ(fx->ops[0].kind, Journal::Op::Kind::kPutJob);
        EXPECT_EQ(fx->ops[0].job.job.SerializeAsString(), r.job.SerializeAsString());
        EXPECT_EQ(fx->event_type, v1::JOB_EVENT_TYPE_STATE_CHANGED);
      }
      // A lease that ends names its worker, so the registry can free the slot.
      const bool ends_lease = IsLeased(f.state) && !IsLeased(*want);
      EXPECT_EQ(fx->released_worker, ends_lease ? "w1" : "");
      if (IsFinal(*want)) {
        EXPECT_EQ(r.job.end_time().seconds(), absl::ToUnixSeconds(kT0 + absl::Seconds(5)));
        EXPECT_FALSE(r.commit_pending);
        if (*want == v1::JOB_STATE_SUCCEEDED) {
          EXPECT_FALSE(r.job.has_error());
        } else {
          EXPECT_FALSE(r.job.has_result());
          EXPECT_EQ(r.job.error().message(), "why");
          EXPECT_FALSE(r.job.error().retryable());
        }
      }
    }
  }
  EXPECT_EQ(n, 7 * 11);
  EXPECT_EQ(legal, 24);  // the table's edges, counted by hand from Expected()
}

TEST_F(JobStoreTest, DispatchCountsAnAttemptReadoptKeepsIt) {
  JobRecord& a = Make("a", {v1::JOB_STATE_QUEUED, false});
  JobStore::Change c;
  c.event = Event::kDispatch;
  c.now = kT0;
  c.worker = "w1";
  ASSERT_OK(store_.Transition(a, c).status());
  EXPECT_EQ(a.job.attempt(), 1);
  EXPECT_EQ(a.job.worker(), "w1");
  c.event = Event::kRecover;
  ASSERT_OK(store_.Transition(a, c).status());
  EXPECT_EQ(a.job.worker(), "");  // the lease died with the old process
  EXPECT_EQ(a.job.attempt(), 1);
  c.event = Event::kReadopt;
  c.worker = "w1";
  ASSERT_OK(store_.Transition(a, c).status());
  EXPECT_EQ(a.job.attempt(), 1);
  EXPECT_EQ(a.job.state(), v1::JOB_STATE_ASSIGNED);
}

TEST_F(JobStoreTest, RequeueKeepsARetryableErrorAndCommitGetsTheJobsOwnPath) {
  JobRecord& a = Make("a", {v1::JOB_STATE_RUNNING, false});
  JobStore::Change c;
  c.event = Event::kCommit;
  c.now = kT0;
  c.result.set_path("../../etc/passwd");  // the worker's word is not the path
  c.result.set_size_bytes(3);
  ASSERT_OK(store_.Transition(a, c).status());
  EXPECT_EQ(a.job.result().path(), JobStore::OutputPath(a));
  EXPECT_TRUE(a.commit_pending);
  c = JobStore::Change();
  c.event = Event::kRequeue;
  c.now = kT0;
  c.reason = v1::FAILURE_REASON_WORKER_LOST;
  c.message = "lost";
  ASSERT_OK(store_.Transition(a, c).status());
  EXPECT_FALSE(a.commit_pending);
  EXPECT_FALSE(a.job.has_result());
  EXPECT_TRUE(a.job.error().retryable());
  EXPECT_EQ(a.job.error().reason(), v1::FAILURE_REASON_WORKER_LOST);
  EXPECT_EQ(store_.queue().size(), 1u);
}

TEST_F(JobStoreTest, OutputNamesAreReservedUntilFailedOrCancelled) {
  JobRecord r;
  r.seq = store_.NextSeq();
  r.job.set_job_id("named");
  r.job.set_owner("alice");
  r.job.mutable_spec()->set_output_name("poster");
  r.job.set_state(v1::JOB_STATE_QUEUED);
  r.job.mutable_create_time()->set_seconds(absl::ToUnixSeconds(kT0));
  store_.Admit(std::move(r), std::nullopt);
  const std::string path = OutputPathFor(kT0, "poster", v1::OUTPUT_FORMAT_PNG);
  EXPECT_THAT(store_.OutputPathFree(path, "alice", ""),
              StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr("job named")));
  EXPECT_THAT(store_.OutputPathFree(path, "bob", ""),
              StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr("another principal's job")));
  JobStore::Change c;
  c.event = Event::kCancel;
  c.now = kT0;
  ASSERT_OK(store_.Transition(*store_.Find("named"), c).status());
  EXPECT_OK(store_.OutputPathFree(path, "alice", ""));
  store_.Unadmit("named");
  EXPECT_EQ(store_.Find("named"), nullptr);
  EXPECT_EQ(store_.queue().size(), 0u);
}

}  // namespace
}  // namespace zfarm::scheduler
