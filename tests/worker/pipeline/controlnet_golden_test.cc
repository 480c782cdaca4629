// ControlNet parity with diffusers: the CPU float32 pipeline on the tiny model with the tiny
// Union 2.0 and 2.1 ControlNets of tests/testdata/controlnet (random weights made by
// tests/tools/make_controlnet_golden.py), each as its diffusers folder and as a single
// .safetensors file (layout read from the keys), against the goldens of
// ZImageControlNetPipeline / ZImageControlNetInpaintPipeline. Plus strict loading (a
// ControlNet for another model, wrong-shaped, missing and unexpected keys) and the request
// checks.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/status_matchers.h"
#include "tests/worker/model/tiny_folder.h"
#include "tests/worker/pipeline/parity_util.h"
#include "worker/io/file_util.h"
#include "worker/io/image_decode.h"
#include "worker/io/model_folder.h"
#include "worker/io/safetensors.h"
#include "worker/pipeline/pipeline.h"

namespace zfarm::worker {
namespace {

namespace fs = std::filesystem;
using testing::RelErr;
using testing::WorstLevel;
constexpr auto Picture = testing::GoldenPicture;

const std::string kTestdata = std::string(ZFARM_SOURCE_DIR) + "/tests/testdata/";
const std::string kGoldenDir = kTestdata + "golden/";
const std::string kWeights = "/diffusion_pytorch_model.safetensors";

std::string Folder(const std::string& layout) { return kTestdata + "controlnet/" + layout; }



// A scratch folder for this test binary, removed at exit by the suites' teardown.
std::string Scratch() {
  static std::string dir = [] {
    char tmpl[] = "/tmp/zfarm-controlnet-XXXXXX";
    return mkdtemp(tmpl) == nullptr ? std::string() : std::string(tmpl);
  }();
  return dir;
}

// Writes `src`'s tensors to `dst` as one file: `drop` left out, `replace` swapped in by name
// (any shape), `extra` added; each replaced or extra tensor is F32 filled with `fill`.
absl::Status Rewrite(const std::string& src, const std::string& dst,
                     const std::vector<std::string>& drop,
                     const std::map<std::string, std::vector<int64_t>>& replace,
                     const std::map<std::string, std::vector<int64_t>>& extra, float fill) {
  auto in = SafetensorsFile::Open(src);
  if (!in.ok()) return in.status();
  std::vector<TensorSpec> specs;
  std::vector<std::string> bytes;
  auto filled = [&](const std::vector<int64_t>& shape) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<float> v(static_cast<size_t>(n), fill);
    return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
  };
  for (const TensorInfo& t : (*in)->tensors()) {
    if (std::find(drop.begin(), drop.end(), t.name) != drop.end()) continue;
    if (auto r = replace.find(t.name); r != replace.end()) {
      specs.push_back({t.name, DType::kF32, r->second});
      bytes.push_back(filled(r->second));
      continue;
    }
    const TensorView v = (*in)->View(t);
    specs.push_back({t.name, t.dtype, t.shape});
    bytes.emplace_back(reinterpret_cast<const char*>(v.data), v.size);
  }
  for (const auto& [name, shape] : extra) {
    specs.push_back({name, DType::kF32, shape});
    bytes.push_back(filled(shape));
  }
  auto w = SafetensorsStreamWriter::Create(dst, specs, {});
  if (!w.ok()) return w.status();
  for (const std::string& b : bytes) {
    if (absl::Status s = (*w)->Append(b); !s.ok()) return s;
  }
  return (*w)->Finish();
}

// The single-file form of a layout's folder, as the published files are: the folder's
// tensors, and for 2.0 the unused control_noise_refiner blocks with zero projections
// (diffusers' single-file loader drops them).
std::string SingleFile(const std::string& layout) {
  const std::string path = Scratch() + "/Z-Image-Turbo-Fun-Controlnet-Union-" + layout +
                           ".safetensors";
  if (fs::exists(path)) return path;
  std::map<std::string, std::vector<int64_t>> extra;
  if (layout == "2.0") {
    for (const char* k : {"before_proj.weight", "after_proj.weight"}) {
      extra[absl::StrCat("control_noise_refiner.0.", k)] = {64, 64};
    }
    extra["control_noise_refiner.0.after_proj.bias"] = {64};
  }
  absl::Status s = Rewrite(Folder(layout) + kWeights, path, {}, {}, extra, 0.0f);
  EXPECT_TRUE(s.ok()) << s;
  return path;
}

// One CPU pipeline per ControlNet path for the whole binary.
Pipeline* PipelineFor(const std::string& controlnet) {
  static std::map<std::string, std::unique_ptr<Pipeline>> pipelines;
  auto it = pipelines.find(controlnet);
  if (it != pipelines.end()) return it->second.get();
  PipelineOptions o;
  o.model_dir = testing::MakeTinyFolder();
  o.controlnet = controlnet;
  auto p = Pipeline::Create(o);
  EXPECT_TRUE(p.ok()) << p.status();
  if (!p.ok()) return nullptr;
  return (pipelines[controlnet] = *std::move(p)).get();
}

// The tiny folder and the scratch files are shared by every suite: removed once at the end.
class Cleanup : public ::testing::Environment {
 public:
  void TearDown() override {
    testing::RemoveTinyFolder();
    if (!Scratch().empty()) fs::remove_all(Scratch());
  }
};
[[maybe_unused]] ::testing::Environment* const kCleanup =
    ::testing::AddGlobalTestEnvironment(new Cleanup);

// (golden case, "folder" | "file")
class ControlNetGoldenTest
    : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

TEST_P(ControlNetGoldenTest, MatchesDiffusers) {
  const auto& [name, form] = GetParam();
  ASSERT_OK_AND_ASSIGN(auto f, SafetensorsFile::Open(kGoldenDir + name + ".safetensors"));
  auto meta = [&](const char* k) { return testing::GoldenMeta(*f, k); };
  auto golden = [&](const char* k) { return testing::GoldenTensor(*f, k); };
  const std::string layout = meta("layout");
  Pipeline* p = PipelineFor(form == "folder" ? Folder(layout) : SingleFile(layout));
  ASSERT_NE(p, nullptr);
  ASSERT_NE(p->controlnet(), nullptr);
  EXPECT_EQ(ControlNetLayoutName(p->controlnet()->layout), layout);

  GenerateRequest r;
  ASSERT_TRUE(testing::GoldenRequest(*f, &r));
  ControlRequest c;
  c.image = Picture(meta("control"));
  ASSERT_TRUE(absl::SimpleAtof(meta("scale"), &c.scale));
  r.control = c;
  if (meta("kind") == "inpaint") {
    r.init_image = Picture(meta("init"));
    r.mask_image = Picture(meta("mask"));
  }
  GenerateTrace trace;
  ASSERT_OK_AND_ASSIGN(Image img, p->Generate(r, nullptr, nullptr, &trace));
  const double ctx = RelErr(trace.control_context, golden("control_context"));
  const double hint = RelErr(trace.control_hint0, golden("hint0"));
  EXPECT_LT(ctx, 1e-4);
  EXPECT_LT(hint, 1e-4);
  EXPECT_EQ(trace.noise, golden("noise"));
  const std::vector<float> lat = golden("latents");
  const size_t n = trace.noise.size();
  ASSERT_EQ(lat.size(), trace.latents.size() * n);
  for (size_t k = 0; k < trace.latents.size(); ++k) {
    const std::vector<float> want(lat.begin() + k * n, lat.begin() + (k + 1) * n);
    EXPECT_LT(RelErr(trace.latents[k], want), 1e-4) << "step " << k;
  }
  const int worst = WorstLevel(img.rgb, golden("image_u8"));
  EXPECT_LE(worst, 1);
  std::printf("%s (%s %s): control context %.2e, hint %.2e, final latents %.2e, image max diff "
              "%d\n",
              name.c_str(), layout.c_str(), form.c_str(), ctx, hint,
              RelErr(trace.latents.back(), std::vector<float>(lat.end() - n, lat.end())), worst);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, ControlNetGoldenTest,
    ::testing::Combine(::testing::Values("control20_48x32", "control21_32x48",
                                         "control21_inpaint_48x48"),
                       ::testing::Values("folder", "file")),
    [](const auto& info) {
      return std::get<0>(info.param) + "_" + std::get<1>(info.param);
    });

class ControlNetLoadTest : public ::testing::Test {
 protected:
  static TransformerConfig Dit() {
    auto c = LoadModelConfig(testing::MakeTinyFolder());
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? c->transformer : TransformerConfig{};
  }
  // Pipeline::Create's status with `controlnet`.
  static absl::Status Create(const std::string& controlnet) {
    PipelineOptions o;
    o.model_dir = testing::MakeTinyFolder();
    o.controlnet = controlnet;
    return Pipeline::Create(o).status();
  }
};

TEST_F(ControlNetLoadTest, FolderAndSingleFileGiveTheSameConfiguration) {
  const TransformerConfig dit = Dit();
  for (const char* layout : {"2.0", "2.1"}) {
    ASSERT_OK_AND_ASSIGN(ControlNetConfig a, ReadControlNetConfig(Folder(layout), dit));
    ASSERT_OK_AND_ASSIGN(ControlNetConfig b, ReadControlNetConfig(SingleFile(layout), dit));
    EXPECT_EQ(ControlNetLayoutName(a.layout), std::string(layout));
    EXPECT_EQ(ControlNetLayoutName(b.layout), std::string(layout));
    EXPECT_EQ(a.control_layers_places, b.control_layers_places) << layout;
    EXPECT_EQ(a.control_refiner_layers_places, b.control_refiner_layers_places) << layout;
    EXPECT_EQ(a.control_in_dim, b.control_in_dim) << layout;
    EXPECT_EQ(a.control_in_dim, 33);
    EXPECT_TRUE(absl::StrContains(b.source, "layout from its keys")) << b.source;
  }
  // A 2.x file whose noise refiner projections are not zero is 2.1 (diffusers' rule): the 2.0
  // file with a non-zero before_proj.
  const std::string odd = Scratch() + "/nonzero.safetensors";
  ASSERT_OK(Rewrite(Folder("2.0") + kWeights, odd, {}, {},
                    {{"control_noise_refiner.0.before_proj.weight", {64, 64}}}, 0.5f));
  ASSERT_OK_AND_ASSIGN(ControlNetConfig c, ReadControlNetConfig(odd, dit));
  EXPECT_EQ(c.layout, ControlNetConfig::Layout::kUnion21);
}

TEST_F(ControlNetLoadTest, ForeignOrDamagedControlNetsAreRefusedNamingTheKey) {
  const std::string dir = Scratch();
  // Another base model's ControlNet: the folder config's dim.
  const std::string other = dir + "/other-dim";
  fs::create_directories(other);
  fs::copy_file(Folder("2.1") + kWeights, other + kWeights, fs::copy_options::overwrite_existing);
  {
    std::ifstream in(Folder("2.1") + "/config.json");
    nlohmann::json j = nlohmann::json::parse(in);
    j["dim"] = 3840;
    std::ofstream(other + "/config.json") << j.dump();
  }
  absl::Status s = Create(other);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(s.message(), "key 'dim': 3840 differs from the DiT's 64")) << s;

  // A wrong-shaped tensor (the single file), named with both shapes.
  const std::string shaped = dir + "/shaped.safetensors";
  ASSERT_OK(Rewrite(Folder("2.1") + kWeights, shaped, {},
                    {{"control_layers.0.attention.to_q.weight", {64, 32}}}, {}, 0.1f));
  s = Create(shaped);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(s.message(),
                                "key 'control_layers.0.attention.to_q.weight': expected shape "
                                "[64, 64], found [64, 32]"))
      << s;

  // A missing tensor and an unexpected one.
  const std::string missing = dir + "/missing.safetensors";
  ASSERT_OK(Rewrite(Folder("2.1") + kWeights, missing, {"control_layers.0.after_proj.weight"},
                    {}, {}, 0.0f));
  s = Create(missing);
  EXPECT_TRUE(absl::StrContains(s.message(), "control_layers.0.after_proj.weight")) << s;
  const std::string unexpected = dir + "/unexpected.safetensors";
  ASSERT_OK(Rewrite(Folder("2.1") + kWeights, unexpected, {}, {},
                    {{"control_layers.0.extra.weight", {4}}}, 0.0f));
  s = Create(unexpected);
  EXPECT_TRUE(absl::StrContains(s.message(), "unexpected key 'control_layers.0.extra.weight'"))
      << s;

  // Not a ControlNet at all: the tiny DiT's weights.
  const std::string dit_file = dir + "/dit.safetensors";
  auto dit_ws = WeightSet::Open(testing::MakeTinyFolder() + "/transformer");
  ASSERT_OK(dit_ws.status());
  ASSERT_OK(Rewrite((*dit_ws)->files()[0]->path(), dit_file, {}, {}, {}, 0.0f));
  s = Create(dit_file);
  EXPECT_TRUE(absl::StrContains(s.message(), "no tensor 'control_all_x_embedder.2-1.weight'"))
      << s;
  EXPECT_EQ(Create(dir + "/absent").code(), absl::StatusCode::kNotFound);
}

class ControlNetRequestTest : public ::testing::Test {
 protected:
  static GenerateRequest Request() {
    GenerateRequest r;
    r.prompt = "a fox";
    r.width = 48;
    r.height = 32;
    r.steps = 2;
    r.seed = 3;
    ControlRequest c;
    c.image = Picture("control20_48x32_control.png");
    r.control = c;
    return r;
  }
};

TEST_F(ControlNetRequestTest, BadRequestsAreRefusedNamingTheFieldAndThePipelineStaysUsable) {
  Pipeline* p = PipelineFor(Folder("2.0"));
  ASSERT_NE(p, nullptr);
  auto refused = [&](const GenerateRequest& r, const std::string& want) {
    auto img = p->Generate(r, nullptr, nullptr);
    ASSERT_FALSE(img.ok()) << want;
    EXPECT_EQ(img.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StrContains(img.status().message(), want)) << img.status();
  };
  for (float s : {-0.1f, 2.5f}) {
    GenerateRequest r = Request();
    r.control->scale = s;
    refused(r, "control.conditioning_scale must be within [0, 2]");
  }
  GenerateRequest r = Request();
  r.control->start = 0.6f;
  r.control->end = 0.4f;
  refused(r, "0 <= start < end <= 1");
  r = Request();
  r.control->image.rgb.resize(10);
  refused(r, "control.image");
  r = Request();
  r.init_image = Picture("control20_48x32_control.png");
  refused(r, "image-to-image with a ControlNet is not supported");
  GenerateRequest plain = Request();
  plain.control.reset();
  // Without a ControlNet loaded.
  Pipeline* bare = PipelineFor("");
  ASSERT_NE(bare, nullptr);
  auto none = bare->Generate(Request(), nullptr, nullptr);
  ASSERT_FALSE(none.ok());
  EXPECT_TRUE(absl::StrContains(none.status().message(), "has no ControlNet")) << none.status();

  // The refusals changed nothing: a plain render equals the bare pipeline's, byte for byte;
  // scale 0 adds zero hints (the same bytes again); the default scale changes the image.
  ASSERT_OK_AND_ASSIGN(Image a, p->Generate(plain, nullptr, nullptr));
  ASSERT_OK_AND_ASSIGN(Image b, bare->Generate(plain, nullptr, nullptr));
  EXPECT_EQ(a.rgb, b.rgb);
  r = Request();
  r.control->scale = 0.0f;
  ASSERT_OK_AND_ASSIGN(Image zero, p->Generate(r, nullptr, nullptr));
  EXPECT_EQ(zero.rgb, a.rgb);
  ASSERT_OK_AND_ASSIGN(Image ctl, p->Generate(Request(), nullptr, nullptr));
  EXPECT_NE(ctl.rgb, a.rgb);
}

TEST_F(ControlNetRequestTest, StartAndEndSelectTheStepsTheControlNetRunsOn) {
  Pipeline* p = PipelineFor(Folder("2.1"));
  ASSERT_NE(p, nullptr);
  GenerateRequest plain = Request();
  plain.control.reset();
  GenerateTrace none, late, early;
  ASSERT_OK(p->Generate(plain, nullptr, nullptr, &none).status());
  GenerateRequest r = Request();
  r.control->start = 0.5f;  // step 1 of 2 only
  ASSERT_OK(p->Generate(r, nullptr, nullptr, &late).status());
  r.control->start = 0.0f;
  r.control->end = 0.5f;  // step 0 only
  ASSERT_OK(p->Generate(r, nullptr, nullptr, &early).status());
  ASSERT_EQ(none.latents.size(), 2u);
  EXPECT_EQ(late.latents[0], none.latents[0]);
  EXPECT_NE(late.latents[1], none.latents[1]);
  EXPECT_NE(early.latents[0], none.latents[0]);
}

}  // namespace
}  // namespace zfarm::worker
