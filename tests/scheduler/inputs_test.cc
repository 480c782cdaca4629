// Image inputs through the real gRPC JobService: bytes and --input-root paths,
// their limits and confinement, the content-addressed store (<state-dir>/inputs),
// the bytes coming back in the worker's lease, after a restart too, and the sweep.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "scheduler/inputs.h"
#include "scheduler/server.h"
#include "tests/testing/fake_clock.h"
#include "tests/testing/fake_worker.h"
#include "tests/testing/scheduler_fixture.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/test_images.h"
#include "zfarm/v1/job_service.grpc.pb.h"

namespace zfarm::scheduler {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::zfarm::testing::FakeClock;
using ::zfarm::testing::FakeWorker;
using ::zfarm::testing::MakeTestPng;
using ::zfarm::testing::TestScheduler;

std::unique_ptr<grpc::ClientContext> Ctx() {
  auto c = std::make_unique<grpc::ClientContext>();
  c->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  return c;
}

void WriteFile(const std::string& path, const std::string& data) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << data;
}

class InputsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "zfarm-inputs-XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    fs::create_directories(dir_ + "/root/sub");
    fs::create_directories(dir_ + "/outside");
  }
  void TearDown() override {
    farm_.reset();
    fs::remove_all(dir_);
  }
  void Start(ServerOptions o = {}, Clock* clock = Clock::Real()) {
    o.scheduler.state_dir = dir_ + "/state";
    o.scheduler.output_root = dir_ + "/out";
    if (o.input_root.empty()) o.input_root = dir_ + "/root";
    auto f = TestScheduler::Start(o, clock);
    ASSERT_OK(f.status());
    farm_ = *std::move(f);
    // A client channel that can send big requests (gRPC clients have no send limit)
    // and a worker channel that can receive a lease with two pictures.
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(64 << 20);
    big_channel_ =
        grpc::CreateCustomChannel(farm_->address(), grpc::InsecureChannelCredentials(), args);
    jobs_ = v1::JobService::NewStub(big_channel_);
  }
  grpc::Status Submit(const v1::JobSpec& spec, v1::SubmitJobResponse* resp,
                      const std::string& rid = "") {
    v1::SubmitJobRequest r;
    r.set_request_id(rid);
    *r.mutable_spec() = spec;
    return jobs_->SubmitJob(Ctx().get(), r, resp);
  }
  static v1::JobSpec Img2Img(const std::string& png) {
    v1::JobSpec s;
    s.set_prompt("a fox");
    s.mutable_init_image()->set_data(png);
    return s;
  }
  std::string Stored(const std::string& sha) { return dir_ + "/state/inputs/" + sha; }

  std::string dir_;
  std::unique_ptr<TestScheduler> farm_;
  std::shared_ptr<grpc::Channel> big_channel_;
  std::unique_ptr<v1::JobService::Stub> jobs_;
};

TEST_F(InputsTest, BytesAreStoredByHashAndComeBackInTheLease) {
  Start();
  const std::string png = MakeTestPng(640, 480);
  const std::string mask = MakeTestPng(320, 240, 0, /*mask=*/true);  // other size: allowed
  v1::JobSpec spec = Img2Img(png);
  spec.mutable_mask_image()->set_data(mask);
  spec.add_loras()->set_name("ink");
  v1::SubmitJobResponse resp;
  grpc::Status s = Submit(spec, &resp, "r1");
  ASSERT_TRUE(s.ok()) << s.error_message();
  const v1::JobSpec& got = resp.job().spec();
  // The journaled spec holds references, not bytes; the size comes from the image.
  ASSERT_EQ(got.init_image().source_case(), v1::ImageInput::kSha256);
  ASSERT_EQ(got.mask_image().source_case(), v1::ImageInput::kSha256);
  EXPECT_EQ(got.width_px(), 640);
  EXPECT_EQ(got.height_px(), 480);
  EXPECT_FLOAT_EQ(got.strength(), 0.6f);
  ASSERT_TRUE(fs::exists(Stored(got.init_image().sha256())));
  EXPECT_EQ(fs::file_size(Stored(got.init_image().sha256())), png.size());
  EXPECT_EQ(fs::file_size(Stored(got.mask_image().sha256())), mask.size());
  // The journal itself does not contain the picture.
  {
    std::string journal;
    for (const auto& e : fs::recursive_directory_iterator(dir_ + "/state")) {
      if (e.path().string().find("/inputs") != std::string::npos || !e.is_regular_file()) continue;
      std::ifstream f(e.path(), std::ios::binary);
      journal.append(std::istreambuf_iterator<char>(f), {});
    }
    EXPECT_EQ(journal.find(png.substr(40, 64)), std::string::npos);
  }
  // Same request id, same bytes: the same job (the fingerprint uses the hash).
  v1::SubmitJobResponse again;
  ASSERT_TRUE(Submit(spec, &again, "r1").ok());
  EXPECT_EQ(again.job().job_id(), resp.job().job_id());

  FakeWorker::Options wo;
  wo.name = "w1";
  wo.features = {"img2img", "inpaint", "lora"};
  v1::LoraInfo ink;
  ink.set_name("ink");
  ink.set_sha256(std::string(64, 'a'));
  wo.loras = {ink};
  auto w = FakeWorker::Connect(big_channel_, wo);
  ASSERT_OK(w.status());
  ASSERT_OK_AND_ASSIGN(v1::Lease lease, (*w)->NextLease(absl::Seconds(10)));
  EXPECT_EQ(lease.lease().job_id(), resp.job().job_id());
  ASSERT_EQ(lease.spec().init_image().source_case(), v1::ImageInput::kData);
  EXPECT_EQ(lease.spec().init_image().data(), png);
  EXPECT_EQ(lease.spec().mask_image().data(), mask);
}

TEST_F(InputsTest, LimitsAndFormatsAreCheckedAtSubmit) {
  Start();
  v1::SubmitJobResponse resp;
  // Exactly --max-input-bytes (16 MiB) fits through gRPC and is accepted...
  const std::string max = MakeTestPng(512, 512, 16 << 20);
  ASSERT_EQ(max.size(), 16u << 20);
  v1::JobSpec ok = Img2Img(max);
  ok.set_width_px(512);  // the picture's own size may be given
  ok.set_height_px(512);
  ok.mutable_mask_image()->set_data(MakeTestPng(64, 64, (16 << 20) - 7));
  grpc::Status s = Submit(ok, &resp);
  EXPECT_TRUE(s.ok()) << s.error_message();
  // ...one byte more is INVALID_ARGUMENT naming the field and the flag.
  s = Submit(Img2Img(MakeTestPng(64, 64, (16 << 20) + 1)), &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(),
              HasSubstr("spec.init_image.data: 16.0 MiB is over --max-input-bytes (16 MiB)"));
  // Not a picture, a truncated header, a JPEG header without a frame.
  s = Submit(Img2Img("GIF89a........"), &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("spec.init_image.data: not a PNG or JPEG image"));
  s = Submit(Img2Img(MakeTestPng(64, 64).substr(0, 20)), &resp);
  EXPECT_THAT(s.error_message(), HasSubstr("spec.init_image.data: PNG is truncated"));
  s = Submit(Img2Img(std::string("\xff\xd8\xff\xd9", 4)), &resp);
  EXPECT_THAT(s.error_message(), HasSubstr("spec.init_image.data: JPEG"));
  // A side over --max-size-px (2048), for the mask too.
  s = Submit(Img2Img(MakeTestPng(2064, 16)), &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("over the maximum side of 2048"));
  v1::JobSpec big_mask = Img2Img(MakeTestPng(512, 512));
  big_mask.mutable_mask_image()->set_data(MakeTestPng(16, 2049, 0, true));
  s = Submit(big_mask, &resp);
  EXPECT_THAT(s.error_message(), HasSubstr("spec.mask_image.data: PNG image is 16x2049"));
  // A derived size under the minimum says where it came from.
  s = Submit(Img2Img(MakeTestPng(200, 600)), &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("a 200x600 image gives width_px 192"));
  // Another size than the picture's (rounded down to 16) is refused, as diffusers'
  // image-to-image pipeline refuses it, before the job could fail on a worker.
  v1::JobSpec other_size = Img2Img(MakeTestPng(300, 260));
  other_size.set_width_px(288);
  other_size.set_height_px(512);
  s = Submit(other_size, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(),
              HasSubstr("spec.height_px: 512 differs from the init image's height_px 256 (its "
                        "300x260 rounded down to multiples of 16)"));
  // sha256 is the scheduler's.
  v1::JobSpec forged;
  forged.set_prompt("a fox");
  forged.mutable_init_image()->set_sha256(std::string(64, 'a'));
  s = Submit(forged, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("spec.init_image.sha256: is set by the scheduler"));
  // The pure checks come first: nothing is stored for a spec refused anyway.
  v1::JobSpec no_prompt = Img2Img(MakeTestPng(300, 300));
  no_prompt.clear_prompt();
  s = Submit(no_prompt, &resp);
  EXPECT_THAT(s.error_message(), HasSubstr("spec.prompt"));
  // Stored: the two pictures of the accepted job, nothing else.
  int files = 0;
  for (const auto& e : fs::directory_iterator(dir_ + "/state/inputs")) files += e.is_regular_file();
  EXPECT_EQ(files, 2);
}

TEST_F(InputsTest, BatchesNameTheJob) {
  Start();
  v1::SubmitJobsRequest r;
  auto* a = r.add_jobs();
  a->mutable_spec()->set_prompt("plain");
  auto* b = r.add_jobs();
  *b->mutable_spec() = Img2Img("not a picture");
  v1::SubmitJobsResponse resp;
  grpc::Status s = jobs_->SubmitJobs(Ctx().get(), r, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("jobs[1].spec.init_image.data: not a PNG or JPEG"));
  *b->mutable_spec() = Img2Img(MakeTestPng(256, 256));
  s = jobs_->SubmitJobs(Ctx().get(), r, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(resp.jobs(1).job().spec().init_image().source_case(), v1::ImageInput::kSha256);
}

TEST_F(InputsTest, PathsAreConfinedToTheInputRoot) {
  const std::string png = MakeTestPng(512, 512);
  WriteFile(dir_ + "/root/sub/in.png", png);
  WriteFile(dir_ + "/outside/secret.png", MakeTestPng(256, 256));
  fs::create_symlink(dir_ + "/outside/secret.png", dir_ + "/root/escape.png");
  fs::create_symlink(dir_ + "/outside", dir_ + "/root/outdir");
  fs::create_symlink("sub/in.png", dir_ + "/root/inside.png");  // stays inside: fine
  WriteFile(dir_ + "/root/huge.png", MakeTestPng(64, 64, (16 << 20) + 100));
  WriteFile(dir_ + "/root/text.png", "hello");
  Start();
  auto by_path = [](const std::string& p) {
    v1::JobSpec s;
    s.set_prompt("a fox");
    s.mutable_init_image()->set_path(p);
    return s;
  };
  v1::SubmitJobResponse resp;
  grpc::Status s = Submit(by_path("sub/in.png"), &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  const std::string sha = resp.job().spec().init_image().sha256();
  ASSERT_EQ(sha.size(), 64u);
  EXPECT_EQ(fs::file_size(Stored(sha)), png.size());
  ASSERT_TRUE(Submit(by_path("inside.png"), &resp).ok());
  EXPECT_EQ(resp.job().spec().init_image().sha256(), sha);  // same bytes, same reference

  struct Case {
    std::string path, want;
  };
  for (const Case& c : std::vector<Case>{
           {"../outside/secret.png", "without '..'"},
           {"sub/../../outside/secret.png", "without '..'"},
           {dir_ + "/outside/secret.png", "must be relative to --input-root"},
           {"escape.png", "resolves outside --input-root"},
           {"outdir/secret.png", "resolves outside --input-root"},
           {"missing.png", "does not exist under --input-root"},
           {"sub", "is not a regular file"},
           {"huge.png", "16.0 MiB is over --max-input-bytes (16 MiB)"},
           {"text.png", "not a PNG or JPEG image"},
       }) {
    s = Submit(by_path(c.path), &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.path;
    EXPECT_THAT(s.error_message(), HasSubstr("spec.init_image.path: ")) << c.path;
    EXPECT_THAT(s.error_message(), HasSubstr(c.want)) << c.path;
  }
}

TEST_F(InputsTest, PathsNeedAnInputRoot) {
  ServerOptions o;
  o.input_root = "";
  // Start() fills a root in when empty; build this one by hand.
  o.scheduler.state_dir = dir_ + "/state";
  o.scheduler.output_root = dir_ + "/out";
  ASSERT_OK_AND_ASSIGN(farm_, TestScheduler::Start(o));
  jobs_ = v1::JobService::NewStub(farm_->channel());
  v1::JobSpec s;
  s.set_prompt("a fox");
  s.mutable_init_image()->set_path("in.png");
  v1::SubmitJobResponse resp;
  grpc::Status st = Submit(s, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("spec.init_image.path: this scheduler has no "
                                            "--input-root"));
}

TEST_F(InputsTest, RecoveredJobsStillGetTheirInputs) {
  const std::string png = MakeTestPng(512, 384);
  std::string job_id;
  {
    Start();
    v1::SubmitJobResponse resp;
    ASSERT_TRUE(Submit(Img2Img(png), &resp).ok());
    job_id = resp.job().job_id();
    farm_.reset();  // scheduler stopped; nothing rendered the job
  }
  Start();  // same state dir: the journal and the input store are recovered
  FakeWorker::Options wo;
  wo.name = "w1";
  wo.features = {"img2img"};
  auto w = FakeWorker::Connect(big_channel_, wo);
  ASSERT_OK(w.status());
  ASSERT_OK_AND_ASSIGN(v1::Lease lease, (*w)->NextLease(absl::Seconds(10)));
  EXPECT_EQ(lease.lease().job_id(), job_id);
  EXPECT_EQ(lease.spec().init_image().data(), png);
  EXPECT_EQ(lease.spec().width_px(), 512);
  EXPECT_EQ(lease.spec().height_px(), 384);
}

TEST_F(InputsTest, SweepRemovesWhatNoJobReferences) {
  FakeClock clock;
  ServerOptions o;
  o.tick_interval = absl::InfiniteDuration();
  o.input_sweep_interval = absl::InfiniteDuration();
  o.input_sweep_min_age = absl::ZeroDuration();
  o.scheduler.max_finished_jobs = 1;  // the older of two finished jobs is pruned
  Start(o, &clock);
  farm_->scheduler()->Tick();
  v1::SubmitJobResponse a, b;
  ASSERT_TRUE(Submit(Img2Img(MakeTestPng(256, 256)), &a).ok());
  clock.Advance(absl::Seconds(1));
  ASSERT_TRUE(Submit(Img2Img(MakeTestPng(272, 272)), &b).ok());
  const std::string sa = a.job().spec().init_image().sha256();
  const std::string sb = b.job().spec().init_image().sha256();
  WriteFile(Stored(std::string(64, 'f')), "orphan");  // e.g. a submit refused after storing
  ASSERT_OK_AND_ASSIGN(int removed, farm_->server()->SweepInputs());
  EXPECT_EQ(removed, 1);
  EXPECT_TRUE(fs::exists(Stored(sa)));
  EXPECT_TRUE(fs::exists(Stored(sb)));
  for (const std::string& id : {a.job().job_id(), b.job().job_id()}) {
    v1::CancelJobRequest c;
    c.set_job_id(id);
    v1::CancelJobResponse cr;
    ASSERT_TRUE(jobs_->CancelJob(Ctx().get(), c, &cr).ok());
    clock.Advance(absl::Seconds(1));
  }
  clock.Advance(absl::Seconds(11));
  farm_->scheduler()->Tick();  // prunes the older finished job (a)
  ASSERT_OK_AND_ASSIGN(removed, farm_->server()->SweepInputs());
  EXPECT_EQ(removed, 1);
  EXPECT_FALSE(fs::exists(Stored(sa)));
  EXPECT_TRUE(fs::exists(Stored(sb)));  // b is still held (finished, within the cap)
}

TEST_F(InputsTest, SweepKeepsRecentlySubmittedFiles) {
  ServerOptions o;
  o.input_sweep_interval = absl::InfiniteDuration();
  o.input_sweep_min_age = absl::Hours(1);
  Start(o);
  WriteFile(Stored(std::string(64, 'e')), "not yet journaled");
  ASSERT_OK_AND_ASSIGN(int removed, farm_->server()->SweepInputs());
  EXPECT_EQ(removed, 0);
  EXPECT_TRUE(fs::exists(Stored(std::string(64, 'e'))));
}

TEST(MaxMessageBytesTest, FitsThreePicturesAndASpec) {
  EXPECT_EQ(MaxMessageBytesFor(16 << 20), (49 << 20));
  EXPECT_EQ(MaxMessageBytesFor(int64_t{1} << 40), INT32_MAX);
}

}  // namespace
}  // namespace zfarm::scheduler
