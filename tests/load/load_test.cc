// zfarm_load: the real zfarm-scheduler binary under load.
// N clients submit J jobs paced over D seconds, W watchers keep WatchJob streams
// open on recent jobs (each to a final state, then the next), F fake workers
// render everything. Checks: no acknowledged job lost, none run twice (one
// accepted commit per job), every watch stream ends in SUCCEEDED. Reports p50/p99/
// max submit latency and the scheduler's RSS over time. --stalled_watchers adds
// WatchJobs streams that never read (stuck clients); --max_rss_growth_mb turns the
// RSS report into a check. Exit 0 = all checks held.
//
//   zfarm_load --duration_s=600 --jobs=10000 --clients=20 --watchers=200   # by hand
//   ctest -L load                                       # 60 s smoke (1,000 jobs)
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "proto/contract/contract.h"
#include "tests/testing/fake_worker.h"
#include "tests/testing/subprocess.h"
#include "zfarm/v1/job_service.grpc.pb.h"

ABSL_FLAG(int, duration_s, 60, "Seconds over which the submits are spread");
ABSL_FLAG(int, jobs, 1000, "Jobs to submit in total");
ABSL_FLAG(int, clients, 20, "Concurrent submitting clients");
ABSL_FLAG(int, watchers, 200, "Concurrent WatchJob streams");
ABSL_FLAG(int, workers, 16, "Fake workers (capacity 2 each)");
ABSL_FLAG(std::string, scheduler_bin, ZFARM_SCHEDULER_BIN, "zfarm-scheduler binary");
ABSL_FLAG(std::string, work_dir, "", "State/output dir (default: a fresh temp dir, removed)");
ABSL_FLAG(int64_t, max_watch_backlog_bytes, -1,
          "Passed to the scheduler as --max-watch-backlog-bytes (-1 = its default; 0 = "
          "unbounded, to measure what the bound saves)");
ABSL_FLAG(int, stalled_watchers, 0,
          "WatchJobs streams on a label every job carries that never read (a stuck or "
          "overloaded client; each on its own connection), held open until the end");
ABSL_FLAG(bool, stalled_must_be_cut_off, false,
          "Fail unless the scheduler ended every --stalled_watchers stream itself (its "
          "--max-watch-backlog-bytes bound) before the run ended");
ABSL_FLAG(int, max_rss_growth_mb, 0,
          "Fail when the scheduler's RSS grows by more than this from the end of the first "
          "quarter of the run to the end of the submits (0 = report only)");
ABSL_FLAG(int, max_finished_jobs, 0,
          "Pass --max-finished-jobs to the scheduler (0 = its default); jobs pruned by the cap "
          "count as kept when they ran exactly once and their PNG exists");

namespace {

namespace v1 = ::zfarm::v1;
namespace fs = std::filesystem;
using ::zfarm::contract::IsFinal;
using ::zfarm::testing::FakeWorker;
using ::zfarm::testing::Subprocess;

FakeWorker::Options WorkerOpts(const std::string& name, int capacity = 1) {
  FakeWorker::Options o;
  o.name = name;
  o.capacity = capacity;
  return o;
}

int64_t RssKb(pid_t pid) {
  std::ifstream f(absl::StrCat("/proc/", pid, "/status"));
  for (std::string line; std::getline(f, line);) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6));
  }
  return -1;
}

std::unique_ptr<grpc::ClientContext> Ctx(int seconds = 30) {
  auto c = std::make_unique<grpc::ClientContext>();
  c->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
  return c;
}

// Whether `bin --help` mentions `flag` (spelled with dashes or, as older binaries
// list it, with underscores).
bool HelpMentions(const std::string& bin, std::string flag) {
  std::string cmd = bin + " --help 2>&1";
  FILE* f = popen(cmd.c_str(), "r");
  if (!f) return false;
  std::string out;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof(buf), f)) > 0;) out.append(buf, n);
  pclose(f);
  if (out.find(flag) != std::string::npos) return true;
  std::replace(flag.begin(), flag.end(), '-', '_');
  return out.find(flag) != std::string::npos;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5));
  return v[i];
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const int duration_s = absl::GetFlag(FLAGS_duration_s), total = absl::GetFlag(FLAGS_jobs),
            clients = absl::GetFlag(FLAGS_clients), nworkers = absl::GetFlag(FLAGS_workers);
  int watchers = absl::GetFlag(FLAGS_watchers);
  std::string dir = absl::GetFlag(FLAGS_work_dir);
  const bool own_dir = dir.empty();
  if (own_dir) dir = (fs::temp_directory_path() / absl::StrCat("zfarm-load-", getpid())).string();
  fs::remove_all(dir);
  fs::create_directories(dir + "/out");

  // Every client here shares one IP: lift the per-client stream limit (fair
  // share) when the binary has the flag; otherwise stay under its default of 64.
  std::vector<std::string> sargv = {absl::GetFlag(FLAGS_scheduler_bin), "--listen=127.0.0.1:0",
                                    "--state-dir=" + dir + "/state",
                                    "--output-root=" + dir + "/out"};
  if (HelpMentions(sargv[0], "max-streams-per-client")) {
    sargv.push_back("--max-streams-per-client=10000");
  } else if (watchers > 24) {
    // 64 streams per client IP = workers' Connect streams + in-flight submits + watchers.
    std::printf(
        "zfarm_load: NOTE: this zfarm-scheduler has no --max-streams-per-client flag; "
        "watchers capped at 24 (was %d)\n",
        watchers);
    watchers = 24;
  }
  const int64_t backlog = absl::GetFlag(FLAGS_max_watch_backlog_bytes);
  if (backlog >= 0) sargv.push_back(absl::StrCat("--max-watch-backlog-bytes=", backlog));
  const int max_finished = absl::GetFlag(FLAGS_max_finished_jobs);
  if (max_finished > 0) sargv.push_back(absl::StrCat("--max-finished-jobs=", max_finished));
  Subprocess sched(sargv, dir + "/scheduler.log");
  std::string line = sched.WaitForLine("listening on ", absl::Seconds(30));
  if (line.empty()) {
    std::fprintf(stderr, "zfarm_load: scheduler did not start:\n%s\n", sched.ReadLog().c_str());
    return 1;
  }
  const std::string addr = line.substr(13);
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_MAX_CONCURRENT_STREAMS, 1000);
  // Clients use a few channels (separate HTTP/2 connections), like separate hosts.
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (int i = 0; i < 4; ++i) {
    args.SetInt("zfarm.load.channel", i);  // distinct args -> distinct subchannels
    channels.push_back(grpc::CreateCustomChannel(addr, grpc::InsecureChannelCredentials(), args));
  }
  std::printf(
      "zfarm_load: scheduler pid %d at %s; %d jobs over %d s, %d clients, %d watchers, "
      "%d workers\n",
      sched.pid(), addr.c_str(), total, duration_s, clients, watchers, nworkers);
  std::fflush(stdout);

  absl::Mutex mu;
  std::vector<std::string> acked;  // in submit order
  std::set<std::string> acked_set;
  std::vector<double> latency_ms;
  std::map<std::string, int> accepted;             // job -> accepted commits
  std::map<std::string, std::string> output_path;  // job -> its PNG
  std::atomic<int> submit_errors{0}, worker_errors{0}, watch_errors{0}, watch_done{0},
      watch_not_succeeded{0}, watch_refused{0};
  std::atomic<bool> submits_over{false}, stop{false};

  // RSS sampler (every second).
  std::vector<std::pair<double, int64_t>> rss;
  const absl::Time t0 = absl::Now();
  std::thread sampler([&] {
    while (!stop) {
      int64_t kb = RssKb(sched.pid());
      {
        absl::MutexLock l(&mu);
        rss.push_back({absl::ToDoubleSeconds(absl::Now() - t0), kb});
      }
      absl::SleepFor(absl::Seconds(1));
    }
  });

  // Workers.
  std::vector<std::thread> worker_threads;
  for (int i = 0; i < nworkers; ++i) {
    worker_threads.emplace_back([&, i] {
      auto w = FakeWorker::Connect(channels[i % channels.size()],
                                   WorkerOpts(absl::StrCat("load-w", i), 2));
      if (!w.ok()) {
        ++worker_errors;
        return;
      }
      while (!stop) {
        auto lease = (*w)->NextLease(absl::Seconds(2));
        if (!lease.ok()) {
          (void)(*w)->Heartbeat();
          continue;
        }
        if (!(*w)->RunToSuccess(*lease, dir + "/out").ok()) {
          ++worker_errors;
          continue;
        }
        absl::MutexLock l(&mu);
        ++accepted[lease->lease().job_id()];
        output_path[lease->lease().job_id()] = dir + "/out/" + lease->output_path();
      }
    });
  }

  // Clients: job k of client c is submitted at t0 + (k * clients + c) * spacing.
  const int per_client = (total + clients - 1) / clients;
  const absl::Duration spacing = absl::Seconds(duration_s) / std::max(1, total);
  std::vector<std::thread> client_threads;
  for (int c = 0; c < clients; ++c) {
    client_threads.emplace_back([&, c] {
      auto stub = v1::JobService::NewStub(channels[c % channels.size()]);
      for (int k = 0; k < per_client; ++k) {
        const int n = k * clients + c;
        if (n >= total) break;
        absl::Time due = t0 + spacing * n;
        if (absl::Now() < due) absl::SleepFor(due - absl::Now());
        v1::SubmitJobRequest r;
        r.set_request_id(absl::StrCat("load-", c, "-", k));
        r.mutable_spec()->set_prompt(absl::StrCat("load test job ", n));
        r.mutable_spec()->set_steps(2);
        (*r.mutable_spec()->mutable_labels())["client"] = absl::StrCat(c);
        (*r.mutable_spec()->mutable_labels())["run"] = "load";
        v1::SubmitJobResponse resp;
        absl::Time start = absl::Now();
        grpc::Status s;
        for (int attempt = 0; attempt < 5; ++attempt) {  // same request id: idempotent retry
          s = stub->SubmitJob(Ctx().get(), r, &resp);
          if (s.ok() || s.error_code() != grpc::StatusCode::UNAVAILABLE) break;
        }
        double ms = absl::ToDoubleMilliseconds(absl::Now() - start);
        absl::MutexLock l(&mu);
        if (!s.ok()) {
          ++submit_errors;
          std::fprintf(stderr, "submit %d: %s\n", n, s.error_message().c_str());
          continue;
        }
        latency_ms.push_back(ms);
        acked.push_back(resp.job().job_id());
        acked_set.insert(resp.job().job_id());
      }
    });
  }

  // Watchers: each watches one of the most recent acknowledged jobs to its end.
  std::vector<std::thread> watcher_threads;
  for (int i = 0; i < watchers; ++i) {
    watcher_threads.emplace_back([&, i] {
      auto stub = v1::JobService::NewStub(channels[i % channels.size()]);
      std::mt19937 rng(i);
      while (!submits_over) {
        std::string id;
        {
          absl::MutexLock l(&mu);
          if (!acked.empty()) {
            size_t back = std::min<size_t>(acked.size(), 50);
            id = acked[acked.size() - 1 - rng() % back];
          }
        }
        if (id.empty()) {
          absl::SleepFor(absl::Milliseconds(50));
          continue;
        }
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
        v1::WatchJobRequest req;
        req.set_job_id(id);
        auto reader = stub->WatchJob(&ctx, req);
        v1::JobEvent ev;
        v1::JobState last = v1::JOB_STATE_UNSPECIFIED;
        int events = 0;
        while (reader->Read(&ev)) {
          last = ev.job().state();
          ++events;
        }
        // Already final when the stream opened: pick a fresher job after a pause.
        if (events <= 1) absl::SleepFor(absl::Milliseconds(200));
        grpc::Status s = reader->Finish();
        if (s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
          // --max-watchers-per-job: the documented answer is "retry later".
          ++watch_refused;
          absl::SleepFor(absl::Seconds(1));
          continue;
        }
        if (!s.ok()) {
          ++watch_errors;
          std::fprintf(stderr, "watch %s: %s\n", id.c_str(), s.error_message().c_str());
          absl::SleepFor(absl::Seconds(1));
          continue;
        }
        ++watch_done;
        if (last != v1::JOB_STATE_SUCCEEDED) ++watch_not_succeeded;
      }
    });
  }

  // Stalled watchers: open, never read (their server-side event queues are what
  // --max_rss_growth_mb bounds).
  struct Stalled {
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<v1::JobService::Stub> stub;
    grpc::ClientContext ctx;
    std::unique_ptr<grpc::ClientReader<v1::JobEvent>> reader;
  };
  // Their label also matches a job no worker can take (it needs a model nobody
  // has), so the streams stay open until it is cancelled after the submits.
  std::vector<std::unique_ptr<Stalled>> stalled;
  std::string pinned;
  if (absl::GetFlag(FLAGS_stalled_watchers) > 0) {
    auto stub = v1::JobService::NewStub(channels[0]);
    v1::SubmitJobRequest r;
    r.mutable_spec()->set_prompt("pinned: keeps the stalled watchers' streams open");
    r.mutable_spec()->set_model("zfarm-load-no-such-model");
    (*r.mutable_spec()->mutable_labels())["run"] = "load";
    v1::SubmitJobResponse resp;
    grpc::Status s = stub->SubmitJob(Ctx().get(), r, &resp);
    if (!s.ok()) {
      std::fprintf(stderr, "zfarm_load: pinned job: %s\n", s.error_message().c_str());
      return 1;
    }
    pinned = resp.job().job_id();
  }
  for (int i = 0; i < absl::GetFlag(FLAGS_stalled_watchers); ++i) {
    auto st = std::make_unique<Stalled>();
    args.SetInt("zfarm.load.channel", 100 + i);
    st->channel = grpc::CreateCustomChannel(addr, grpc::InsecureChannelCredentials(), args);
    st->stub = v1::JobService::NewStub(st->channel);
    v1::WatchJobsRequest req;
    req.set_label("run=load");
    st->reader = st->stub->WatchJobs(&st->ctx, req);
    stalled.push_back(std::move(st));
  }

  for (auto& t : client_threads) t.join();
  const double submit_s = absl::ToDoubleSeconds(absl::Now() - t0);
  const int64_t rss_after_submits = RssKb(sched.pid());
  if (!pinned.empty()) {
    v1::CancelJobRequest cr;
    cr.set_job_id(pinned);
    v1::CancelJobResponse cresp;
    v1::JobService::NewStub(channels[0])->CancelJob(Ctx().get(), cr, &cresp).IgnoreError();
  }
  // Drain: wait until every acknowledged job is final (bounded).
  auto stub = v1::JobService::NewStub(channels[0]);
  std::map<v1::JobState, int> by_state;
  std::set<std::string> listed;
  const absl::Time drain_end = absl::Now() + absl::Seconds(120);
  for (;;) {
    by_state.clear();
    listed.clear();
    v1::ListJobsRequest lr;
    lr.set_page_size(1000);
    for (;;) {
      v1::ListJobsResponse resp;
      grpc::Status s = stub->ListJobs(Ctx().get(), lr, &resp);
      if (!s.ok()) break;
      for (const auto& j : resp.jobs()) {
        ++by_state[j.state()];
        listed.insert(j.job_id());
      }
      if (resp.next_page_token().empty()) break;
      lr.set_page_token(resp.next_page_token());
    }
    int final_n = 0;
    for (const auto& [st, n] : by_state) final_n += IsFinal(st) ? n : 0;
    if (final_n == static_cast<int>(listed.size()) || absl::Now() > drain_end) break;
    absl::SleepFor(absl::Milliseconds(200));
  }
  submits_over = true;
  for (auto& t : watcher_threads) t.join();
  // With --stalled_must_be_cut_off each stream is read to its own end: one the
  // scheduler cut off ends with an error; one it kept ends OK once every watched
  // job (the pinned one last) is final.
  const bool must_cut = absl::GetFlag(FLAGS_stalled_must_be_cut_off);
  int stalled_events = 0, stalled_cut_off = 0;
  for (auto& st : stalled) {
    if (!must_cut) st->ctx.TryCancel();
    for (v1::JobEvent ev; st->reader->Read(&ev);) ++stalled_events;
    if (!st->reader->Finish().ok()) ++stalled_cut_off;
  }
  stalled.clear();
  stop = true;
  for (auto& t : worker_threads) t.join();
  sampler.join();
  const int64_t rss_end = RssKb(sched.pid());
  int status = sched.Stop(SIGTERM);

  // Checks.
  absl::MutexLock l(&mu);
  int lost = 0, dup = 0, never_ran = 0, pruned = 0;
  for (const auto& id : acked_set) {
    if (!listed.count(id)) {
      // Pruned by --max-finished-jobs: kept if it ran exactly once and its PNG is there.
      auto a = accepted.find(id);
      if (max_finished > 0 && a != accepted.end() && a->second == 1 &&
          fs::exists(output_path[id])) {
        ++pruned;
      } else {
        ++lost;
      }
    }
    auto it = accepted.find(id);
    if (it == accepted.end()) {
      ++never_ran;
    } else if (it->second > 1) {
      ++dup;
    }
  }
  int64_t rss_peak = 0, rss_start = rss.empty() ? -1 : rss.front().second;
  for (const auto& [t, kb] : rss) rss_peak = std::max(rss_peak, kb);
  // RSS once warm (the first sample after a quarter of the submit phase).
  int64_t rss_warm = rss_start;
  for (const auto& [t, kb] : rss) {
    if (t >= submit_s / 4) {
      rss_warm = kb;
      break;
    }
  }
  const double growth_mb = (rss_after_submits - rss_warm) / 1024.0;
  const int max_growth = absl::GetFlag(FLAGS_max_rss_growth_mb);
  std::printf("zfarm_load: submitted %zu/%d in %.1f s (submit errors %d), listed %zu\n",
              acked_set.size(), total, submit_s, submit_errors.load(), listed.size());
  std::printf("  states: succeeded %d, failed %d, cancelled %d, other %zu\n",
              by_state[v1::JOB_STATE_SUCCEEDED], by_state[v1::JOB_STATE_FAILED],
              by_state[v1::JOB_STATE_CANCELLED],
              listed.size() - by_state[v1::JOB_STATE_SUCCEEDED] - by_state[v1::JOB_STATE_FAILED] -
                  by_state[v1::JOB_STATE_CANCELLED]);
  std::printf("  lost %d, duplicated %d, never ran %d, worker errors %d, pruned by the cap %d\n",
              lost, dup, never_ran, worker_errors.load(), pruned);
  std::printf("  watch streams finished %d (not SUCCEEDED %d, errors %d, refused by "
              "--max-watchers-per-job and retried %d)\n",
              watch_done.load(), watch_not_succeeded.load(), watch_errors.load(),
              watch_refused.load());
  std::printf("  submit latency ms: p50 %.2f p99 %.2f max %.2f (n=%zu)\n",
              Percentile(latency_ms, 0.5), Percentile(latency_ms, 0.99),
              Percentile(latency_ms, 1.0), latency_ms.size());
  std::printf("  scheduler RSS MiB: start %.1f peak %.1f end %.1f; over time:", rss_start / 1024.0,
              rss_peak / 1024.0, rss_end / 1024.0);
  size_t step = std::max<size_t>(1, rss.size() / 12);
  for (size_t i = 0; i < rss.size(); i += step) {
    std::printf(" %.0fs=%.1f", rss[i].first, rss[i].second / 1024.0);
  }
  std::printf("\n  scheduler RSS growth from %.0f s to the end of the submits: %.1f MiB (limit %s)\n",
              submit_s / 4, growth_mb,
              max_growth > 0 ? absl::StrCat(max_growth, " MiB").c_str() : "none");
  std::printf("  stalled watchers %d (events buffered client-side: %d; streams the scheduler "
              "cut off: %d)\n",
              absl::GetFlag(FLAGS_stalled_watchers), stalled_events, stalled_cut_off);
  std::printf("  scheduler exit status %d\n", status);
  bool ok = lost == 0 && dup == 0 && never_ran == 0 && submit_errors == 0 &&
            static_cast<int>(acked_set.size()) == total &&
            by_state[v1::JOB_STATE_SUCCEEDED] + pruned == total && watch_errors == 0 &&
            watch_not_succeeded == 0 && watch_done > 0 && worker_errors == 0 && WIFEXITED(status) &&
            WEXITSTATUS(status) == 0 && (max_growth <= 0 || growth_mb <= max_growth) &&
            (!must_cut || stalled_cut_off == absl::GetFlag(FLAGS_stalled_watchers));
  std::printf("zfarm_load: %s\n", ok ? "PASS" : "FAIL");
  if (own_dir && ok) fs::remove_all(dir);
  return ok ? 0 : 1;
}
