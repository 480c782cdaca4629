// Model-folder faults against the real `zfarm-worker serve`, `doctor` and
// `verify`, on damaged copies of the tiny model: a truncated shard, a flipped
// header byte, a missing config key, a missing tokenizer, configs for another
// architecture (pipeline class, transformer class, inconsistent dimensions, more
// layers than the checkpoint holds). For each: serve exits 1 before it ever
// connects (the scheduler never lists it, let alone READY), doctor fails, and
// every message names the file (or component) and the key at fault. verify (md5)
// names the damaged file; verify --fast (sizes, headers) catches the file-level
// faults, config-level ones are doctor's and serve's.
#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/farm_processes.h"
#include "tests/testing/subprocess.h"

namespace zfarm {
namespace {

namespace v1 = ::zfarm::v1;
namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::zfarm::testing::RunCommand;
using ::zfarm::testing::Subprocess;
using json = nlohmann::json;

void EditJson(const std::string& path, const std::function<void(json&)>& edit) {
  json j;
  {
    std::ifstream in(path);
    in >> j;
  }
  edit(j);
  std::ofstream(path, std::ios::trunc) << j.dump(2);
}

struct Fault {
  std::string name;
  std::function<void(const std::string& model)> apply;
  std::vector<std::string> message;  // substrings every tool's message must have
  bool file_level;                   // verify --fast must catch it too
};

std::vector<Fault> Faults() {
  const std::string shard = "transformer/diffusion_pytorch_model-00002-of-00002.safetensors";
  const std::string vae = "vae/diffusion_pytorch_model.safetensors";
  return {
      {"truncated shard",
       [=](const std::string& m) { fs::resize_file(m + "/" + shard, fs::file_size(m + "/" + shard) / 2); },
       {shard, "tensor '", "truncated"},
       true},
      {"flipped header byte",
       [=](const std::string& m) {
         // Byte 8 is the header's opening '{'; flipped it becomes '['.
         std::fstream f(m + "/" + vae, std::ios::in | std::ios::out | std::ios::binary);
         f.seekg(8);
         char c = 0;
         f.get(c);
         f.seekp(8);
         f.put(static_cast<char>(c ^ 0x20));
       },
       {vae, "header", "not valid JSON"},
       true},
      {"missing config key",
       [](const std::string& m) {
         EditJson(m + "/transformer/config.json", [](json& j) { j.erase("n_layers"); });
       },
       {"transformer/config.json", "missing key 'n_layers'"},
       false},
      {"missing tokenizer",
       [](const std::string& m) { fs::remove(m + "/tokenizer/tokenizer.json"); },
       {"tokenizer/tokenizer.json"},
       true},
      {"another pipeline architecture",
       [](const std::string& m) {
         EditJson(m + "/model_index.json", [](json& j) {
           j["_class_name"] = "FluxPipeline";
           j["transformer"] = {"diffusers", "FluxTransformer2DModel"};
         });
       },
       {"model_index.json", "'_class_name'", "FluxPipeline"},
       false},
      {"another transformer class",
       [](const std::string& m) {
         EditJson(m + "/transformer/config.json",
                  [](json& j) { j["_class_name"] = "SD3Transformer2DModel"; });
       },
       {"transformer/config.json", "'_class_name'", "SD3Transformer2DModel"},
       false},
      {"inconsistent dimensions",
       [](const std::string& m) {
         EditJson(m + "/transformer/config.json", [](json& j) { j["dim"] = 128; });
       },
       {"transformer/config.json", "'axes_dims'", "head_dim"},
       false},
      {"more layers than the checkpoint",
       [](const std::string& m) {
         EditJson(m + "/transformer/config.json", [](json& j) { j["n_layers"] = 3; });
       },
       {"transformer/config.json", "missing key", "layers.2."},
       false},
  };
}

class ModelFolderFaultTest : public zfarm::testing::FarmProcessTest {
 protected:
  // A fresh copy of the tiny model with `f` applied.
  std::string Broken(const Fault& f, int i) {
    const std::string m = absl::StrCat(dir(), "/model-", i);
    fs::copy(ZFARM_TINY_MODEL_DIR, m, fs::copy_options::recursive);
    f.apply(m);
    return m;
  }
};

TEST_F(ModelFolderFaultTest, ServeNeverBecomesReadyAndNamesTheFileAndKey) {
  StartScheduler();
  std::vector<Fault> faults = Faults();
  for (size_t i = 0; i < faults.size(); ++i) {
    const Fault& f = faults[i];
    const std::string model = Broken(f, static_cast<int>(i));
    const std::string name = absl::StrCat("bad-", i);
    Subprocess w(WorkerArgs(name, model), dir() + "/" + name + ".log");
    const int s = w.Wait(absl::Seconds(60));
    ASSERT_TRUE(WIFEXITED(s)) << f.name << ": still running or killed\n" << w.ReadLog();
    EXPECT_EQ(WEXITSTATUS(s), 1) << f.name << "\n" << w.ReadLog();
    const std::string log = w.ReadLog();
    EXPECT_THAT(log, HasSubstr("cannot load model")) << f.name;
    for (const std::string& want : f.message) EXPECT_THAT(log, HasSubstr(want)) << f.name;
    EXPECT_EQ(log.find("event=worker_welcomed"), std::string::npos) << f.name;
    EXPECT_EQ(WorkerState(name), v1::WORKER_STATE_UNSPECIFIED) << f.name << ": it connected";
  }
  // Control: the intact model becomes READY.
  StartWorker("good");
  EXPECT_EQ(WorkerState("good"), v1::WORKER_STATE_READY);
}

TEST_F(ModelFolderFaultTest, DoctorFailsNamingTheFileAndKey) {
  std::vector<Fault> faults = Faults();
  for (size_t i = 0; i < faults.size(); ++i) {
    const Fault& f = faults[i];
    const std::string model = Broken(f, static_cast<int>(i));
    // --fast: sizes, headers and configs; the load test runs (doctor's "load" check)
    // only where the files passed, so the faults that pass --fast reach it.
    zfarm::testing::CommandResult r =
        RunCommand(absl::StrCat(ZFARM_WORKER_BIN, " doctor --device cpu --fast --json --size 64x64",
                                " --steps 1 --output-root ", dir(), "/out --model ", model));
    EXPECT_EQ(r.exit_code, 1) << f.name << "\n" << r.out;
    json j = json::parse(r.out, nullptr, /*allow_exceptions=*/false);
    ASSERT_TRUE(j.is_object()) << f.name << ": not JSON\n" << r.out;
    EXPECT_FALSE(j.value("ok", true)) << f.name;
    std::string details;
    for (const auto& c : j["checks"]) {
      if (!c.value("ok", true)) absl::StrAppend(&details, c.value("detail", ""), "\n");
    }
    for (const std::string& want : f.message) EXPECT_THAT(details, HasSubstr(want)) << f.name;
  }
}

TEST_F(ModelFolderFaultTest, VerifyNamesTheDamagedFile) {
  std::vector<Fault> faults = Faults();
  for (size_t i = 0; i < faults.size(); ++i) {
    const Fault& f = faults[i];
    const std::string model = Broken(f, static_cast<int>(i));
    // The tiny model's manifest.md5 was written before the damage.
    const std::string verify =
        absl::StrCat(ZFARM_WORKER_BIN, " verify --model ", model, " --manifest ", model,
                     "/manifest.md5 2>&1");
    zfarm::testing::CommandResult r = RunCommand(verify);
    EXPECT_EQ(r.exit_code, 1) << f.name << "\n" << r.out;
    EXPECT_THAT(r.out, AllOf(HasSubstr(f.message[0]), HasSubstr("FAILED"))) << f.name;
    r = RunCommand(absl::StrCat(ZFARM_WORKER_BIN, " verify --fast --model ", model, " --manifest ",
                                model, "/manifest.md5 2>&1"));
    if (f.file_level) {
      EXPECT_EQ(r.exit_code, 1) << f.name << "\n" << r.out;
      for (const std::string& want : f.message) EXPECT_THAT(r.out, HasSubstr(want)) << f.name;
    } else {
      EXPECT_EQ(r.exit_code, 0) << f.name << ": --fast does not read configs\n" << r.out;
    }
  }
}

}  // namespace
}  // namespace zfarm
