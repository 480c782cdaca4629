// The `zfarm` CLI against an in-process fake scheduler on loopback: every
// subcommand, exit codes, JSON fields, safe re-runs and a restart mid-batch.
#include "client/cli.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "proto/base/files.h"
#include "tests/client/fake_scheduler.h"
#include "tests/testing/standby_scheduler.h"

namespace zfarm::client {
namespace {

using ::testing::HasSubstr;
using ::testing::SizeIs;
using json = nlohmann::json;

struct Result {
  int rc;
  std::string out;
  std::string err;
  std::vector<json> lines() const {
    std::vector<json> v;
    for (absl::string_view l : absl::StrSplit(out, '\n', absl::SkipEmpty())) {
      v.push_back(json::parse(l));
    }
    return v;
  }
};

std::string MakeTempDir() {
  std::string t = ::testing::TempDir() + "/zfarm_cli_XXXXXX";
  return mkdtemp(t.data());
}

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = MakeTempDir();
    work_ = MakeTempDir();
  }

  void StartFake(bool auto_complete = true) {
    fake_ = std::make_unique<testing::FakeScheduler>(root_, auto_complete);
    address_ = fake_->Start();
  }

  Result Run(std::vector<std::string> args) {
    std::ostringstream out, err;
    CliIo io;
    io.out = &out;
    io.err = &err;
    io.getenv = [this](const char* name) -> const char* {
      auto it = env_.find(name);
      return it == env_.end() ? nullptr : it->second.c_str();
    };
    int rc = RunCli(args, io);
    return {rc, out.str(), err.str()};
  }

  // Runs with --scheduler pointing at the fake.
  Result RunAt(std::vector<std::string> args) {
    args.push_back("--scheduler");
    args.push_back(address_);
    return Run(args);
  }

  std::string WritePrompts(const std::string& contents) {
    std::string p = work_ + "/prompts.txt";
    std::ofstream(p) << contents;
    return p;
  }

  std::string root_, work_, address_;
  std::map<std::string, std::string> env_;
  std::unique_ptr<testing::FakeScheduler> fake_;
};

TEST_F(CliTest, UsageErrorsExit2WithTheUsageLine) {
  Result r = Run({"submit", "--bogus"});
  EXPECT_EQ(r.rc, 2);
  EXPECT_THAT(r.err, HasSubstr("unknown flag '--bogus'"));
  EXPECT_THAT(r.err, HasSubstr("usage: zfarm submit"));
  EXPECT_EQ(Run({"submit"}).rc, 2);  // --prompt missing
  EXPECT_EQ(Run({"status"}).rc, 2);  // JOB missing
  EXPECT_EQ(Run({"status", "a", "b"}).rc, 2);
  EXPECT_EQ(Run({"get", "j-1"}).rc, 2);  // --out missing
  EXPECT_EQ(Run({"cancel"}).rc, 2);
  EXPECT_EQ(Run({"cancel", "j-1", "--batch", "b"}).rc, 2);
  EXPECT_EQ(Run({"batch"}).rc, 2);
  EXPECT_EQ(Run({"list", "--state", "sleeping"}).rc, 2);
  EXPECT_EQ(Run({"submit", "--prompt", "x", "--label", "novalue"}).rc, 2);
  EXPECT_EQ(Run({"frobnicate"}).rc, 2);
  EXPECT_EQ(Run({}).rc, 2);
}

TEST_F(CliTest, HelpAndVersion) {
  for (const char* cmd : {"submit", "batch", "watch", "status", "get", "cancel", "list", "workers",
                          "drain", "undrain", "health"}) {
    Result r = Run({cmd, "--help"});
    EXPECT_EQ(r.rc, 0) << cmd;
    EXPECT_THAT(r.out, HasSubstr("examples:")) << cmd;
    EXPECT_THAT(r.out, HasSubstr(std::string("zfarm ") + cmd)) << cmd;
  }
  Result v = Run({"--version"});
  EXPECT_EQ(v.rc, 0);
  EXPECT_THAT(v.out, HasSubstr("zfarm "));
  EXPECT_THAT(Run({"--help"}).out, HasSubstr("exit codes"));
}

TEST_F(CliTest, SchedulerDownExits3WithinTheTimeoutNamingTheAddress) {
  // A port nothing listens on: bind, read the number, close.
  testing::FakeScheduler probe(root_, true);
  std::string addr = probe.Start();
  probe.Stop();
  absl::Time start = absl::Now();
  Result r = Run({"status", "j-1", "--scheduler", addr, "--timeout", "1s"});
  absl::Duration took = absl::Now() - start;
  EXPECT_EQ(r.rc, 3);
  EXPECT_THAT(r.err, HasSubstr(addr));
  EXPECT_LT(took, absl::Seconds(15));  // loose bound: it must not hang
  // ZFARM_SCHEDULER is honoured too.
  env_["ZFARM_SCHEDULER"] = addr;
  Result b = Run({"batch", "--prompts", WritePrompts("a\n"), "--timeout", "1s"});
  EXPECT_EQ(b.rc, 3);
  EXPECT_THAT(b.err, HasSubstr(addr));
  Result h = Run({"health", addr, "--timeout", "1s"});
  EXPECT_EQ(h.rc, 3);
}

TEST_F(CliTest, SubmitPrintsTheJsonContract) {
  StartFake();
  Result r = RunAt({"submit", "--prompt", "a fox", "--seed", "42", "--width", "768", "--height",
                    "512", "--steps", "4", "--json", "--label", "team=web"});
  ASSERT_EQ(r.rc, 0) << r.err;
  auto lines = r.lines();
  ASSERT_THAT(lines, SizeIs(1));
  const json& j = lines[0];
  for (const char* key : {"job", "state", "path", "sha256", "seed", "width", "height", "steps"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  EXPECT_EQ(j["seed"], 42);
  EXPECT_EQ(j["width"], 768);
  EXPECT_EQ(j["height"], 512);
  EXPECT_EQ(j["steps"], 4);
  EXPECT_EQ(j["state"], "succeeded");
  auto jobs = fake_->jobs();
  ASSERT_THAT(jobs, SizeIs(1));
  EXPECT_EQ(jobs[0].spec().labels().at("team"), "web");
  EXPECT_EQ(j["sha256"], jobs[0].result().sha256());
}

TEST_F(CliTest, SubmitIsIdempotentByRequestId) {
  StartFake();
  Result a = RunAt({"submit", "--prompt", "x", "--request-id", "rid-1", "--json"});
  Result b = RunAt({"submit", "--prompt", "x", "--request-id", "rid-1", "--json"});
  ASSERT_EQ(a.rc, 0);
  ASSERT_EQ(b.rc, 0);
  EXPECT_EQ(a.lines()[0]["job"], b.lines()[0]["job"]);
  EXPECT_EQ(fake_->jobs_created(), 1);
  // Derived ids: same prefix + same spec -> same job; BUILD_TAG is the default.
  env_["BUILD_TAG"] = "jenkins-x-1";
  RunAt({"submit", "--prompt", "y"});
  RunAt({"submit", "--prompt", "y"});
  EXPECT_EQ(fake_->jobs_created(), 2);
  EXPECT_THAT(fake_->jobs()[1].request_id(), ::testing::StartsWith("jenkins-x-1-"));
}

TEST_F(CliTest, SubmitWaitExitCodesFollowTheFinalState) {
  StartFake();
  std::string out = work_ + "/one.png";
  Result ok = RunAt({"submit", "--prompt", "fine", "--wait", "--out", out});
  EXPECT_EQ(ok.rc, 0) << ok.err;
  EXPECT_THAT(ok.out, HasSubstr("state=succeeded"));
  EXPECT_EQ(*base::Sha256OfFile(out), fake_->jobs()[0].result().sha256());
  EXPECT_EQ(RunAt({"submit", "--prompt", "please FAIL", "--wait"}).rc, 1);
  EXPECT_EQ(RunAt({"submit", "--prompt", "please CANCEL", "--wait"}).rc, 5);
}

TEST_F(CliTest, CommonFlagsGoBeforeOrAfterTheCommand) {
  StartFake();
  Result r = Run({"--scheduler", address_, "--json", "submit", "--prompt", "before"});
  ASSERT_EQ(r.rc, 0) << r.err;
  ASSERT_THAT(r.lines(), SizeIs(1));
  const std::string id = r.lines()[0]["job"];
  Result s = Run({"--scheduler=" + address_, "--timeout", "10s", "status", id, "--json"});
  ASSERT_EQ(s.rc, 0) << s.err;
  EXPECT_EQ(s.lines()[0]["job"], id);
  // After the command wins over before it.
  Result w = Run({"--scheduler", "127.0.0.1:1", "status", id, "--scheduler", address_});
  EXPECT_EQ(w.rc, 0) << w.err;
  Result bad = Run({"--prompt", "x", "submit"});
  EXPECT_EQ(bad.rc, 2);
  EXPECT_THAT(bad.err, HasSubstr("not a common flag"));
  EXPECT_EQ(Run({"--scheduler"}).rc, 2);
  EXPECT_EQ(Run({"--json"}).rc, 2);  // no command
}

TEST_F(CliTest, DeadlineInThePastExits4AndSubmitsNothing) {
  StartFake();
  Result r = RunAt({"submit", "--prompt", "late", "--deadline", "-1m"});
  EXPECT_EQ(r.rc, 4) << r.err;
  EXPECT_THAT(r.err, HasSubstr("already past"));
  EXPECT_EQ(RunAt({"submit", "--prompt", "late", "--deadline", "2020-01-01T00:00:00Z"}).rc, 4);
  EXPECT_EQ(RunAt({"batch", "--prompts", WritePrompts("a\n"), "--deadline", "0s"}).rc, 4);
  EXPECT_EQ(fake_->submit_calls(), 0);
  EXPECT_EQ(RunAt({"submit", "--prompt", "x", "--deadline", "soon"}).rc, 2);
  const absl::Time before = absl::Now();
  ASSERT_EQ(RunAt({"submit", "--prompt", "in time", "--deadline", "1h"}).rc, 0);
  ASSERT_THAT(fake_->jobs(), SizeIs(1));
  const auto& d = fake_->jobs()[0].spec().deadline();
  const absl::Time got = absl::FromUnixSeconds(d.seconds()) + absl::Nanoseconds(d.nanos());
  EXPECT_GE(got, before + absl::Hours(1));
  EXPECT_LE(got, absl::Now() + absl::Hours(1));
}

TEST_F(CliTest, ProgressInALogIsLinesAndQuietSilencesIt) {
  StartFake(/*auto_complete=*/false);
  std::thread finisher([this] {
    fake_->AwaitJobs(1);
    fake_->CompleteAll();
  });
  Result r = RunAt({"submit", "--prompt", "logged", "--wait"});
  finisher.join();
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_THAT(r.err, HasSubstr("state=succeeded"));
  EXPECT_EQ(r.err.find('\r'), std::string::npos);
  EXPECT_EQ(r.out.find('\r'), std::string::npos);
  fake_.reset();
  StartFake();
  Result b = RunAt({"batch", "--prompts", WritePrompts("a\nb\n"), "--wait"});
  ASSERT_EQ(b.rc, 0) << b.err;
  EXPECT_EQ(b.err.find('\r'), std::string::npos);
  Result q = RunAt({"submit", "--prompt", "silent", "--wait", "--quiet"});
  ASSERT_EQ(q.rc, 0) << q.err;
  EXPECT_EQ(q.err, "");
  EXPECT_THAT(q.out, HasSubstr("state=succeeded"));
  EXPECT_EQ(Run({"--quiet", "--scheduler", address_, "batch", "--prompts", WritePrompts("c\n"),
                 "--wait"})
                .err,
            "");
}

TEST_F(CliTest, SubmitInvalidSpecIsAUsageError) {
  StartFake();
  Result r = RunAt({"submit", "--prompt", "", "--json"});
  EXPECT_EQ(r.rc, 2);  // caught locally: --prompt is required
}

TEST_F(CliTest, WatchAndStatus) {
  StartFake(/*auto_complete=*/false);
  Result s = RunAt({"submit", "--prompt", "slow", "--json"});
  ASSERT_EQ(s.rc, 0);
  std::string id = s.lines()[0]["job"];
  EXPECT_EQ(s.lines()[0]["state"], "queued");
  Result st = RunAt({"status", id, "--json"});
  EXPECT_EQ(st.rc, 0);
  EXPECT_EQ(st.lines()[0]["state"], "queued");
  // watch times out while the job is queued -> 4.
  EXPECT_EQ(RunAt({"watch", id, "--timeout", "300ms"}).rc, 4);
  std::thread t([&] { fake_->CompleteAll(); });
  Result w = RunAt({"watch", id, "--json", "--timeout", "30s"});
  t.join();
  EXPECT_EQ(w.rc, 0) << w.err;
  EXPECT_EQ(w.lines().back()["state"], "succeeded");
  Result missing = RunAt({"status", "j-nope"});
  EXPECT_EQ(missing.rc, 1);
  EXPECT_THAT(missing.err, HasSubstr("not found"));
}

TEST_F(CliTest, GetCopiesFromTheMountOrStreams) {
  StartFake();
  Result s = RunAt({"submit", "--prompt", "x", "--json"});
  std::string id = s.lines()[0]["job"];
  const std::string sha = fake_->jobs()[0].result().sha256();
  // Streamed through GetResult (no output root known).
  Result g1 = RunAt({"get", id, "--out", work_ + "/a.png"});
  ASSERT_EQ(g1.rc, 0) << g1.err;
  EXPECT_EQ(*base::Sha256OfFile(work_ + "/a.png"), sha);
  // From the shared mount via ZFARM_OUTPUT_ROOT.
  env_["ZFARM_OUTPUT_ROOT"] = root_;
  Result g2 = RunAt({"get", id, "--out", work_ + "/b.png", "--json"});
  ASSERT_EQ(g2.rc, 0) << g2.err;
  EXPECT_EQ(*base::Sha256OfFile(work_ + "/b.png"), sha);
  EXPECT_EQ(g2.lines()[0]["local_path"], work_ + "/b.png");
  // A tampered file on the mount is refused (sha256 check).
  std::ofstream(root_ + "/" + fake_->jobs()[0].result().path()) << "tampered";
  Result g3 = RunAt({"get", id, "--out", work_ + "/c.png"});
  EXPECT_NE(g3.rc, 0);
  EXPECT_THAT(g3.err, HasSubstr("sha256"));
}

TEST_F(CliTest, CancelListWorkersDrain) {
  StartFake(/*auto_complete=*/false);
  std::string p = WritePrompts("a\nb\nc\n");
  Result b = RunAt({"batch", "--prompts", p, "--json", "--request-id-prefix", "t"});
  ASSERT_EQ(b.rc, 0) << b.err;
  ASSERT_THAT(b.lines(), SizeIs(3));
  std::string batch = b.lines()[0]["batch"];
  Result one = RunAt({"cancel", b.lines()[0]["job"].get<std::string>()});
  EXPECT_EQ(one.rc, 0);
  Result l = RunAt({"list", "--state", "cancelled", "--json"});
  ASSERT_EQ(l.rc, 0);
  EXPECT_THAT(l.lines(), SizeIs(1));
  Result all = RunAt({"cancel", "--batch", batch, "--json"});
  EXPECT_EQ(all.rc, 0);
  EXPECT_THAT(all.lines(), SizeIs(2));
  EXPECT_THAT(RunAt({"list", "--state", "queued,cancelled", "--json"}).lines(), SizeIs(3));
  EXPECT_THAT(RunAt({"list", "--json", "--limit", "2"}).lines(), SizeIs(2));
  Result w = RunAt({"workers", "--json"});
  ASSERT_EQ(w.rc, 0);
  EXPECT_EQ(w.lines()[0]["worker"], "fake-0");
  EXPECT_EQ(RunAt({"drain", "fake-0"}).rc, 0);
  Result bad = RunAt({"drain", "nope"});
  EXPECT_EQ(bad.rc, 1);
  EXPECT_THAT(bad.err, HasSubstr("nope"));
}

TEST_F(CliTest, HealthServing) {
  StartFake();
  Result h = Run({"health", address_});
  EXPECT_EQ(h.rc, 0) << h.err;
  EXPECT_THAT(h.out, HasSubstr("SERVING"));
}

TEST_F(CliTest, AnAddressListPassesADownSchedulerAndAStandbyToTheActiveOne) {
  StartFake();
  testing::FakeScheduler down(root_, true);
  const std::string dead = down.Start();
  down.Stop();
  testing::StandbyScheduler standby;
  const std::string list = absl::StrCat(dead, ",", standby.address(), ",", address_);
  Result r = Run({"--json", "submit", "--prompt", "fox", "--wait", "--scheduler", list});
  ASSERT_EQ(r.rc, 0) << r.err;
  ASSERT_THAT(r.lines(), SizeIs(1));
  EXPECT_EQ(r.lines()[0]["state"], "succeeded");
  EXPECT_EQ(fake_->jobs_created(), 1);
  EXPECT_GE(standby.refused(), 1);  // tried, refused, passed by
  // health: one line per address, exit 0 because one of them serves.
  Result h = Run({"health", list, "--timeout", "2s"});
  EXPECT_EQ(h.rc, 0) << h.err;
  EXPECT_THAT(h.out, HasSubstr(standby.address() + " NOT_SERVING"));
  EXPECT_THAT(h.out, HasSubstr(address_ + " SERVING"));
  // Only standbys: unavailable (exit 3) within the timeout, naming the list.
  Result s = Run({"status", "j-1", "--scheduler", standby.address(), "--timeout", "1s"});
  EXPECT_EQ(s.rc, 3);
  EXPECT_THAT(s.err, HasSubstr(standby.address()));
  EXPECT_THAT(s.err, HasSubstr("standby"));
  // A malformed list is a usage error naming the flag.
  Result bad = Run({"status", "j-1", "--scheduler", absl::StrCat(address_, ",,", address_)});
  EXPECT_EQ(bad.rc, 2) << bad.err;
  EXPECT_THAT(bad.err, HasSubstr("--scheduler"));
}

TEST_F(CliTest, BadPromptsFileSubmitsNothing) {
  StartFake();
  Result r = RunAt({"batch", "--prompts", WritePrompts("a\nb\n{\"prompt\": 3}\n")});
  EXPECT_EQ(r.rc, 2);
  EXPECT_THAT(r.err, HasSubstr(":3:"));
  EXPECT_THAT(r.err, HasSubstr("nothing was submitted"));
  Result u = RunAt({"batch", "--prompts", work_ + "/missing.txt"});
  EXPECT_EQ(u.rc, 2);
  EXPECT_THAT(u.err, HasSubstr("missing.txt"));
  EXPECT_EQ(fake_->submit_calls(), 0);
}

TEST_F(CliTest, BatchOutDirWritesNumberedPngsAndManifest) {
  StartFake();
  std::string out = work_ + "/renders";
  Result r =
      RunAt({"batch", "--prompts", WritePrompts("a cat\n{\"prompt\": \"a dog\", \"seed\": 5}\n"),
             "--seeds", "1,2", "--wait", "--out-dir", out, "--json", "--request-id-prefix", "b1"});
  ASSERT_EQ(r.rc, 0) << r.err;
  auto lines = r.lines();
  ASSERT_THAT(lines, SizeIs(3));  // 2 seeds for line 1, line 2's own seed
  std::ifstream in(out + "/manifest.json");
  json m = json::parse(in);
  ASSERT_EQ(m["jobs"].size(), 3u);
  EXPECT_EQ(m["jobs"][0]["path"], "0001.png");
  EXPECT_EQ(m["jobs"][0]["seed"], 1);
  EXPECT_EQ(m["jobs"][1]["seed"], 2);
  EXPECT_EQ(m["jobs"][2]["seed"], 5);
  EXPECT_EQ(m["jobs"][2]["prompt"], "a dog");
  for (int i = 0; i < 3; ++i) {
    std::string f = out + "/" + m["jobs"][i]["path"].get<std::string>();
    EXPECT_EQ(*base::Sha256OfFile(f), m["jobs"][i]["sha256"].get<std::string>()) << f;
    EXPECT_EQ(m["jobs"][i]["sha256"], lines[i]["sha256"]);
  }
}

TEST_F(CliTest, BatchWithAFailedJobExits1) {
  StartFake();
  Result r =
      RunAt({"batch", "--prompts", WritePrompts("ok\nFAIL here\nCANCEL\n"), "--wait", "--json"});
  EXPECT_EQ(r.rc, 1);
  Result c = RunAt({"batch", "--prompts", WritePrompts("ok\nCANCEL\n"), "--wait"});
  EXPECT_EQ(c.rc, 5);
}

// The CLI's acceptance test: 200 prompts, the scheduler restarted while the
// CLI waits on its one WatchJobs stream: exactly 200 results; a second run
// with the same build tag submits 0 new jobs.
TEST_F(CliTest, Batch200AcrossRestartThenRerunSubmitsNothing) {
  StartFake(/*auto_complete=*/false);
  std::string prompts;
  for (int i = 1; i <= 200; ++i) prompts += "prompt number " + std::to_string(i) + "\n";
  std::string p = WritePrompts(prompts);
  env_["BUILD_TAG"] = "jenkins-render-7";
  std::string out = work_ + "/renders";
  Result r;
  std::thread cli([&] {
    r = RunAt({"batch", "--prompts", p, "--wait", "--out-dir", out, "--json", "--timeout", "120s"});
  });
  fake_->AwaitJobs(200);
  fake_->Stop();  // cuts the WatchJobs stream
  fake_->Start();
  fake_->CompleteAll();
  cli.join();
  ASSERT_EQ(r.rc, 0) << r.err;
  auto lines = r.lines();
  EXPECT_THAT(lines, SizeIs(200));
  std::set<std::string> ids;
  for (const json& l : lines) {
    ids.insert(l["job"].get<std::string>());
    EXPECT_EQ(l["state"], "succeeded");
  }
  EXPECT_THAT(ids, SizeIs(200));
  std::ifstream in(out + "/manifest.json");
  EXPECT_EQ(json::parse(in)["jobs"].size(), 200u);
  EXPECT_EQ(fake_->jobs_created(), 200);

  Result again = RunAt({"batch", "--prompts", p, "--wait", "--json"});
  ASSERT_EQ(again.rc, 0) << again.err;
  EXPECT_THAT(again.lines(), SizeIs(200));
  EXPECT_EQ(fake_->jobs_created(), 200);  // 0 new jobs
  Result human = RunAt({"batch", "--prompts", p});
  EXPECT_THAT(human.err, HasSubstr("submitted=0 existing=200"));
}

TEST_F(CliTest, UnavailableAtSubmitIsRetriedWithTheSameIds) {
  StartFake();
  fake_->Stop();
  Result r;
  std::thread cli([&] {
    r = RunAt(
        {"submit", "--prompt", "late", "--request-id", "rid-late", "--json", "--timeout", "60s"});
  });
  fake_->Start();
  cli.join();
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(fake_->jobs_created(), 1);
  EXPECT_EQ(fake_->jobs()[0].request_id(), "rid-late");
}

}  // namespace
}  // namespace zfarm::client
