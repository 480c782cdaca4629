// The FP8 mode through the pipeline on the tiny model, on the CPU: refused at start-up
// without FP8 tensor cores; with the reference path, the render says "fp8" in its result
// and metadata, stays close to float32 and refuses LoRAs.

#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"
#include "tests/worker/model/tiny_folder.h"
#include "tests/worker/pipeline/parity_util.h"
#include "tests/worker/pipeline/tiny_pipeline_fixture.h"
#include "worker/io/image_parameters.h"
#include "worker/io/weights_cache.h"
#include "worker/model/fp8_cache.h"
#include "worker/pipeline/pipeline.h"

namespace zfarm::worker {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;
using ::zfarm::testing::StatusIs;

using ::zfarm::worker::testing::Cosine;

class Fp8PipelineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { dir_ = new std::string(testing::MakeTinyFolder()); }
  static void TearDownTestSuite() {
    delete dir_;
    testing::RemoveTinyFolder();
  }
  PipelineOptions Options(PipelineOptions::Precision p) const {
    PipelineOptions o;
    o.model_dir = *dir_;
    o.precision = p;
    return o;
  }
  static GenerateRequest Request() {
    GenerateRequest r;
    r.prompt = "a lighthouse at dusk";
    r.width = r.height = 64;
    r.steps = 4;
    r.seed = 5;
    return r;
  }
  static inline std::string* dir_ = nullptr;
};

TEST_F(Fp8PipelineTest, CpuIsRefusedAtStartNamingTheFlagAndTheDevice) {
  ASSERT_FALSE(dir_->empty());
  EXPECT_THAT(Pipeline::Create(Options(PipelineOptions::Precision::kFp8)).status(),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       AllOf(HasSubstr("--precision fp8 needs FP8 tensor cores"),
                             HasSubstr("compute capability 8.9"), HasSubstr("cpu is a CPU"))));
}

TEST_F(Fp8PipelineTest, ReferencePathRendersCloseToFloat32AndSaysFp8) {
  ASSERT_FALSE(dir_->empty());
  PipelineOptions o = Options(PipelineOptions::Precision::kFp8);
  o.fp8_reference = true;
  ASSERT_OK_AND_ASSIGN(auto fp8, Pipeline::Create(o));
  EXPECT_EQ(fp8->compute_dtype(), PipelineOptions::Precision::kFp8);
  EXPECT_STREQ(PrecisionName(fp8->compute_dtype()), "fp8");
  EXPECT_THAT(fp8->Describe(), HasSubstr("fp8 e4m3 DiT matmuls (42 layers, float32 reference"));
  ASSERT_OK_AND_ASSIGN(auto fp32, Pipeline::Create(Options(PipelineOptions::Precision::kAuto)));
  ASSERT_OK_AND_ASSIGN(auto bf16,
                       Pipeline::Create(Options(PipelineOptions::Precision::kBFloat16)));

  GenerateTrace t8, t32, t16;
  ASSERT_OK_AND_ASSIGN(Image a, fp8->Generate(Request(), nullptr, nullptr, &t8));
  ASSERT_OK_AND_ASSIGN(Image b, fp32->Generate(Request(), nullptr, nullptr, &t32));
  ASSERT_OK(bf16->Generate(Request(), nullptr, nullptr, &t16).status());
  EXPECT_EQ(a.precision, "fp8");
  EXPECT_EQ(b.precision, "float32");
  ASSERT_FALSE(t8.latents.empty());
  ASSERT_EQ(t8.latents.back().size(), t32.latents.back().size());
  EXPECT_GT(Cosine(t8.latents.back(), t32.latents.back()), 0.99);
  EXPECT_GT(Cosine(t8.latents.back(), t16.latents.back()), 0.99);
  EXPECT_NE(t8.latents.back(), t16.latents.back());  // the FP8 layers ran
  // The same caption as bf16: only the DiT's recipe layers are quantized.
  EXPECT_EQ(t8.caption, t16.caption);

  // The metadata says so (the A1111 text only for fp8, the JSON always).
  const ImageParameters p = ImageParametersOf(Request(), a);
  EXPECT_EQ(p.precision, "fp8");
  EXPECT_THAT(A1111Parameters(p), HasSubstr(", Precision: fp8"));
  EXPECT_THAT(ParametersJson(p), HasSubstr("\"precision\":\"fp8\""));
  const ImageParameters q = ImageParametersOf(Request(), b);
  EXPECT_THAT(A1111Parameters(q), ::testing::Not(HasSubstr("Precision")));
  EXPECT_THAT(ParametersJson(q), HasSubstr("\"precision\":\"float32\""));

  GenerateRequest with_lora = Request();
  with_lora.loras.push_back({"ink", "/nonexistent/ink.safetensors", "", 0.8f});
  EXPECT_THAT(fp8->Generate(with_lora, nullptr, nullptr).status(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("loras: not supported with --precision fp8")));
}

// The FP8 weights cache: a render from it equals the render from the source bit for bit;
// a damaged copy falls back to the source (same picture); bf16 runs never read it.
TEST_F(Fp8PipelineTest, Fp8CacheRendersLikeTheSourceAndFallsBack) {
  ASSERT_FALSE(dir_->empty());
  const std::string cache = *dir_ + "/../fp8-weights-cache";
  std::filesystem::remove_all(cache);
  ASSERT_OK_AND_ASSIGN(std::string cached, model::WriteFp8Cache(cache, *dir_ + "/transformer"));
  ASSERT_OK_AND_ASSIGN(std::string bf16_copy, WriteBf16Cache(cache, *dir_ + "/transformer"));
  // Smaller than the bf16 copy (the tiny DiT is mostly its bf16 timestep embedder).
  EXPECT_LT(std::filesystem::file_size(cached + "/model.safetensors"),
            std::filesystem::file_size(bf16_copy + "/model.safetensors"));
  auto render = [&](PipelineOptions o) -> std::pair<std::string, std::vector<uint8_t>> {
    o.fp8_reference = true;
    auto p = Pipeline::Create(o);
    EXPECT_OK(p.status());
    if (!p.ok()) return {};
    auto img = (*p)->Generate(Request(), nullptr, nullptr);
    EXPECT_OK(img.status());
    return {(*p)->Describe(), img.ok() ? img->rgb : std::vector<uint8_t>()};
  };
  PipelineOptions o = Options(PipelineOptions::Precision::kFp8);
  const auto source = render(o);
  EXPECT_THAT(source.first, Not(HasSubstr("weights cache")));
  o.weights_cache_dir = cache;
  const auto from_cache = render(o);
  EXPECT_THAT(from_cache.first, HasSubstr("DiT from the fp8 weights cache"));
  ASSERT_FALSE(source.second.empty());
  EXPECT_EQ(from_cache.second, source.second);

  // bf16 reads its own copy, never the FP8 one.
  PipelineOptions bf16 = Options(PipelineOptions::Precision::kBFloat16);
  bf16.weights_cache_dir = cache;
  EXPECT_THAT(render(bf16).first, HasSubstr("DiT from the bf16 weights cache"));

  // Damaged copies (cut short; a header of garbage) are not used: the source is.
  std::filesystem::resize_file(cached + "/model.safetensors", 1000);
  auto fallback = render(o);
  EXPECT_THAT(fallback.first, Not(HasSubstr("weights cache")));
  EXPECT_EQ(fallback.second, source.second);
  {
    std::ofstream junk(cached + "/model.safetensors", std::ios::binary | std::ios::trunc);
    junk << std::string(64, '\x7f');
  }
  fallback = render(o);
  EXPECT_THAT(fallback.first, Not(HasSubstr("weights cache")));
  EXPECT_EQ(fallback.second, source.second);
  std::filesystem::remove_all(cache);
}

// With a resident ControlNet (its blocks stay bf16; it reads the FP8 DiT's tokens) an fp8
// render stays close to bf16 and the hints still act.
TEST(Fp8ControlNetTest, ControlNetJobsRenderCloseToBf16) {
  PipelineOptions o;
  o.random_weights = true;
  o.random_weights_seed = 3;
  const ModelConfig c = SmallRandomConfig(/*n_layers=*/2);
  o.config = c;
  ControlNetConfig cc;
  cc.layout = ControlNetConfig::Layout::kUnion21;
  cc.control_layers_places = {0, 1};
  cc.control_refiner_layers_places = {0};
  cc.control_in_dim = 2 * c.transformer.in_channels + 1;
  cc.n_refiner_layers = 1;
  o.random_controlnet = cc;
  o.precision = PipelineOptions::Precision::kBFloat16;
  ASSERT_OK_AND_ASSIGN(auto bf16, Pipeline::Create(o));
  o.precision = PipelineOptions::Precision::kFp8;
  o.fp8_reference = true;
  ASSERT_OK_AND_ASSIGN(auto fp8, Pipeline::Create(o));
  GenerateRequest r;
  r.prompt_ids = {5, 17, 99, 3};
  r.width = r.height = 64;
  r.steps = 3;
  r.seed = 8;
  GenerateTrace plain;
  ASSERT_OK(fp8->Generate(r, nullptr, nullptr, &plain).status());
  ControlRequest control;
  control.image.width = control.image.height = 64;
  control.image.rgb.assign(64 * 64 * 3, 0);
  for (size_t i = 0; i < control.image.rgb.size(); i += 7) control.image.rgb[i] = 255;
  r.control = control;
  GenerateTrace a, b;
  ASSERT_OK(bf16->Generate(r, nullptr, nullptr, &a).status());
  ASSERT_OK(fp8->Generate(r, nullptr, nullptr, &b).status());
  EXPECT_GT(Cosine(a.latents.back(), b.latents.back()), 0.99);
  EXPECT_NE(b.latents.back(), plain.latents.back());  // the hints changed the fp8 render
}

TEST(ParsePrecisionTest, NamesTheFlagForBadValues) {
  ASSERT_OK_AND_ASSIGN(auto p, ParsePrecision("fp8"));
  EXPECT_EQ(p, PipelineOptions::Precision::kFp8);
  ASSERT_OK_AND_ASSIGN(p, ParsePrecision("bf16"));
  EXPECT_EQ(p, PipelineOptions::Precision::kBFloat16);
  ASSERT_OK_AND_ASSIGN(p, ParsePrecision("fp32"));
  EXPECT_EQ(p, PipelineOptions::Precision::kFloat32);
  EXPECT_THAT(ParsePrecision("int8").status(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("--precision 'int8': expected fp8, bf16 or fp32")));
}

}  // namespace
}  // namespace zfarm::worker
