// Parity with diffusers: the CPU float32 pipeline on the tiny model made by
// make_tiny_model against goldens dumped by tests/tools/make_golden.py
// (diffusers ZImagePipeline, CPU float32; commit in each file's metadata).

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"
#include "tests/worker/pipeline/parity_util.h"
#include "tests/worker/pipeline/tiny_pipeline_fixture.h"
#include "worker/io/safetensors.h"
#include "worker/pipeline/pipeline.h"

namespace zfarm::worker {
namespace {

struct Golden {
  std::unique_ptr<SafetensorsFile> file;
  std::vector<float> Get(const std::string& name) const { return testing::GoldenTensor(*file, name); }
  std::string Meta(const std::string& k) const {
    auto it = file->metadata().find(k);
    return it == file->metadata().end() ? "" : it->second;
  }
};

using testing::RelErr;

class GoldenTest : public TinyPipelineFixture<::testing::TestWithParam<std::string>> {};

TEST_P(GoldenTest, MatchesDiffusers) {
  ASSERT_NE(pipeline_, nullptr);
  Golden g;
  ASSERT_OK_AND_ASSIGN(
      g.file, SafetensorsFile::Open(std::string(ZFARM_SOURCE_DIR) + "/tests/testdata/golden/" +
                                    GetParam() + ".safetensors"));
  GenerateRequest r;
  r.prompt = g.Meta("prompt");
  r.negative_prompt = g.Meta("negative_prompt");
  ASSERT_TRUE(absl::SimpleAtoi(g.Meta("width"), &r.width));
  ASSERT_TRUE(absl::SimpleAtoi(g.Meta("height"), &r.height));
  ASSERT_TRUE(absl::SimpleAtoi(g.Meta("steps"), &r.steps));
  ASSERT_TRUE(absl::SimpleAtoi(g.Meta("seed"), &r.seed));
  ASSERT_TRUE(absl::SimpleAtof(g.Meta("guidance"), &r.guidance));
  GenerateTrace trace;
  ASSERT_OK_AND_ASSIGN(Image img, pipeline_->Generate(r, nullptr, nullptr, &trace));

  std::vector<float> ids(trace.ids.begin(), trace.ids.end());
  EXPECT_EQ(ids, g.Get("ids"));
  EXPECT_EQ(trace.noise, g.Get("noise"));  // torch CPU generator, bit-exact
  EXPECT_LT(RelErr(trace.caption, g.Get("caption")), 1e-4);
  std::vector<float> t_emb;
  for (const auto& t : trace.t_emb) t_emb.insert(t_emb.end(), t.begin(), t.end());
  EXPECT_LT(RelErr(t_emb, g.Get("t_emb")), 1e-4);
  EXPECT_LT(RelErr(trace.dit_out0, g.Get("dit_out0")), 1e-4);
  const std::vector<float> lat = g.Get("latents");
  ASSERT_EQ(lat.size(), trace.latents.size() * trace.noise.size());
  for (size_t k = 0; k < trace.latents.size(); ++k) {
    std::vector<float> want(lat.begin() + k * trace.noise.size(),
                            lat.begin() + (k + 1) * trace.noise.size());
    EXPECT_LT(RelErr(trace.latents[k], want), 1e-4) << "step " << k;
  }
  const std::vector<float> u8 = g.Get("image_u8");
  ASSERT_EQ(u8.size(), img.rgb.size());
  int worst = 0;
  for (size_t i = 0; i < u8.size(); ++i) {
    worst = std::max(worst, std::abs(static_cast<int>(img.rgb[i]) - static_cast<int>(u8[i])));
  }
  EXPECT_LE(worst, 2);
  std::printf(
      "%s: caption %.2e t_emb %.2e dit %.2e final latents %.2e image max diff %d\n",
      GetParam().c_str(), RelErr(trace.caption, g.Get("caption")), RelErr(t_emb, g.Get("t_emb")),
      RelErr(trace.dit_out0, g.Get("dit_out0")),
      RelErr(trace.latents.back(), std::vector<float>(lat.end() - trace.noise.size(), lat.end())),
      worst);
}

INSTANTIATE_TEST_SUITE_P(Cases, GoldenTest,
                         ::testing::Values("fox_48x32_s2", "long_80x48_s3", "square_64_s8",
                                           "cfg_32x64_s2"));

}  // namespace
}  // namespace zfarm::worker
