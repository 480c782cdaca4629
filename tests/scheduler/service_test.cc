// JobService / WorkerService / AdminService over real gRPC on 127.0.0.1 with
// FakeWorkers speaking the real Connect protocol.
#include <fstream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "google/protobuf/util/time_util.h"
#include "gtest/gtest.h"
#include "proto/contract/error_details.h"
#include "proto/contract/rpc_status.h"
#include "scheduler/server.h"
#include "tests/testing/fake_clock.h"
#include "tests/testing/fake_worker.h"
#include "tests/testing/farm_client.h"
#include "tests/testing/scheduler_fixture.h"
#include "tests/testing/status_matchers.h"
#include "zfarm/v1/admin_service.grpc.pb.h"
#include "zfarm/v1/job_service.grpc.pb.h"

namespace zfarm::scheduler {
namespace {

using ::testing::HasSubstr;
using ::zfarm::contract::FindRequestIdConflict;
using ::zfarm::contract::FromGrpcCall;
using ::zfarm::contract::RequestIdConflict;
using ::zfarm::contract::RetryDelay;
using ::zfarm::testing::FakeClock;
using ::zfarm::testing::FakeWorker;
using ::zfarm::testing::TestScheduler;

std::unique_ptr<grpc::ClientContext> Ctx(int seconds = 10) {
  auto c = std::make_unique<grpc::ClientContext>();
  c->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
  return c;
}

class ServiceTest : public ::testing::Test {
 protected:
  void Start(ServerOptions o = {}, Clock* clock = Clock::Real()) {
    auto f = TestScheduler::Start(o, clock);
    ASSERT_OK(f.status());
    farm_ = *std::move(f);
    jobs_ = v1::JobService::NewStub(farm_->channel());
    admin_ = v1::AdminService::NewStub(farm_->channel());
  }
  v1::SubmitJobResponse Submit(const std::string& rid, int steps = 3,
                               const std::map<std::string, std::string>& labels = {}) {
    v1::SubmitJobRequest r;
    r.set_request_id(rid);
    r.mutable_spec()->set_prompt("prompt " + rid);
    r.mutable_spec()->set_steps(steps);
    r.mutable_spec()->set_width_px(512);
    r.mutable_spec()->set_height_px(512);
    for (const auto& [k, v] : labels) (*r.mutable_spec()->mutable_labels())[k] = v;
    v1::SubmitJobResponse resp;
    grpc::Status s = jobs_->SubmitJob(Ctx().get(), r, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp;
  }
  v1::Job Get(const std::string& id) {
    v1::GetJobRequest r;
    r.set_job_id(id);
    v1::Job j;
    grpc::Status s = jobs_->GetJob(Ctx().get(), r, &j);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return j;
  }
  std::unique_ptr<FakeWorker> Worker(const std::string& name, int capacity = 1) {
    FakeWorker::Options o;
    o.name = name;
    o.capacity = capacity;
    auto w = FakeWorker::Connect(farm_->channel(), o);
    EXPECT_OK(w.status());
    return w.ok() ? *std::move(w) : nullptr;
  }
  // Reads a watch stream to its end.
  static std::pair<std::vector<v1::JobEvent>, grpc::Status> ReadAll(
      grpc::ClientReader<v1::JobEvent>* reader) {
    std::vector<v1::JobEvent> events;
    v1::JobEvent e;
    while (reader->Read(&e)) events.push_back(e);
    return {events, reader->Finish()};
  }
  std::unique_ptr<TestScheduler> farm_;
  std::unique_ptr<v1::JobService::Stub> jobs_;
  std::unique_ptr<v1::AdminService::Stub> admin_;
};

TEST_F(ServiceTest, HealthServing) {
  Start();
  EXPECT_OK(ProbeHealth(farm_->address(), absl::Seconds(5)));
}

TEST_F(ServiceTest, SubmitDispatchProgressCommitWatchAndGetResult) {
  Start();
  auto sub = Submit("r1", 3);
  ASSERT_TRUE(sub.created());
  const std::string id = sub.job().job_id();
  auto wctx = Ctx(30);
  v1::WatchJobRequest wr;
  wr.set_job_id(id);
  auto reader = jobs_->WatchJob(wctx.get(), wr);
  auto worker = Worker("w1");
  ASSERT_NE(worker, nullptr);
  ASSERT_OK_AND_ASSIGN(v1::Lease lease, worker->NextLease());
  EXPECT_EQ(lease.lease().job_id(), id);
  ASSERT_OK(worker->RunToSuccess(lease, farm_->output_root()));
  auto [events, status] = ReadAll(reader.get());
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.front().type(), v1::JOB_EVENT_TYPE_SNAPSHOT);
  EXPECT_EQ(events.back().job().state(), v1::JOB_STATE_SUCCEEDED);
  int progress = 0;
  for (const auto& e : events) progress += e.type() == v1::JOB_EVENT_TYPE_PROGRESS;
  EXPECT_EQ(progress, 3);
  // A watcher that arrives late gets the final snapshot and the stream ends.
  auto late_ctx = Ctx();
  auto late = jobs_->WatchJob(late_ctx.get(), wr);
  auto [late_events, late_status] = ReadAll(late.get());
  EXPECT_TRUE(late_status.ok());
  ASSERT_EQ(late_events.size(), 1u);
  EXPECT_EQ(late_events[0].job().state(), v1::JOB_STATE_SUCCEEDED);
  // GetResult streams the file the worker renamed into place.
  v1::GetResultRequest gr;
  gr.set_job_id(id);
  auto rctx = Ctx();
  auto result = jobs_->GetResult(rctx.get(), gr);
  std::string bytes;
  v1::ResultChunk chunk;
  while (result->Read(&chunk)) bytes += chunk.data();
  ASSERT_TRUE(result->Finish().ok());
  std::ifstream f(farm_->output_root() + "/" + lease.output_path(), std::ios::binary);
  std::string expected((std::istreambuf_iterator<char>(f)), {});
  EXPECT_FALSE(expected.empty());
  EXPECT_EQ(bytes, expected);
}

TEST_F(ServiceTest, WatchJobsOverBatch) {
  Start();
  v1::SubmitJobsRequest br;
  for (int i = 0; i < 3; ++i) {
    auto* j = br.add_jobs();
    j->set_request_id("batch-" + std::to_string(i));
    j->mutable_spec()->set_prompt("p");
    j->mutable_spec()->set_steps(1);
  }
  v1::SubmitJobsResponse bresp;
  ASSERT_TRUE(jobs_->SubmitJobs(Ctx().get(), br, &bresp).ok());
  v1::WatchJobsRequest wr;
  wr.set_batch_id(bresp.batch_id());
  auto wctx = Ctx(30);
  auto reader = jobs_->WatchJobs(wctx.get(), wr);
  auto worker = Worker("w", 3);
  for (int i = 0; i < 3; ++i) {
    ASSERT_OK_AND_ASSIGN(v1::Lease l, worker->NextLease());
    ASSERT_OK(worker->RunToSuccess(l, farm_->output_root()));
  }
  auto [events, status] = ReadAll(reader.get());
  ASSERT_TRUE(status.ok()) << status.error_message();
  std::set<std::string> succeeded;
  for (const auto& e : events) {
    if (e.job().state() == v1::JOB_STATE_SUCCEEDED) succeeded.insert(e.job().job_id());
  }
  EXPECT_EQ(succeeded.size(), 3u);
  // Unknown batch -> NOT_FOUND.
  wr.set_batch_id("no-such-batch");
  auto c2 = Ctx();
  auto r2 = jobs_->WatchJobs(c2.get(), wr);
  EXPECT_EQ(ReadAll(r2.get()).second.error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(ServiceTest, WatchStreamOverItsBacklogLimitEndsNamingTheFlag) {
  // Every event is larger than one byte, so the first unsent event overflows.
  ServerOptions o;
  o.max_watch_backlog_bytes = 1;
  Start(o);
  const auto job = Submit("backlog", 1).job();
  v1::WatchJobRequest wr;
  wr.set_job_id(job.job_id());
  auto wctx = Ctx(30);
  auto reader = jobs_->WatchJob(wctx.get(), wr);
  auto [events, status] = ReadAll(reader.get());
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("--max-watch-backlog-bytes"));
  EXPECT_TRUE(events.empty());
  // The job itself is untouched.
  EXPECT_EQ(Get(job.job_id()).state(), v1::JOB_STATE_QUEUED);
}

TEST_F(ServiceTest, GetJobWithoutIdIsInvalidArgument) {
  Start();
  v1::GetJobRequest r;
  v1::Job j;
  grpc::Status s = jobs_->GetJob(Ctx().get(), r, &j);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("job_id"));
}

TEST_F(ServiceTest, IdempotentResubmitAndConflict) {
  Start();
  auto a = Submit("idem");
  auto b = Submit("idem");
  EXPECT_FALSE(b.created());
  EXPECT_EQ(a.job().job_id(), b.job().job_id());
  v1::SubmitJobRequest r;
  r.set_request_id("idem");
  r.mutable_spec()->set_prompt("other");
  v1::SubmitJobResponse resp;
  auto ctx = Ctx();
  grpc::Status s = jobs_->SubmitJob(ctx.get(), r, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("different spec"));
  // The conflict is typed: the client learns the job without reading the text.
  std::optional<RequestIdConflict> conflict = FindRequestIdConflict(FromGrpcCall(s, *ctx));
  ASSERT_TRUE(conflict.has_value());
  EXPECT_EQ(conflict->request_id, "idem");
  EXPECT_EQ(conflict->job_id, a.job().job_id());
  // Other bad input carries no conflict.
  r.set_request_id("fresh");
  r.mutable_spec()->set_steps(99);
  auto ctx2 = Ctx();
  s = jobs_->SubmitJob(ctx2.get(), r, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_FALSE(FindRequestIdConflict(FromGrpcCall(s, *ctx2)).has_value());
}

TEST_F(ServiceTest, BadInputNamesFieldAndLimit) {
  Start();
  v1::SubmitJobRequest r;
  r.mutable_spec()->set_prompt("x");
  r.mutable_spec()->set_width_px(1000);
  v1::SubmitJobResponse resp;
  grpc::Status s = jobs_->SubmitJob(Ctx().get(), r, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("spec.width_px"));
  EXPECT_THAT(s.error_message(), HasSubstr("2048"));
}

TEST_F(ServiceTest, BackpressureHasRetryAfterTrailer) {
  ServerOptions o;
  o.scheduler.max_queued_jobs = 1;
  o.scheduler.retry_after = absl::Milliseconds(1500);
  Start(o);
  Submit("one");
  v1::SubmitJobRequest r;
  r.set_request_id("two");
  r.mutable_spec()->set_prompt("x");
  v1::SubmitJobResponse resp;
  auto ctx = Ctx();
  grpc::Status s = jobs_->SubmitJob(ctx.get(), r, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(s.error_message(), HasSubstr("retry after 1500 ms"));
  auto trailer = ctx->GetServerTrailingMetadata().find("retry-after-ms");
  ASSERT_NE(trailer, ctx->GetServerTrailingMetadata().end());
  EXPECT_EQ(std::string(trailer->second.data(), trailer->second.size()), "1500");
  std::optional<absl::Duration> delay = RetryDelay(FromGrpcCall(s, *ctx));
  ASSERT_TRUE(delay.has_value());
  EXPECT_EQ(*delay, absl::Milliseconds(1500));
}

TEST_F(ServiceTest, CancelQueuedAndRunning) {
  Start();
  auto running = Submit("running");
  auto worker = Worker("w");
  ASSERT_OK_AND_ASSIGN(v1::Lease lease, worker->NextLease());
  ASSERT_OK(worker->Started(lease.lease()));
  auto queued = Submit("queued");
  v1::CancelJobRequest c;
  c.set_job_id(queued.job().job_id());
  v1::CancelJobResponse cr;
  ASSERT_TRUE(jobs_->CancelJob(Ctx().get(), c, &cr).ok());
  EXPECT_EQ(Get(queued.job().job_id()).state(), v1::JOB_STATE_CANCELLED);
  c.set_job_id(running.job().job_id());
  ASSERT_TRUE(jobs_->CancelJob(Ctx().get(), c, &cr).ok());
  ASSERT_OK_AND_ASSIGN(auto cancel, worker->NextMessage(v1::SchedulerMessage::kCancel));
  EXPECT_EQ(cancel.cancel().lease().job_id(), running.job().job_id());
  ASSERT_OK(worker->Fail(lease.lease(), v1::FAILURE_REASON_CANCELLED_BY_CLIENT, false));
  v1::WatchJobRequest wr;
  wr.set_job_id(running.job().job_id());
  auto wctx = Ctx();
  auto reader = jobs_->WatchJob(wctx.get(), wr);
  auto [events, status] = ReadAll(reader.get());
  ASSERT_TRUE(status.ok());
  EXPECT_EQ(events.back().job().state(), v1::JOB_STATE_CANCELLED);
}

TEST_F(ServiceTest, WorkerLostMidJobRequeuedFinishedByAnotherLateCommitRefused) {
  Start();
  auto sub = Submit("lost");
  auto a = Worker("a");
  ASSERT_OK_AND_ASSIGN(v1::Lease la, a->NextLease());
  ASSERT_OK(a->Started(la.lease()));
  ASSERT_OK(a->Progress(la.lease(), 1, 3));
  a->Disconnect();
  a->WaitForEnd();
  auto b = Worker("b");
  ASSERT_OK_AND_ASSIGN(v1::Lease lb, b->NextLease());
  EXPECT_EQ(lb.lease().job_id(), sub.job().job_id());
  EXPECT_EQ(lb.lease().attempt(), 2);
  ASSERT_OK(b->RunToSuccess(lb, farm_->output_root()));
  // a comes back and tries to commit the lease it held.
  auto a2 = Worker("a");
  ASSERT_OK_AND_ASSIGN(bool accepted, a2->Commit(la, farm_->output_root()));
  EXPECT_FALSE(accepted);
  v1::Job j;
  for (int i = 0; i < 100 && j.state() != v1::JOB_STATE_SUCCEEDED; ++i) j = Get(sub.job().job_id());
  EXPECT_EQ(j.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(j.worker(), "b");
  EXPECT_EQ(j.attempt(), 2);
}

TEST_F(ServiceTest, PoisonJobFailsAfterThreeLosses) {
  Start();
  auto sub = Submit("poison");
  for (int i = 0; i < 3; ++i) {
    auto w = Worker("w" + std::to_string(i));
    ASSERT_OK_AND_ASSIGN(v1::Lease l, w->NextLease());
    ASSERT_OK(w->Started(l.lease()));
    // Make sure Started is processed before the stream dies.
    ASSERT_OK(w->Progress(l.lease(), 1, 3));
    for (int k = 0; k < 200 && Get(sub.job().job_id()).progress().step() != 1; ++k) {
    }
    w->Disconnect();
    w->WaitForEnd();
  }
  v1::WatchJobRequest wr;
  wr.set_job_id(sub.job().job_id());
  auto wctx = Ctx();
  auto reader = jobs_->WatchJob(wctx.get(), wr);
  auto [events, status] = ReadAll(reader.get());
  ASSERT_TRUE(status.ok());
  EXPECT_EQ(events.back().job().state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(events.back().job().error().reason(), v1::FAILURE_REASON_TOO_MANY_ATTEMPTS);
}

TEST_F(ServiceTest, DeadlineWithFakeClock) {
  FakeClock clock;
  ServerOptions o;
  o.tick_interval = absl::Hours(1);
  Start(o, &clock);
  v1::SubmitJobRequest r;
  r.mutable_spec()->set_prompt("x");
  *r.mutable_spec()->mutable_deadline() =
      google::protobuf::util::TimeUtil::SecondsToTimestamp(absl::ToUnixSeconds(clock.Now()) + 10);
  v1::SubmitJobResponse resp;
  ASSERT_TRUE(jobs_->SubmitJob(Ctx().get(), r, &resp).ok());
  clock.Advance(absl::Seconds(11));
  farm_->scheduler()->Tick();
  v1::Job j = Get(resp.job().job_id());
  EXPECT_EQ(j.state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(j.error().reason(), v1::FAILURE_REASON_DEADLINE_EXCEEDED);
}

TEST_F(ServiceTest, MalformedWorkerStreamsAreEndedNotCrashing) {
  Start();
  FakeWorker::Options o;
  o.send_hello = false;
  ASSERT_OK_AND_ASSIGN(auto w, FakeWorker::Connect(farm_->channel(), o));
  v1::WorkerMessage hb;
  hb.mutable_heartbeat();
  ASSERT_OK(w->Send(hb));
  grpc::Status s = w->WaitForEnd();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();

  auto w2 = Worker("w2");
  ASSERT_OK(w2->Send(v1::WorkerMessage()));
  EXPECT_EQ(w2->WaitForEnd().error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  FakeWorker::Options bad;
  bad.name = "";
  auto w3 = FakeWorker::Connect(farm_->channel(), bad, absl::Seconds(5));
  EXPECT_FALSE(w3.ok());
  // Still serving.
  EXPECT_TRUE(Submit("after").created());
  EXPECT_OK(ProbeHealth(farm_->address(), absl::Seconds(5)));
}

TEST_F(ServiceTest, AdminListAndDrain) {
  Start();
  auto w = Worker("drain-me", 2);
  v1::ListWorkersResponse lw;
  ASSERT_TRUE(admin_->ListWorkers(Ctx().get(), v1::ListWorkersRequest(), &lw).ok());
  ASSERT_EQ(lw.workers_size(), 1);
  EXPECT_EQ(lw.workers(0).worker_name(), "drain-me");
  EXPECT_EQ(lw.workers(0).state(), v1::WORKER_STATE_READY);
  v1::DrainWorkerRequest dr;
  dr.set_worker_name("drain-me");
  v1::DrainWorkerResponse dresp;
  ASSERT_TRUE(admin_->DrainWorker(Ctx().get(), dr, &dresp).ok());
  EXPECT_EQ(dresp.worker().state(), v1::WORKER_STATE_DRAINING);
  ASSERT_OK(w->NextMessage(v1::SchedulerMessage::kDrain).status());
  Submit("not-for-drained");
  EXPECT_FALSE(w->NextLease(absl::Milliseconds(200)).ok());
  EXPECT_TRUE(dresp.changed());
  ASSERT_TRUE(admin_->DrainWorker(Ctx().get(), dr, &dresp).ok());
  EXPECT_FALSE(dresp.changed());  // already draining
  dr.set_worker_name("nobody");
  EXPECT_EQ(admin_->DrainWorker(Ctx().get(), dr, &dresp).error_code(), grpc::StatusCode::NOT_FOUND);

  // Resume: the worker hears it and gets the job that waited.
  v1::ResumeWorkerRequest rr;
  rr.set_worker_name("drain-me");
  v1::ResumeWorkerResponse rresp;
  ASSERT_TRUE(admin_->ResumeWorker(Ctx().get(), rr, &rresp).ok());
  EXPECT_TRUE(rresp.changed());
  EXPECT_EQ(rresp.worker().state(), v1::WORKER_STATE_READY);
  ASSERT_OK(w->NextMessage(v1::SchedulerMessage::kResume).status());
  ASSERT_OK(w->NextLease().status());
  ASSERT_TRUE(admin_->ResumeWorker(Ctx().get(), rr, &rresp).ok());
  EXPECT_FALSE(rresp.changed());  // not draining
  rr.set_worker_name("nobody");
  grpc::Status s = admin_->ResumeWorker(Ctx().get(), rr, &rresp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(s.error_message(), HasSubstr("nobody"));
}

TEST_F(ServiceTest, CapabilitiesOverTheWireRouteJobsAndShowInListWorkers) {
  Start();
  FakeWorker::Options po;
  po.name = "plain";
  ASSERT_OK_AND_ASSIGN(auto plain, FakeWorker::Connect(farm_->channel(), po));
  v1::SubmitJobRequest req;
  req.set_request_id("lora-job");
  req.mutable_spec()->set_prompt("a logo");
  req.mutable_spec()->add_loras()->set_name("brand");
  v1::SubmitJobResponse resp;
  ASSERT_TRUE(jobs_->SubmitJob(Ctx().get(), req, &resp).ok());
  EXPECT_FALSE(plain->NextLease(absl::Milliseconds(300)).ok());
  FakeWorker::Options lo;
  lo.name = "lora";
  lo.features = {"lora"};
  lo.loras.emplace_back().set_name("brand");
  lo.dtype = "bfloat16";
  ASSERT_OK_AND_ASSIGN(auto lora, FakeWorker::Connect(farm_->channel(), lo));
  ASSERT_OK(lora->HeartbeatActive({"brand"}));
  ASSERT_OK_AND_ASSIGN(v1::Lease lease, lora->NextLease());
  EXPECT_EQ(lease.lease().job_id(), resp.job().job_id());
  // The heartbeat travels on the same stream as the lease's messages, in order.
  ASSERT_OK(lora->Started(lease.lease()));
  v1::ListWorkersResponse lw;
  ASSERT_TRUE(zfarm::testing::WaitFor(
      [&] {
        lw.Clear();
        v1::GetJobRequest g;
        g.set_job_id(resp.job().job_id());
        v1::Job j;
        return jobs_->GetJob(Ctx().get(), g, &j).ok() && j.state() == v1::JOB_STATE_RUNNING &&
               admin_->ListWorkers(Ctx().get(), v1::ListWorkersRequest(), &lw).ok();
      },
      absl::Seconds(10)));
  ASSERT_EQ(lw.workers_size(), 2);
  const v1::WorkerInfo& info = lw.workers(0);  // sorted by name: "lora" first
  EXPECT_EQ(info.worker_name(), "lora");
  EXPECT_EQ(info.dtype(), "bfloat16");
  ASSERT_EQ(info.features_size(), 1);
  EXPECT_EQ(info.features(0), "lora");
  ASSERT_EQ(info.loras_size(), 1);
  EXPECT_EQ(info.loras(0).name(), "brand");
  ASSERT_EQ(info.active_loras_size(), 1);
  EXPECT_EQ(info.active_loras(0), "brand");
}

TEST_F(ServiceTest, ListJobsFiltersAndPages) {
  Start();
  for (int i = 0; i < 5; ++i) Submit("l" + std::to_string(i), 1, {{"team", i % 2 ? "a" : "b"}});
  v1::ListJobsRequest lr;
  lr.set_label("team=a");
  v1::ListJobsResponse resp;
  ASSERT_TRUE(jobs_->ListJobs(Ctx().get(), lr, &resp).ok());
  EXPECT_EQ(resp.jobs_size(), 2);
  lr.clear_label();
  lr.set_page_size(2);
  std::set<std::string> all;
  do {
    ASSERT_TRUE(jobs_->ListJobs(Ctx().get(), lr, &resp).ok());
    for (const auto& j : resp.jobs()) all.insert(j.job_id());
    lr.set_page_token(resp.next_page_token());
  } while (!resp.next_page_token().empty());
  EXPECT_EQ(all.size(), 5u);
}

class DenyAll : public Authorizer {
 public:
  absl::StatusOr<Caller> Authorize(absl::string_view method,
                                   const std::multimap<grpc::string_ref, grpc::string_ref>&,
                                   const std::string&) override {
    return absl::PermissionDeniedError(absl::StrCat("denied: ", method));
  }
};

TEST_F(ServiceTest, AuthorizerIsCalledByHandlers) {
  ServerOptions o;
  o.security.authorizer = std::make_shared<DenyAll>();
  Start(o);
  v1::SubmitJobRequest r;
  r.mutable_spec()->set_prompt("x");
  v1::SubmitJobResponse resp;
  grpc::Status s = jobs_->SubmitJob(Ctx().get(), r, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(s.error_message(), HasSubstr("SubmitJob"));
  FakeWorker::Options wo;
  EXPECT_FALSE(FakeWorker::Connect(farm_->channel(), wo, absl::Seconds(5)).ok());
}

}  // namespace
}  // namespace zfarm::scheduler
