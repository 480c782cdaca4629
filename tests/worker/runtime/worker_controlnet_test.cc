// ControlNet jobs through the real worker (Worker + PipelineRenderer on the tiny model with
// the tiny Union 2.1 ControlNet of tests/testdata/controlnet) and the in-process scheduler:
// the hello advertises "controlnet", JobSpec.control's picture is decoded by the worker, the
// PNG records the ControlNet, the control picture's sha256 and the scale; a control picture
// that does not decode fails that job INVALID_REQUEST naming spec.control.image while the
// worker stays serving and renders the next job byte-identical to before.
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

const std::string kControlNet = std::string(ZFARM_SOURCE_DIR) + "/tests/testdata/controlnet/2.1";

using testing::Picture;

v1::JobSpec ControlSpec(const std::string& control, float scale) {
  v1::JobSpec s = Spec("a red fox", 256, 2);
  s.set_seed(5);
  if (!control.empty()) {
    s.mutable_control()->mutable_image()->set_data(control);
    if (scale >= 0) s.mutable_control()->set_conditioning_scale(scale);
  }
  return s;
}

TEST(WorkerControlNetTest, ControlJobsRenderAndBadPicturesFailInvalidRequestWhileTheWorkerServes) {
  PipelineOptions po;
  po.controlnet = kControlNet;
  Worker::Options o;
  o.name = "controlnet-worker";
  o.controlnet = "2.1";  // ControlNetName(kControlNet), as serve sets it
  auto farm = testing::StartPictureFarm(po, o);
  ASSERT_NE(farm, nullptr);
  EXPECT_THAT(farm->features, ::testing::ElementsAre("img2img", "inpaint", "controlnet"));
  auto render = [&](const v1::JobSpec& spec) { return farm->Render(spec); };
  auto pixels = [&](const v1::Job& j) { return farm->Pixels(j); };

  const v1::Job plain = render(ControlSpec("", 0));
  ASSERT_EQ(plain.state(), v1::JOB_STATE_SUCCEEDED) << plain.DebugString();
  const std::vector<uint8_t> before = pixels(plain);
  ASSERT_FALSE(before.empty());

  // A control picture of another size (resized to the job's 256x256 by the worker).
  const std::string control = Picture(200, 180, true);
  const v1::Job ctl = render(ControlSpec(control, 0.8f));
  ASSERT_EQ(ctl.state(), v1::JOB_STATE_SUCCEEDED) << ctl.DebugString();
  EXPECT_NE(pixels(ctl), before);
  std::string params = farm->Parameters(ctl);
  EXPECT_THAT(params, HasSubstr(", ControlNet: 2.1, Control image sha256: " +
                                base::Sha256Hex(control) + ", Control weight: 0.8"));
  EXPECT_THAT(params, HasSubstr("\"control\":{\"controlnet\":\"2.1\""));
  // Absent scale: diffusers' 0.75.
  const v1::Job def = render(ControlSpec(control, -1));
  ASSERT_EQ(def.state(), v1::JOB_STATE_SUCCEEDED) << def.DebugString();
  EXPECT_THAT(farm->Parameters(def), HasSubstr("Control weight: 0.75"));

  // Truncated: the header passes the scheduler's probe, the worker's decode fails.
  std::string id;
  ASSERT_TRUE(
      farm->client->TrySubmit(ControlSpec(control.substr(0, control.size() / 2), 0.8f), &id).ok());
  const v1::Job bad = farm->client->WaitFinal(id, absl::Seconds(30));
  EXPECT_EQ(bad.state(), v1::JOB_STATE_FAILED) << bad.DebugString();
  EXPECT_EQ(bad.error().reason(), v1::FAILURE_REASON_INVALID_REQUEST);
  EXPECT_THAT(bad.error().message(), HasSubstr("spec.control.image: PNG does not decode"));
  EXPECT_TRUE(farm->worker->Serving());

  const v1::Job again = render(ControlSpec("", 0));
  ASSERT_EQ(again.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(pixels(again), before);
  EXPECT_TRUE(farm->worker->stats().healthy);
  farm->worker->Shutdown();
}

}  // namespace
}  // namespace zfarm::worker
