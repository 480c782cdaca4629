// Image-to-image and inpainting jobs through the real worker (Worker + PipelineRenderer on
// the tiny model) and the in-process scheduler: JobSpec.init_image / mask_image bytes are
// decoded by the worker, the PNG records the strength and the sha256 of both inputs, the
// hello advertises the features; bad pictures and strengths fail that job
// INVALID_REQUEST naming the input while the worker stays serving and renders the next job
// byte-identical to before.
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/base/files.h"
#include "tests/testing/farm_client.h"
#include "tests/testing/scheduler_fixture.h"
#include "tests/testing/status_matchers.h"
#include "tests/worker/runtime/picture_jobs.h"
#include "worker/io/file_util.h"
#include "worker/io/png.h"
#include "worker/pipeline/pipeline_renderer.h"
#include "worker/runtime/worker.h"
#include "zfarm/v1/job_service.grpc.pb.h"

namespace zfarm::worker {
namespace {

namespace v1 = ::zfarm::v1;
using ::testing::HasSubstr;
using ::zfarm::testing::Spec;

using testing::Picture;

v1::JobSpec PictureSpec(const std::string& init, const std::string& mask, float strength) {
  v1::JobSpec s = Spec("a red fox", 256, 2);
  s.set_seed(5);
  if (!init.empty()) s.mutable_init_image()->set_data(init);
  if (!mask.empty()) s.mutable_mask_image()->set_data(mask);
  if (strength != 0) s.set_strength(strength);
  return s;
}

TEST(WorkerImg2ImgTest, PictureJobsRenderAndBadOnesFailInvalidRequestWhileTheWorkerServes) {
  Worker::Options o;
  o.name = "img2img-worker";
  auto farm = testing::StartPictureFarm(PipelineOptions{}, o);
  ASSERT_NE(farm, nullptr);
  EXPECT_THAT(farm->features,
              ::testing::ElementsAre("img2img", "inpaint"));  // no --lora-dir: no "lora"
  auto render = [&](const v1::JobSpec& spec) { return farm->Render(spec); };
  auto pixels = [&](const v1::Job& j) { return farm->Pixels(j); };

  const v1::Job plain = render(PictureSpec("", "", 0));
  ASSERT_EQ(plain.state(), v1::JOB_STATE_SUCCEEDED) << plain.DebugString();
  const std::vector<uint8_t> before = pixels(plain);
  ASSERT_FALSE(before.empty());

  // A 263x270 picture is 256x256 after rounding down to multiples of 16 (Lanczos-resized).
  const std::string init = Picture(263, 270, false), mask = Picture(256, 256, true);
  const v1::Job i2i = render(PictureSpec(init, "", 0.5f));
  ASSERT_EQ(i2i.state(), v1::JOB_STATE_SUCCEEDED) << i2i.DebugString();
  EXPECT_NE(pixels(i2i), before);
  std::string params = farm->Parameters(i2i);
  EXPECT_THAT(params,
              HasSubstr(", Denoising strength: 0.5, Init image sha256: " + base::Sha256Hex(init)));
  EXPECT_THAT(params, HasSubstr("\"init_image_sha256\":\"" + base::Sha256Hex(init) + "\""));
  EXPECT_THAT(params, ::testing::Not(HasSubstr("Mask sha256")));

  const v1::Job inpaint = render(PictureSpec(init, mask, 0));  // strength absent: 0.6
  ASSERT_EQ(inpaint.state(), v1::JOB_STATE_SUCCEEDED) << inpaint.DebugString();
  EXPECT_NE(pixels(inpaint), pixels(i2i));
  params = farm->Parameters(inpaint);
  EXPECT_THAT(params, HasSubstr("Denoising strength: 0.6, Init image sha256: " +
                                base::Sha256Hex(init) + ", Mask sha256: " + base::Sha256Hex(mask)));

  struct Bad {
    std::string what;
    v1::JobSpec spec;
    std::string message;
  };
  // Over gRPC's 4 MiB default message size: the lease must still reach the worker.
  std::vector<uint8_t> noise(1300 * 1300 * 3);
  uint64_t x = 88172645463325252ull;  // xorshift64: incompressible bytes
  for (uint8_t& b : noise) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    b = static_cast<uint8_t>(x >> 24);
  }
  auto big = EncodePng(noise, 1300, 1300, {});
  ASSERT_OK(big.status());
  ASSERT_GT(big->size(), 4u << 20);
  v1::JobSpec path_only = PictureSpec("", "", 0.5f);
  path_only.mutable_init_image()->set_path("in.png");
  const std::vector<Bad> bad = {
      {"garbage", PictureSpec("GIF89a not a picture", "", 0.5f),
       "spec.init_image: not a PNG or JPEG image (starts with 47 49 46 38"},
      {"truncated", PictureSpec(init.substr(0, init.size() / 2), "", 0.5f),
       "spec.init_image: PNG does not decode: the file ends inside the image data (truncated)"},
      {"mask garbage", PictureSpec(init, std::string(100, 'x'), 0.5f),
       "spec.mask_image: not a PNG or JPEG image"},
      {"size", PictureSpec(Picture(300, 300, false), "", 0.5f),
       "init_image: 300x300 is 288x288 after rounding down to multiples of 16, but the request is "
       "256x256"},
      {"strength", PictureSpec(init, "", 1.5f), "strength must be within (0, 1], got 1.5"},
      {"big", PictureSpec(*big, "", 0.5f), "init_image: 1300x1300 is 1296x1296 after rounding"},
      {"mask only", PictureSpec("", mask, 0), "mask_image: inpainting needs an init_image"},
      {"path", path_only, "spec.init_image: the lease carries no picture bytes"},
  };
  // The scheduler refuses at submit what it can check (header, strength, a mask
  // alone: its validation tests); every other case must reach this worker and
  // fail there.
  int reached_worker = 0;
  for (const Bad& b : bad) {
    std::string id;
    grpc::Status s = farm->client->TrySubmit(b.spec, &id);
    if (!s.ok()) {
      EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << b.what;
      continue;
    }
    ++reached_worker;
    const v1::Job j = farm->client->WaitFinal(id, absl::Seconds(30));
    EXPECT_EQ(j.state(), v1::JOB_STATE_FAILED) << b.what << ": " << j.DebugString();
    EXPECT_EQ(j.error().reason(), v1::FAILURE_REASON_INVALID_REQUEST) << b.what;
    EXPECT_THAT(j.error().message(), HasSubstr(b.message)) << b.what;
    EXPECT_TRUE(farm->worker->Serving()) << b.what;
  }
  // The truncated picture at least (the scheduler refuses sizes other than the picture's at
  // submit, so "size" and "big" stop there).
  EXPECT_GE(reached_worker, 1);
  const v1::Job again = render(PictureSpec("", "", 0));
  ASSERT_EQ(again.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(pixels(again), before);
  EXPECT_TRUE(farm->worker->stats().healthy);
  farm->worker->Shutdown();
}

}  // namespace
}  // namespace zfarm::worker
