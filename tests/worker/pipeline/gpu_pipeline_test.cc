// CUDA tests (ctest label `gpu`; skipped where no CUDA device is visible):
// bf16 on the GPU against the CPU float32 diffusers goldens (cosine >= 0.999 on
// the final latents, same CPU-generator noise), and out-of-memory -> a clear
// RESOURCE_EXHAUSTED after which the pipeline keeps working.

#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"
#include "tests/worker/model/tiny_folder.h"
#include "tests/worker/pipeline/parity_util.h"
#include "worker/io/safetensors.h"
#include "worker/pipeline/pipeline.h"

namespace zfarm::worker {
namespace {

using ::testing::HasSubstr;
using ::zfarm::testing::StatusIs;

absl::StatusOr<std::unique_ptr<Pipeline>> CudaPipeline(double fraction, bool offload = false) {
  PipelineOptions o;
  o.offload_text_encoder = offload;
  o.model_dir = testing::MakeTinyFolder();
  if (o.model_dir.empty()) return absl::FailedPreconditionError("make_tiny_model failed");
  o.device = "cuda:0";
  o.max_device_memory_fraction = fraction;
  return Pipeline::Create(o);
}

using testing::Cosine;

class GpuPipelineTest : public ::testing::Test {
 protected:
  static void TearDownTestSuite() { testing::RemoveTinyFolder(); }
};

void ExpectGoldens(Pipeline& pipe, const std::vector<const char*>& names) {
  Pipeline* p = &pipe;
  for (const char* name : names) {
    ASSERT_OK_AND_ASSIGN(
        auto f, SafetensorsFile::Open(std::string(ZFARM_SOURCE_DIR) + "/tests/testdata/golden/" +
                                      name + ".safetensors"));
    auto meta = [&](const char* k) { return f->metadata().at(k); };
    GenerateRequest r;
    r.prompt = meta("prompt");
    r.negative_prompt = meta("negative_prompt");
    ASSERT_TRUE(absl::SimpleAtoi(meta("width"), &r.width));
    ASSERT_TRUE(absl::SimpleAtoi(meta("height"), &r.height));
    ASSERT_TRUE(absl::SimpleAtoi(meta("steps"), &r.steps));
    ASSERT_TRUE(absl::SimpleAtoi(meta("seed"), &r.seed));
    ASSERT_TRUE(absl::SimpleAtof(meta("guidance"), &r.guidance));
    r.cpu_noise = true;
    GenerateTrace trace;
    ASSERT_OK(p->Generate(r, nullptr, nullptr, &trace).status());
    const TensorInfo* t = f->Find("latents");
    std::vector<float> lat(t->numel());
    ConvertToF32(f->View(*t), lat.data());
    const size_t n = trace.latents.back().size();
    std::vector<float> want(lat.end() - n, lat.end());
    const double c = Cosine(trace.latents.back(), want);
    std::printf("%s: bf16 cuda final-latent cosine %.6f\n", name, c);
    EXPECT_GE(c, 0.999) << name;
  }
}

TEST_F(GpuPipelineTest, Bf16MatchesGoldensByCosine) {
  auto p = CudaPipeline(0);
  if (!p.ok() && absl::StrContains(p.status().message(), "no CUDA")) GTEST_SKIP() << "no CUDA";
  ASSERT_OK(p.status());
  ExpectGoldens(**p, {"fox_48x32_s2", "long_80x48_s3", "square_64_s8", "cfg_32x64_s2"});
}

TEST_F(GpuPipelineTest, OffloadedTextEncoderRunsOnTheCpuAndMatchesGoldens) {
  auto p = CudaPipeline(0, /*offload=*/true);
  if (!p.ok() && absl::StrContains(p.status().message(), "no CUDA")) GTEST_SKIP() << "no CUDA";
  ASSERT_OK(p.status());
  EXPECT_THAT((*p)->Describe(), HasSubstr("text encoder offloaded"));
  ExpectGoldens(**p, {"fox_48x32_s2", "cfg_32x64_s2"});
}

TEST_F(GpuPipelineTest, OutOfMemoryIsReportedAndRecovers) {
  // Cap the process at ~2 % of the device so that a 4096^2 decode cannot fit.
  auto p = CudaPipeline(0.02);
  if (!p.ok() && absl::StrContains(p.status().message(), "no CUDA")) GTEST_SKIP() << "no CUDA";
  ASSERT_OK(p.status());
  GenerateRequest big;
  big.prompt = "a fox";
  big.width = big.height = 4096;
  big.steps = 1;
  EXPECT_THAT((*p)->Generate(big, nullptr, nullptr),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       ::testing::AllOf(HasSubstr("4096x4096"), HasSubstr("--vae-tiling"))));
  GenerateRequest small = big;
  small.width = small.height = 256;
  EXPECT_OK((*p)->Generate(small, nullptr, nullptr).status());
}

}  // namespace
}  // namespace zfarm::worker
