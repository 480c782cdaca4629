// A model folder as current libraries write it (tests/testdata/resaved-tiny: the tiny model
// re-saved by diffusers 0.40 / transformers 5 with save_pretrained, see its README) loads,
// and renders diffusers' golden of that folder on the CPU in float32.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"
#include "tests/worker/model/tiny_folder.h"
#include "tests/worker/pipeline/parity_util.h"
#include "worker/io/model_folder.h"
#include "worker/io/safetensors.h"
#include "worker/pipeline/pipeline.h"

namespace zfarm::worker {
namespace {

namespace fs = std::filesystem;

// The fixture's files plus the ones it leaves out (identical in the build's tiny folder).
std::string ResavedFolder() {
  const std::string tiny = testing::MakeTinyFolder();
  if (tiny.empty()) return "";
  const fs::path out = fs::path(tiny).parent_path() / "resaved";
  std::error_code ec;
  fs::copy(fs::path(ZFARM_SOURCE_DIR) / "tests/testdata/resaved-tiny", out,
           fs::copy_options::recursive | fs::copy_options::overwrite_existing, ec);
  if (ec) return "";
  fs::copy_file(fs::path(tiny) / "tokenizer/tokenizer.json", out / "tokenizer/tokenizer.json",
                fs::copy_options::overwrite_existing, ec);
  if (ec) return "";
  fs::copy_file(fs::path(tiny) / "vae/diffusion_pytorch_model.safetensors",
                out / "vae/diffusion_pytorch_model.safetensors", fs::copy_options::overwrite_existing,
                ec);
  if (ec) return "";
  for (const auto& e : fs::directory_iterator(fs::path(tiny) / "text_encoder")) {
    if (e.path().filename() == "config.json") continue;  // the re-saved one stays
    fs::copy_file(e.path(), out / "text_encoder" / e.path().filename(),
                  fs::copy_options::overwrite_existing, ec);
    if (ec) return "";
  }
  return out.string();
}

class ResavedFolderTest : public ::testing::Test {
 protected:
  static void TearDownTestSuite() { testing::RemoveTinyFolder(); }
};

TEST_F(ResavedFolderTest, CurrentLibraryKeysLoad) {
  const std::string dir = ResavedFolder();
  ASSERT_FALSE(dir.empty());
  ASSERT_OK_AND_ASSIGN(ModelConfig c, LoadModelConfig(dir));
  EXPECT_EQ(c.text_encoder.rope_theta, 1e6);  // from rope_parameters.rope_theta
  EXPECT_FALSE(c.scheduler.use_dynamic_shifting);
  EXPECT_EQ(c.scheduler.shift, 3.0);
}

TEST_F(ResavedFolderTest, RendersTheGoldenOfTheResavedFolder) {
  const std::string dir = ResavedFolder();
  ASSERT_FALSE(dir.empty());
  PipelineOptions o;
  o.model_dir = dir;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Pipeline> p, Pipeline::Create(o));
  ASSERT_OK_AND_ASSIGN(auto f, SafetensorsFile::Open(std::string(ZFARM_SOURCE_DIR) +
                                                     "/tests/testdata/golden/resaved_48x32_s2.safetensors"));
  GenerateRequest r;
  ASSERT_TRUE(testing::GoldenRequest(*f, &r));
  GenerateTrace trace;
  ASSERT_OK_AND_ASSIGN(Image img, p->Generate(r, nullptr, nullptr, &trace));
  const std::vector<float> lat = testing::GoldenTensor(*f, "latents");
  const size_t n = trace.noise.size();
  ASSERT_EQ(lat.size(), trace.latents.size() * n);
  EXPECT_LT(testing::RelErr(trace.latents.back(), std::vector<float>(lat.end() - n, lat.end())),
            1e-4);
  const std::vector<float> u8 = testing::GoldenTensor(*f, "image_u8");
  ASSERT_EQ(u8.size(), img.rgb.size());
  int worst = 0;
  for (size_t i = 0; i < u8.size(); ++i) {
    worst = std::max(worst, std::abs(static_cast<int>(img.rgb[i]) - static_cast<int>(u8[i])));
  }
  EXPECT_LE(worst, 1);
  std::printf("resaved_48x32_s2: image max diff %d\n", worst);
}

}  // namespace
}  // namespace zfarm::worker
