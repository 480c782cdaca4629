// PipelineRenderer on the tiny model: a caption encoded ahead (Prepare, what the
// worker does between steps of the previous job) gives the very same image.
#include "worker/pipeline/pipeline_renderer.h"

#include <memory>

#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"
#include "worker/pipeline/device_info.h"

namespace zfarm::worker {
namespace {

std::unique_ptr<PipelineRenderer> MakeRenderer() {
  PipelineOptions o;
  o.model_dir = ZFARM_TINY_MODEL_DIR;
  auto p = Pipeline::Create(o);
  EXPECT_OK(p.status());
  return std::make_unique<PipelineRenderer>(*std::move(p), "cpu");
}

TEST(PipelineRendererTest, PreparedCaptionRendersTheSameImage) {
  GenerateRequest r;
  r.prompt = "a lighthouse on a cliff at dusk";
  r.width = r.height = 64;
  r.steps = 2;
  r.seed = 11;
  CancelToken never;
  auto plain = MakeRenderer();
  ASSERT_OK_AND_ASSIGN(Image a, plain->Render(r, nullptr, &never));

  auto prepared = MakeRenderer();
  ASSERT_OK(prepared->Prepare(r));
  ASSERT_OK_AND_ASSIGN(Image b, prepared->Render(r, nullptr, &never));
  EXPECT_EQ(a.rgb, b.rgb);
  EXPECT_EQ(a.prompt_tokens, b.prompt_tokens);
  // A different prompt after it is not served the cached caption.
  GenerateRequest other = r;
  other.prompt = "a red fox in fresh snow";
  ASSERT_OK_AND_ASSIGN(Image c, prepared->Render(other, nullptr, &never));
  ASSERT_OK_AND_ASSIGN(Image d, plain->Render(other, nullptr, &never));
  EXPECT_EQ(c.rgb, d.rgb);
  EXPECT_NE(c.rgb, a.rgb);
}

TEST(PipelineRendererTest, ReportsMemoryAndRejectsBadDevices) {
  auto r = MakeRenderer();
  DeviceMemory m = r->Memory();
  EXPECT_GT(m.total, 0);
  EXPECT_GT(m.in_use, 0);
  EXPECT_GE(m.peak, m.in_use / 2);
  EXPECT_THAT(QueryDevice("gpu0").status(),
              zfarm::testing::StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("cuda:N")));
  ASSERT_OK_AND_ASSIGN(DeviceInfo cpu, QueryDevice("cpu"));
  EXPECT_EQ(cpu.device_class, "cpu");
  EXPECT_FALSE(cpu.torch_version.empty());
}

}  // namespace
}  // namespace zfarm::worker
