// LoRA on CUDA (ctest label `gpu`; skipped where no CUDA device is visible): bf16 with the
// fused kernels and CUDA graphs against the CPU float32 diffusers LoRA goldens (cosine >=
// 0.999 on the final latents, CPU-generator noise), and no-LoRA renders byte-identical
// before and after LoRA jobs on the same captured graphs (weights updated in place).

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"
#include "tests/worker/model/tiny_folder.h"
#include "tests/worker/pipeline/parity_util.h"
#include "worker/io/safetensors.h"
#include "worker/pipeline/pipeline.h"

namespace zfarm::worker {
namespace {

using testing::Cosine;
using testing::GoldenTensor;

class GpuLoraTest : public ::testing::Test {
 protected:
  static void TearDownTestSuite() { testing::RemoveTinyFolder(); }
  static absl::StatusOr<std::unique_ptr<Pipeline>> Cuda() {
    PipelineOptions o;
    o.model_dir = testing::MakeTinyFolder();
    if (o.model_dir.empty()) return absl::FailedPreconditionError("make_tiny_model failed");
    o.device = "cuda:0";
    return Pipeline::Create(o);
  }
  static LoraRequest Lora(const std::string& stem, float scale) {
    return {stem, std::string(ZFARM_SOURCE_DIR) + "/tests/testdata/lora/" + stem + ".safetensors",
            "", scale};
  }
};

TEST_F(GpuLoraTest, Bf16MatchesLoraGoldensByCosine) {
  auto p = Cuda();
  if (!p.ok() && absl::StrContains(p.status().message(), "no CUDA")) GTEST_SKIP() << "no CUDA";
  ASSERT_OK(p.status());
  for (const char* name : {"lora_stack_48x32_s2", "lora_comfy_dot_32x48_s2"}) {
    ASSERT_OK_AND_ASSIGN(
        auto f, SafetensorsFile::Open(std::string(ZFARM_SOURCE_DIR) + "/tests/testdata/golden/" +
                                      name + ".safetensors"));
    auto meta = [&](const char* k) { return f->metadata().at(k); };
    GenerateRequest r;
    r.prompt = meta("prompt");
    ASSERT_TRUE(absl::SimpleAtoi(meta("width"), &r.width));
    ASSERT_TRUE(absl::SimpleAtoi(meta("height"), &r.height));
    ASSERT_TRUE(absl::SimpleAtoi(meta("steps"), &r.steps));
    ASSERT_TRUE(absl::SimpleAtoi(meta("seed"), &r.seed));
    for (absl::string_view item : absl::StrSplit(meta("loras"), ',')) {
      std::vector<std::string> kv = absl::StrSplit(item, ':');
      ASSERT_EQ(kv.size(), 2u);
      float scale = 0;
      ASSERT_TRUE(absl::SimpleAtof(kv[1], &scale));
      r.loras.push_back(Lora(kv[0], scale));
    }
    r.cpu_noise = true;
    GenerateTrace trace;
    ASSERT_OK((*p)->Generate(r, nullptr, nullptr, &trace).status());
    const std::vector<float> lat = GoldenTensor(*f, "latents");
    const size_t n = trace.latents.back().size();
    const double c = Cosine(trace.latents.back(), std::vector<float>(lat.end() - n, lat.end()));
    std::printf("%s: bf16 cuda final-latent cosine %.6f\n", name, c);
    EXPECT_GE(c, 0.999) << name;
  }
}

TEST_F(GpuLoraTest, NoLoraRenderIsByteIdenticalAfterLoraJobsOnCapturedGraphs) {
  auto p = Cuda();
  if (!p.ok() && absl::StrContains(p.status().message(), "no CUDA")) GTEST_SKIP() << "no CUDA";
  ASSERT_OK(p.status());
  GenerateRequest plain;
  plain.prompt = "a red fox";
  plain.width = plain.height = 64;
  plain.steps = 3;
  plain.seed = 9;
  ASSERT_OK_AND_ASSIGN(Image before, (*p)->Generate(plain, nullptr, nullptr));  // captures
  GenerateRequest with = plain;
  with.loras = {Lora("tiny_kohya", 2.0f), Lora("tiny_comfy", -1.0f)};
  ASSERT_OK_AND_ASSIGN(Image a1, (*p)->Generate(with, nullptr, nullptr));
  EXPECT_NE(a1.rgb, before.rgb);  // the graph replays the updated weights
  GenerateRequest other = plain;
  other.loras = {Lora("tiny_dot", 3.0f)};
  ASSERT_OK((*p)->Generate(other, nullptr, nullptr).status());
  ASSERT_OK_AND_ASSIGN(Image a2, (*p)->Generate(with, nullptr, nullptr));
  EXPECT_EQ(a2.rgb, a1.rgb);
  ASSERT_OK_AND_ASSIGN(Image after, (*p)->Generate(plain, nullptr, nullptr));
  EXPECT_EQ(after.rgb, before.rgb);
}

}  // namespace
}  // namespace zfarm::worker
