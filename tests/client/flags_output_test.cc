#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include "client/deadline.h"
#include "client/output.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "proto/base/files.h"
#include "tests/testing/status_matchers.h"

namespace zfarm::client {
namespace {

using ::testing::HasSubstr;
using ::zfarm::testing::StatusIs;

zfarm::v1::Job SampleJob() {
  zfarm::v1::Job job;
  job.set_job_id("j-1");
  job.set_request_id("r-1");
  job.set_state(zfarm::v1::JOB_STATE_SUCCEEDED);
  job.mutable_spec()->set_prompt("a \"quoted\" cat");
  job.mutable_spec()->set_seed(42);
  job.mutable_spec()->set_width_px(768);
  job.mutable_spec()->set_height_px(512);
  job.mutable_spec()->set_steps(8);
  job.mutable_result()->set_path("2026-11-28/j-1.png");
  job.mutable_result()->set_sha256("ab");
  return job;
}

TEST(OutputTest, JsonLineHasTheContractFields) {
  auto j = nlohmann::json::parse(JobJsonLine(SampleJob(), "out/0001.png"));
  EXPECT_EQ(j["job"], "j-1");
  EXPECT_EQ(j["state"], "succeeded");
  EXPECT_EQ(j["path"], "2026-11-28/j-1.png");
  EXPECT_EQ(j["sha256"], "ab");
  EXPECT_EQ(j["seed"], 42);
  EXPECT_EQ(j["width"], 768);
  EXPECT_EQ(j["height"], 512);
  EXPECT_EQ(j["steps"], 8);
  EXPECT_EQ(j["prompt"], "a \"quoted\" cat");
  EXPECT_EQ(j["local_path"], "out/0001.png");
  EXPECT_FALSE(j.contains("error"));
  zfarm::v1::Job failed = SampleJob();
  failed.set_state(zfarm::v1::JOB_STATE_FAILED);
  failed.mutable_error()->set_reason(zfarm::v1::FAILURE_REASON_OUT_OF_MEMORY);
  auto f = nlohmann::json::parse(JobJsonLine(failed));
  EXPECT_EQ(f["state"], "failed");
  EXPECT_EQ(f["error"]["reason"], "FAILURE_REASON_OUT_OF_MEMORY");
  // Invalid UTF-8 in a prompt must not break the JSON line.
  failed.mutable_spec()->set_prompt("bad \xff byte");
  EXPECT_TRUE(nlohmann::json::accept(JobJsonLine(failed)));
}

TEST(OutputTest, ProgressBar) {
  EXPECT_EQ(ProgressBar(5, 10, "x", 10), "[#####-----] 5/10 x");
  EXPECT_EQ(ProgressBar(0, 0, "x", 4), "[----] 0/0 x");
  EXPECT_EQ(ProgressBar(12, 10, "x", 4), "[####] 12/10 x");
}

std::string TempDir() {
  std::string t = ::testing::TempDir() + "/zfarm_out_XXXXXX";
  return mkdtemp(t.data());
}

TEST(FlagSetTest, DeadlinesAreDurationsOrTimesAndThePastIsADeadline) {
  const absl::Time now = absl::FromUnixSeconds(1'800'000'000);
  ASSERT_OK_AND_ASSIGN(absl::Time t, ParseDeadlineFlag("90s", now));
  EXPECT_EQ(t, now + absl::Seconds(90));
  ASSERT_OK_AND_ASSIGN(t, ParseDeadlineFlag("1h30m", now));
  EXPECT_EQ(t, now + absl::Minutes(90));
  ASSERT_OK_AND_ASSIGN(t, ParseDeadlineFlag("2030-01-01T00:00:00Z", now));
  EXPECT_EQ(t, absl::FromUnixSeconds(1'893'456'000));
  for (const char* past : {"-5m", "0", "0s", "2020-01-01T00:00:00Z"}) {
    EXPECT_THAT(ParseDeadlineFlag(past, now),
                StatusIs(absl::StatusCode::kDeadlineExceeded, HasSubstr("already past")))
        << past;
  }
  EXPECT_THAT(ParseDeadlineFlag("soon", now),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--deadline")));
}

TEST(OutputTest, ProgressLogIsAtMostEvery10PercentOr5Seconds) {
  ProgressLog log;
  zfarm::v1::Job j;
  j.set_job_id("j-1");
  j.set_state(zfarm::v1::JOB_STATE_RUNNING);
  j.mutable_progress()->set_total_steps(100);
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  auto at = [&](int step, absl::Duration after) {
    j.mutable_progress()->set_step(step);
    return log.Observe(j, t0 + after);
  };
  EXPECT_EQ(at(0, absl::ZeroDuration()), "job=j-1 state=running step=0/100 (0%)");
  EXPECT_EQ(at(5, absl::Seconds(1)), "");
  EXPECT_EQ(at(9, absl::Seconds(2)), "");
  EXPECT_EQ(at(10, absl::Seconds(2)), "job=j-1 state=running step=10/100 (10%)");
  EXPECT_EQ(at(11, absl::Seconds(6)), "");
  EXPECT_EQ(at(12, absl::Seconds(7)), "job=j-1 state=running step=12/100 (12%)");  // 5 s
  EXPECT_EQ(at(12, absl::Seconds(30)), "");  // nothing moved
  // Another job has its own pace.
  zfarm::v1::Job other = j;
  other.set_job_id("j-2");
  EXPECT_NE(log.Observe(other, t0 + absl::Seconds(30)), "");
  // A state change is always a line; a final state has no step.
  j.set_state(zfarm::v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(log.Observe(j, t0 + absl::Seconds(31)), "job=j-1 state=succeeded");
  // A 100-step job reporting every step 0.1 s apart gets 11 lines, not 100.
  ProgressLog fresh;
  int lines = 0;
  zfarm::v1::Job k = j;
  k.set_state(zfarm::v1::JOB_STATE_RUNNING);
  for (int s = 0; s <= 100; ++s) {
    k.mutable_progress()->set_step(s);
    if (!fresh.Observe(k, t0 + absl::Milliseconds(100 * s)).empty()) ++lines;
  }
  EXPECT_EQ(lines, 11);
}

TEST(OutputTest, ManifestIsWrittenAtomically) {
  const std::string dir = TempDir();
  std::vector<ManifestEntry> entries = {{1, SampleJob(), "0001.png", "cafe"}};
  zfarm::v1::Job failed = SampleJob();
  failed.set_state(zfarm::v1::JOB_STATE_FAILED);
  entries.push_back({2, failed, "", ""});
  ASSERT_OK(WriteManifest(dir, entries));
  std::ifstream in(dir + "/manifest.json");
  auto m = nlohmann::json::parse(in);
  ASSERT_EQ(m["jobs"].size(), 2u);
  EXPECT_EQ(m["jobs"][0]["job"], "j-1");
  EXPECT_EQ(m["jobs"][0]["seed"], 42);
  EXPECT_EQ(m["jobs"][0]["path"], "0001.png");
  EXPECT_EQ(m["jobs"][0]["sha256"], "cafe");
  EXPECT_EQ(m["jobs"][0]["prompt"], "a \"quoted\" cat");
  EXPECT_EQ(m["jobs"][0]["parameters"]["width"], 768);
  EXPECT_EQ(m["jobs"][1]["state"], "failed");
  EXPECT_TRUE(m["jobs"][1].contains("error"));
  // No temp file left behind.
  int files = 0;
  for (const char* name : {"manifest.json"}) {
    struct stat st;
    files += stat((dir + "/" + name).c_str(), &st) == 0;
  }
  EXPECT_EQ(files, 1);
  EXPECT_THAT(WriteManifest("/nonexistent/dir", entries),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("/nonexistent/dir")));
}

TEST(Sha256Test, KnownVectorsOfTheSharedFileHelpers) {
  EXPECT_EQ(base::Sha256Hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const std::string dir = TempDir();
  ASSERT_OK(base::WriteFileAtomically(dir + "/f", "abc"));
  ASSERT_OK_AND_ASSIGN(std::string sha, base::Sha256OfFile(dir + "/f"));
  EXPECT_EQ(sha, base::Sha256Hex("abc"));
  ASSERT_OK(base::CopyFileAtomically(dir + "/f", dir + "/g"));
  ASSERT_OK_AND_ASSIGN(base::FileDigest g, base::DigestFile(dir + "/g"));
  EXPECT_EQ(g.sha256, sha);
  EXPECT_EQ(g.size_bytes, 3);
  EXPECT_THAT(base::Sha256OfFile(dir + "/missing"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("missing")));
  EXPECT_THAT(base::CopyFileAtomically(dir + "/missing", dir + "/h"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("missing")));
  // A chosen file may be a symlink; a file in a shared folder may not (DigestFile's default).
  ASSERT_EQ(::symlink((dir + "/f").c_str(), (dir + "/link").c_str()), 0);
  EXPECT_TRUE(base::Sha256OfFile(dir + "/link").ok());
  EXPECT_THAT(base::DigestFile(dir + "/link"),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("link")));
}

}  // namespace
}  // namespace zfarm::client
