// ControlNet on CUDA (ctest label `gpu`; skipped where no CUDA device is visible): bf16 with
// the fused kernels and CUDA graphs, the tiny Union 2.0 and 2.1 ControlNets of
// tests/testdata/controlnet, against the CPU float32 diffusers goldens of
// tests/tools/make_controlnet_golden.py with CPU-generator noise (cosine >= 0.999 on the
// final latents and on the image).

#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "gtest/gtest.h"
#include "proto/base/status_macros.h"
#include "tests/testing/status_matchers.h"
#include "tests/worker/model/tiny_folder.h"
#include "tests/worker/pipeline/parity_util.h"
#include "worker/io/file_util.h"
#include "worker/io/image_decode.h"
#include "worker/io/safetensors.h"
#include "worker/pipeline/pipeline.h"

namespace zfarm::worker {
namespace {

using testing::Cosine;
using testing::GoldenTensor;

const std::string kTestdata = std::string(ZFARM_SOURCE_DIR) + "/tests/testdata/";
const std::string kGoldenDir = kTestdata + "golden/";

absl::StatusOr<InputPicture> Picture(const std::string& file) {
  ZFARM_ASSIGN_OR_RETURN(std::string bytes, ReadSmallFile(kGoldenDir + file, 1 << 20));
  ZFARM_ASSIGN_OR_RETURN(DecodedImage d, DecodeImage(bytes, file));
  return InputPicture{d.width, d.height, std::move(d.rgb), ""};
}

class GpuControlNetTest : public ::testing::Test {
 protected:
  static void TearDownTestSuite() { testing::RemoveTinyFolder(); }
};

TEST_F(GpuControlNetTest, Bf16MatchesControlNetGoldensByCosine) {
  std::map<std::string, std::unique_ptr<Pipeline>> pipelines;
  for (const char* name : {"control20_48x32", "control21_32x48", "control21_inpaint_48x48"}) {
    ASSERT_OK_AND_ASSIGN(auto f, SafetensorsFile::Open(kGoldenDir + name + ".safetensors"));
    auto meta = [&](const char* k) { return testing::GoldenMeta(*f, k); };
    std::unique_ptr<Pipeline>& p = pipelines[meta("layout")];
    if (p == nullptr) {
      PipelineOptions o;
      o.model_dir = testing::MakeTinyFolder();
      ASSERT_FALSE(o.model_dir.empty());
      o.device = "cuda:0";
      o.controlnet = kTestdata + "controlnet/" + meta("layout");
      auto created = Pipeline::Create(o);
      if (!created.ok() && absl::StrContains(created.status().message(), "no CUDA")) {
        GTEST_SKIP() << "no CUDA";
      }
      ASSERT_OK(created.status());
      p = *std::move(created);
    }
    GenerateRequest r;
    ASSERT_TRUE(testing::GoldenRequest(*f, &r));
    ControlRequest c;
    ASSERT_OK_AND_ASSIGN(c.image, Picture(meta("control")));
    ASSERT_TRUE(absl::SimpleAtof(meta("scale"), &c.scale));
    r.control = c;
    if (meta("kind") == "inpaint") {
      ASSERT_OK_AND_ASSIGN(r.init_image, Picture(meta("init")));
      ASSERT_OK_AND_ASSIGN(r.mask_image, Picture(meta("mask")));
    }
    r.cpu_noise = true;
    GenerateTrace trace;
    ASSERT_OK_AND_ASSIGN(Image img, p->Generate(r, nullptr, nullptr, &trace));
    const std::vector<float> lat = GoldenTensor(*f, "latents");
    const size_t n = trace.latents.back().size();
    const double cl = Cosine(trace.latents.back(), std::vector<float>(lat.end() - n, lat.end()));
    // The image around mid-grey (an uncentred cosine of 0..255 values says little).
    std::vector<float> got(img.rgb.begin(), img.rgb.end()), want = GoldenTensor(*f, "image_u8");
    for (float& v : got) v -= 127.5f;
    for (float& v : want) v -= 127.5f;
    const double ci = Cosine(got, want);
    std::printf("%s: bf16 cuda final-latent cosine %.6f, image cosine %.6f\n", name, cl, ci);
    EXPECT_GE(cl, 0.999) << name;
    EXPECT_GE(ci, 0.999) << name;
  }
}

}  // namespace
}  // namespace zfarm::worker
