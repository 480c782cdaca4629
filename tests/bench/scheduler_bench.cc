// scheduler_bench: the scheduler's speed targets, in-process server on
// 127.0.0.1 with a durable journal and FakeWorkers, for each journal backend of
// --journals: sqlite (WAL, synchronous=FULL) and postgres (a PostgreSQL server
// the bench starts on loopback, fsync and synchronous_commit on; skipped when
// PostgreSQL is not installed).
//
//   scheduler_bench [--journals=sqlite,postgres] [--submits=20000] [--clients=16]
//                   [--latency_samples=1000] [--workers=1000] [--queued=100000]
//
// Prints one line per measurement, each starting with the backend. Not a ctest test.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "glog/logging.h"
#if ZFARM_HAVE_LIBPQ
#include "scheduler/postgres_journal.h"
#endif
#include "tests/testing/fake_worker.h"
#include "tests/testing/postgres_server.h"
#include "tests/testing/scheduler_fixture.h"
#include "zfarm/v1/admin_service.grpc.pb.h"
#include "zfarm/v1/job_service.grpc.pb.h"

ABSL_FLAG(int, submits, 20000, "Jobs submitted in the throughput run");
ABSL_FLAG(int, clients, 16, "Concurrent submitting clients (one channel each)");
ABSL_FLAG(int, inflight, 8, "Outstanding SubmitJob calls per client (1 = strictly sequential)");
ABSL_FLAG(int, latency_samples, 1000, "Slot->assignment samples");
ABSL_FLAG(int, workers, 1000, "Fake workers connected at once");
ABSL_FLAG(int, queued, 100000, "Jobs held in the queue for the RSS measurement");
ABSL_FLAG(int, many_queued, 10000, "Jobs queued in the `many` run");
ABSL_FLAG(std::string, only, "", "Run one part: submit, latency, workers, queued, many");
ABSL_FLAG(std::string, journals, "sqlite,postgres", "Journal backends to run, in turn");

namespace v1 = zfarm::v1;
using zfarm::testing::FakeWorker;
using zfarm::testing::PostgresServer;
using zfarm::testing::TestScheduler;

namespace {

// The backend of this run: "sqlite", or "postgres" with its server.
std::string backend = "sqlite";
PostgresServer* pg = nullptr;

double RssMiB() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  }
  return 0;
}

std::unique_ptr<grpc::ClientContext> Ctx() {
  auto c = std::make_unique<grpc::ClientContext>();
  c->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  return c;
}

std::unique_ptr<TestScheduler> StartFarm(int max_queued) {
  zfarm::scheduler::ServerOptions o;
  o.scheduler.max_queued_jobs = max_queued;
#if ZFARM_HAVE_LIBPQ
  if (backend == "postgres") {
    static int databases = 0;
    auto url = pg->CreateDatabase("bench" + std::to_string(++databases));
    CHECK(url.ok()) << url.status();
    zfarm::scheduler::PostgresJournal::Options jo;
    jo.connect.url = *url;
    jo.connect.password_file = pg->password_file();
    o.scheduler.open_journal = [jo]() -> absl::StatusOr<std::unique_ptr<zfarm::scheduler::Journal>> {
      auto j = zfarm::scheduler::PostgresJournal::Open(jo);
      if (!j.ok()) return j.status();
      return std::unique_ptr<zfarm::scheduler::Journal>(*std::move(j));
    };
  }
#endif
  auto farm = TestScheduler::Start(o);
  CHECK(farm.ok()) << farm.status();
  return *std::move(farm);
}

void Submit() {
  auto farm = StartFarm(10'000'000);
  const int n = absl::GetFlag(FLAGS_submits), clients = absl::GetFlag(FLAGS_clients);
  std::atomic<int> next{0}, failed{0};
  absl::Time t0 = absl::Now();
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      grpc::ChannelArguments args;
      args.SetInt("zfarm.client", c);  // distinct channels, distinct connections
      auto stub = v1::JobService::NewStub(
          grpc::CreateCustomChannel(farm->address(), grpc::InsecureChannelCredentials(), args));
      // Each client keeps up to --inflight submits outstanding (async stub).
      struct Call {
        grpc::ClientContext ctx;
        v1::SubmitJobRequest req;
        v1::SubmitJobResponse resp;
      };
      absl::Mutex mu;
      int outstanding = 0;
      const int inflight = absl::GetFlag(FLAGS_inflight);
      std::pair<int*, int> room{&outstanding, inflight};
      for (int i; (i = next.fetch_add(1)) < n;) {
        {
          absl::MutexLock l(&mu);
          mu.Await(absl::Condition(
              +[](std::pair<int*, int>* a) { return *a->first < a->second; }, &room));
          ++outstanding;
        }
        auto* call = new Call;
        call->ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
        call->req.set_request_id("bench-" + std::to_string(i));
        call->req.mutable_spec()->set_prompt("a lighthouse at dusk, variant " + std::to_string(i));
        stub->async()->SubmitJob(&call->ctx, &call->req, &call->resp, [&, call](grpc::Status st) {
          if (!st.ok()) failed++;
          delete call;
          absl::MutexLock l(&mu);
          --outstanding;
        });
      }
      absl::MutexLock l(&mu);
      mu.Await(absl::Condition(
          +[](int* o) { return *o == 0; }, &outstanding));
    });
  }
  for (auto& t : threads) t.join();
  double s = absl::ToDoubleSeconds(absl::Now() - t0);
  auto* j = farm->scheduler()->journal();
  printf(
      "%s submit: %d jobs from %d clients x %d in flight in %.2f s = %.0f jobs/s (durable; %ld "
      "fsync'd "
      "transactions, %.1f submits each; %d failed)\n",
      backend.c_str(), n, clients, absl::GetFlag(FLAGS_inflight), s, n / s, static_cast<long>(j->commits()),
      static_cast<double>(j->batches()) / std::max<int64_t>(1, j->commits()), failed.load());
}

void Latency() {
  auto farm = StartFarm(10'000'000);
  const int n = absl::GetFlag(FLAGS_latency_samples);
  v1::SubmitJobsRequest batch;
  for (int i = 0; i < n + 1; ++i) batch.add_jobs()->mutable_spec()->set_prompt("p");
  auto stub = v1::JobService::NewStub(farm->channel());
  for (int off = 0; off < n + 1; off += 1000) {
    v1::SubmitJobsRequest part;
    for (int i = off; i < std::min(n + 1, off + 1000); ++i) *part.add_jobs() = batch.jobs(i);
    v1::SubmitJobsResponse resp;
    CHECK(stub->SubmitJobs(Ctx().get(), part, &resp).ok());
  }
  FakeWorker::Options wo;
  wo.name = "latency";
  auto w = FakeWorker::Connect(farm->channel(), wo);
  CHECK(w.ok());
  std::vector<double> us;
  auto lease = (*w)->NextLease();
  CHECK(lease.ok());
  for (int i = 0; i < n; ++i) {
    CHECK((*w)->Started(lease->lease()).ok());
    auto acc = (*w)->Commit(*lease, farm->output_root(), /*send_finalized=*/false);
    CHECK(acc.ok() && *acc);
    v1::WorkerMessage fin;
    *fin.mutable_finalized()->mutable_lease() = lease->lease();
    absl::Time t0 = absl::Now();
    CHECK((*w)->Send(fin).ok());  // frees the slot
    lease = (*w)->NextLease();
    us.push_back(absl::ToDoubleMicroseconds(absl::Now() - t0));
    CHECK(lease.ok());
  }
  std::sort(us.begin(), us.end());
  printf(
      "%s slot->assignment: %d samples p50 %.3f ms p99 %.3f ms max %.3f ms (includes the durable "
      "SUCCEEDED+ASSIGNED transaction)\n",
      backend.c_str(), n, us[n / 2] / 1000, us[n * 99 / 100] / 1000, us.back() / 1000);
}

void Workers() {
  auto farm = StartFarm(10'000'000);
  const int n = absl::GetFlag(FLAGS_workers);
  double rss0 = RssMiB();
  absl::Time t0 = absl::Now();
  std::vector<std::unique_ptr<FakeWorker>> ws;
  for (int i = 0; i < n; ++i) {
    FakeWorker::Options o;
    o.name = "w" + std::to_string(i);
    auto w = FakeWorker::Connect(farm->channel(), o, absl::Seconds(30));
    CHECK(w.ok()) << w.status();
    ws.push_back(*std::move(w));
  }
  double connect_s = absl::ToDoubleSeconds(absl::Now() - t0);
  auto admin = v1::AdminService::NewStub(farm->channel());
  v1::ListWorkersResponse lw;
  CHECK(admin->ListWorkers(Ctx().get(), {}, &lw).ok());
  int ready = 0;
  for (const auto& w : lw.workers()) ready += w.state() == v1::WORKER_STATE_READY;
  // One job per worker: every worker gets exactly one lease.
  auto stub = v1::JobService::NewStub(farm->channel());
  t0 = absl::Now();
  v1::SubmitJobsRequest b;
  for (int i = 0; i < std::min(n, 1000); ++i) b.add_jobs()->mutable_spec()->set_prompt("p");
  v1::SubmitJobsResponse resp;
  CHECK(stub->SubmitJobs(Ctx().get(), b, &resp).ok());
  int leased = 0;
  for (auto& w : ws) leased += w->NextLease(absl::Seconds(30)).ok();
  double dispatch_s = absl::ToDoubleSeconds(absl::Now() - t0);
  printf(
      "%s workers: %d connected in %.2f s, %d READY in ListWorkers; %d jobs dispatched to %d "
      "workers in %.3f s; RSS +%.0f MiB (client+server in one process)\n",
      backend.c_str(), n, connect_s, ready, b.jobs_size(), leased, dispatch_s, RssMiB() - rss0);
}

// Dispatch latency in a big farm — `workers` fake workers connected (all
// but one busy holding a lease) and `queued` jobs waiting; the free worker's
// finalize -> next lease round trip, sampled latency_samples times.
void Many() {
  auto farm = StartFarm(10'000'000);
  const int n = absl::GetFlag(FLAGS_workers), queued = absl::GetFlag(FLAGS_many_queued);
  const int samples = absl::GetFlag(FLAGS_latency_samples);
  auto stub = v1::JobService::NewStub(farm->channel());
  const int total = n - 1 + queued + samples + 1;
  for (int off = 0; off < total; off += 1000) {
    v1::SubmitJobsRequest part;
    for (int i = off; i < std::min(total, off + 1000); ++i) {
      part.add_jobs()->mutable_spec()->set_prompt("p");
    }
    v1::SubmitJobsResponse resp;
    CHECK(stub->SubmitJobs(Ctx().get(), part, &resp).ok());
  }
  std::vector<std::unique_ptr<FakeWorker>> busy;
  for (int i = 0; i < n - 1; ++i) {
    FakeWorker::Options o;
    o.name = "busy" + std::to_string(i);
    auto w = FakeWorker::Connect(farm->channel(), o, absl::Seconds(30));
    CHECK(w.ok()) << w.status();
    CHECK((*w)->NextLease(absl::Seconds(30)).ok());  // holds it: this worker stays busy
    busy.push_back(*std::move(w));
  }
  FakeWorker::Options wo;
  wo.name = "sampled";
  auto w = FakeWorker::Connect(farm->channel(), wo);
  CHECK(w.ok());
  auto lease = (*w)->NextLease();
  CHECK(lease.ok());
  std::vector<double> us;
  for (int i = 0; i < samples; ++i) {
    CHECK((*w)->Started(lease->lease()).ok());
    auto acc = (*w)->Commit(*lease, farm->output_root(), /*send_finalized=*/false);
    CHECK(acc.ok() && *acc);
    v1::WorkerMessage fin;
    *fin.mutable_finalized()->mutable_lease() = lease->lease();
    absl::Time t0 = absl::Now();
    CHECK((*w)->Send(fin).ok());
    lease = (*w)->NextLease();
    us.push_back(absl::ToDoubleMicroseconds(absl::Now() - t0));
    CHECK(lease.ok());
    if (i % 100 == 0) {
      for (auto& b : busy) (void)b->Heartbeat();
    }
  }
  std::sort(us.begin(), us.end());
  printf(
      "%s many: %d workers (%d busy), %d jobs queued: free slot -> assignment p50 %.3f ms p99 "
      "%.3f ms max %.3f ms over %d samples\n",
      backend.c_str(), n, n - 1, static_cast<int>(farm->scheduler()->QueuedJobs()), us[us.size() / 2] / 1000,
      us[us.size() * 99 / 100] / 1000, us.back() / 1000, samples);
}

void Queued() {
  const int n = absl::GetFlag(FLAGS_queued);
  auto farm = StartFarm(n);
  double rss0 = RssMiB();
  auto stub = v1::JobService::NewStub(farm->channel());
  absl::Time t0 = absl::Now();
  for (int off = 0; off < n; off += 1000) {
    v1::SubmitJobsRequest b;
    for (int i = off; i < std::min(n, off + 1000); ++i) {
      auto* j = b.add_jobs();
      j->set_request_id("q-" + std::to_string(i));
      j->mutable_spec()->set_prompt("a lighthouse at dusk, oil painting, variant " +
                                    std::to_string(i));
      j->mutable_spec()->set_priority(i % 5);
      (*j->mutable_spec()->mutable_labels())["campaign"] = "bench";
    }
    v1::SubmitJobsResponse resp;
    grpc::Status s = stub->SubmitJobs(Ctx().get(), b, &resp);
    CHECK(s.ok()) << s.error_message();
  }
  double s = absl::ToDoubleSeconds(absl::Now() - t0);
  printf(
      "%s queued: %d jobs held (batches of 1000 in %.1f s), queue=%ld, process RSS %.0f MiB "
      "(+%.0f MiB for the jobs)\n",
      backend.c_str(), n, s, static_cast<long>(farm->scheduler()->QueuedJobs()), RssMiB(), RssMiB() - rss0);
  if (backend != "sqlite") return;  // the recovery below reopens the SQLite file
  // Restart cost: recovery of n jobs from the journal.
  std::string state = farm->state_dir();
  farm->Stop();
  zfarm::scheduler::Scheduler::Options so;
  so.state_dir = state;
  so.max_queued_jobs = n;
  t0 = absl::Now();
  auto again = zfarm::scheduler::Scheduler::Create(so, zfarm::scheduler::Clock::Real(), nullptr);
  CHECK(again.ok());
  printf("sqlite recovery: %ld queued jobs reloaded in %.2f s\n",
         static_cast<long>((*again)->QueuedJobs()), absl::ToDoubleSeconds(absl::Now() - t0));
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  FLAGS_minloglevel = 2;  // quiet: the scheduler logs every transition at INFO
  google::InitGoogleLogging(argv[0]);
  std::string only = absl::GetFlag(FLAGS_only);
  std::unique_ptr<PostgresServer> server;
  for (absl::string_view b : absl::StrSplit(absl::GetFlag(FLAGS_journals), ',')) {
    backend = std::string(b);
    if (backend == "postgres") {
#if !ZFARM_HAVE_LIBPQ
      printf("postgres: skipped (built without libpq)\n");
      continue;
#endif
      auto s = PostgresServer::Start("/tmp/zfarm-bench-pg-" + std::to_string(getpid()));
      if (!s.ok()) {
        printf("postgres: skipped (%s)\n", std::string(s.status().message()).c_str());
        continue;
      }
      server = *std::move(s);
      pg = server.get();
    } else {
      CHECK_EQ(backend, "sqlite") << "--journals: sqlite or postgres";
    }
    if (only.empty() || only == "submit") Submit();
    if (only.empty() || only == "latency") Latency();
    if (only.empty() || only == "workers") Workers();
    if (only.empty() || only == "queued") Queued();
    if (only.empty() || only == "many") Many();
  }
  return 0;
}
