// zfarm-worker doctor: the pre-flight checks of a GPU host in one command —
// model files present and verified, device visible (name, memory, driver and
// CUDA versions), output root writable with free space, and a load test (load
// time, memory after load, first and warm generation time).
// Exit 0 when every check passes, 1 when any fails, 2 on usage errors.
#include <sys/statvfs.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "nlohmann/json.hpp"
#include "proto/base/status_macros.h"
#include "proto/flags/flags.h"
#include "worker/commands/commands.h"
#include "worker/commands/flags.h"
#include "worker/io/manifest.h"
#include "worker/io/model_folder.h"
#include "worker/io/weights_cache.h"
#include "worker/model/fp8_cache.h"
#include "worker/pipeline/device_info.h"
#include "worker/pipeline/pipeline.h"

namespace zfarm::worker {
namespace {

constexpr char kCommand[] = "doctor";

// Every flag of doctor, with its default.
struct DoctorFlags {
  std::string model, device = "cpu", output_root, manifest, weights_cache, precision;
  std::string size;  // empty: 1024x1024 on CUDA, 256x256 on the CPU
  int32_t steps = 8;
  bool fast = false, json = false, no_load = false;
};

void DefineFlags(flags::FlagSet* fs, DoctorFlags* f) {
  fs->String("model", &f->model, "model folder (diffusers layout; required)", "DIR");
  fs->String("device", &f->device, "cpu or cuda:N", "D");
  fs->Bool("fast", &f->fast, "check presence, sizes and safetensors headers instead of full md5");
  fs->Bool("json", &f->json, "machine-readable report on stdout");
  fs->String("output-root", &f->output_root,
             "also check that this folder is writable and has free space", "DIR");
  fs->Bool("no-load", &f->no_load, "skip the load test");
  fs->String("size", &f->size, "load-test image size (default 1024x1024 on CUDA, 256x256 on cpu)",
             "WxH");
  fs->Int("steps", &f->steps, "load-test steps, 1..50");
  fs->String("weights-cache", &f->weights_cache,
             "check that DIR holds a current bf16 (with --precision fp8: FP8) copy of the DiT "
             "(and load from it in the load test), as serve would",
             "DIR");
  fs->String("precision", &f->precision,
             "the load test's precision, as serve --precision (fp8 fails here where the device has "
             "no FP8 tensor cores)",
             "fp8|bf16|fp32");
  fs->String("manifest", &f->manifest,
             "md5sum-format manifest (default: DIR/manifest.md5 if present, else the official "
             "Z-Image-Turbo manifest)",
             "FILE");
}

// The text around the flag list in --help.
void Describe(flags::FlagSet* fs) {
  fs->set_description(
      "Pre-flight checks of a GPU host: model files, device, output root and a "
      "load test.");
  fs->set_footer(
      "Exit status: 0 all checks passed, 1 a check failed, 2 usage error.\n\n"
      "example:\n"
      "  zfarm-worker doctor --model /models/Z-Image-Turbo --device cuda:0 --fast "
      "--output-root /mnt/renders\n");
  fs->set_show_defaults(true);
}

struct Check {
  explicit Check(std::string n) : name(std::move(n)) {}
  std::string name;
  bool ok = true;
  std::string detail;
  nlohmann::json data = nlohmann::json::object();
};

std::string Gib(int64_t b) { return absl::StrFormat("%.1f GiB", b / 1073741824.0); }

// The manifest to verify against: --manifest, else DIR/manifest.md5 if present, else
// the official one. `source` names it in the report.
absl::StatusOr<std::vector<ManifestEntry>> DoctorManifest(const std::string& model,
                                                          std::string manifest_flag,
                                                          std::string* source) {
  *source = "official manifest";
  if (manifest_flag.empty() && std::filesystem::exists(model + "/manifest.md5")) {
    manifest_flag = model + "/manifest.md5";
  }
  if (manifest_flag.empty()) return OfficialManifest();
  ZFARM_ASSIGN_OR_RETURN(std::vector<ManifestEntry> m, ReadMd5Manifest(manifest_flag));
  *source = manifest_flag;
  return m;
}

// 1. Files: every file of the manifest present and matching, and the configs parse.
Check CheckFiles(const std::string& model, const std::string& manifest_flag, bool fast) {
  Check c{"files"};
  std::string source;
  absl::StatusOr<std::vector<ManifestEntry>> manifest =
      DoctorManifest(model, manifest_flag, &source);
  VerifyOptions vo;
  vo.fast = fast;
  auto report = manifest.ok() ? VerifyModelFolder(model, *manifest, vo)
                              : absl::StatusOr<VerifyReport>(manifest.status());
  if (!report.ok()) {
    c.ok = false;
    c.detail = report.status().ToString();
  } else {
    int bad = 0;
    nlohmann::json problems = nlohmann::json::array();
    for (const FileReport& r : report->files) {
      if (r.check == FileCheck::kOk) continue;
      ++bad;
      problems.push_back(
          {{"path", r.path}, {"check", std::string(FileCheckName(r.check))}, {"detail", r.detail}});
    }
    c.ok = bad == 0;
    c.detail = absl::StrFormat("%d files against %s (%s): %s", report->files.size(), source,
                               vo.fast ? "fast: sizes and headers" : "full md5",
                               bad == 0 ? "all ok" : absl::StrCat(bad, " problem(s)"));
    for (const auto& p : problems) {
      absl::StrAppend(&c.detail, "\n    ", p["path"].get<std::string>(), ": ",
                      p["check"].get<std::string>(), " ", p["detail"].get<std::string>());
    }
    c.data = {{"files", report->files.size()},
              {"problems", problems},
              {"manifest", source},
              {"seconds", report->seconds}};
  }
  auto config = LoadModelConfig(model);
  if (!config.ok()) {
    c.ok = false;
    absl::StrAppend(&c.detail, "\n    configs: ", config.status().ToString());
  }
  return c;
}

// 2. Device: visible, with its memory, driver and CUDA versions.
Check CheckDevice(const std::string& device, const absl::StatusOr<DeviceInfo>& info) {
  Check c{"device"};
  if (!info.ok()) {
    c.ok = false;
    c.detail = info.status().ToString();
    return c;
  }
  c.detail = absl::StrCat(device, ": ", info->name, ", ", Gib(info->memory.total), " total, ",
                          Gib(info->memory.free), " free; torch ", info->torch_version);
  if (!info->driver_version.empty()) {
    absl::StrAppend(&c.detail, ", CUDA driver ", info->driver_version, ", runtime ",
                    info->cuda_version, ", ", info->device_count, " GPU(s) visible");
  }
  c.data = {{"name", info->name},
            {"memory_total_bytes", info->memory.total},
            {"memory_free_bytes", info->memory.free},
            {"driver_version", info->driver_version},
            {"cuda_version", info->cuda_version},
            {"torch_version", info->torch_version},
            {"device_count", info->device_count}};
  return c;
}

// 3. Output root: writable, with the worker's default minimum of free space.
Check CheckOutputRoot(const std::string& root) {
  Check c{"output_root"};
  struct statvfs vfs {};
  if (::access(root.c_str(), W_OK) != 0 || ::statvfs(root.c_str(), &vfs) != 0) {
    c.ok = false;
    c.detail = absl::StrCat(root, ": missing or not writable by this user");
    return c;
  }
  const int64_t avail = static_cast<int64_t>(vfs.f_bavail) * static_cast<int64_t>(vfs.f_frsize);
  c.ok = avail >= (int64_t{512} << 20);
  c.detail = absl::StrCat(root, ": writable, ", Gib(avail), " free",
                          c.ok ? "" : " (below the worker's default 512 MiB minimum)");
  c.data = {{"free_bytes", avail}};
  return c;
}

// 3b. Weights cache: a current bf16 (or FP8) copy of the DiT (else serve reads the fp32 shards).
Check CheckWeightsCache(const std::string& model, const std::string& cache, bool fp8) {
  Check c{"weights_cache"};
  const std::string component = model + "/transformer";
  auto dir = WeightsCacheDir(cache, component, fp8 ? model::kFp8CacheKind : "bf16");
  absl::StatusOr<bool> useful = fp8 ? absl::StatusOr<bool>(true) : Bf16CacheUseful(component);
  if (!dir.ok() || !useful.ok()) {
    c.ok = false;
    c.detail = (!dir.ok() ? dir.status() : useful.status()).ToString();
  } else if (!*useful) {
    c.detail = "the DiT is already bfloat16: no copy needed";
  } else if (!WeightsCachePresent(*dir)) {
    c.ok = false;
    c.detail = absl::StrCat("no current copy (", *dir, "): run zfarm-worker cache-weights --model ",
                            model, " --weights-cache ", cache, fp8 ? " --precision fp8" : "");
  } else {
    c.detail = absl::StrCat(*dir, ": current");
    c.data = {{"dir", *dir}};
  }
  return c;
}

// 4. Load test: load time, memory after load, a first and a warm generation.
Check CheckLoad(const PipelineOptions& po, std::pair<int, int> size, int steps) {
  Check c{"load"};
  auto p = Pipeline::Create(po);
  if (!p.ok()) {
    c.ok = false;
    c.detail = p.status().ToString();
    return c;
  }
  DeviceMemory after_load = QueryMemory(po.device);
  GenerateRequest r;
  r.prompt = "a lighthouse on a cliff at dusk";
  r.width = size.first;
  r.height = size.second;
  r.steps = steps;
  r.seed = 42;
  auto t0 = absl::Now();
  auto first = (*p)->Generate(r, nullptr, nullptr);
  const double first_s = absl::ToDoubleSeconds(absl::Now() - t0);
  t0 = absl::Now();
  auto second = first.ok() ? (*p)->Generate(r, nullptr, nullptr) : first;
  const double warm_s = absl::ToDoubleSeconds(absl::Now() - t0);
  if (!second.ok()) {
    c.ok = false;
    c.detail = absl::StrCat("generation failed: ", second.status().ToString());
    return c;
  }
  c.detail = absl::StrFormat(
      "%s: loaded in %.2f s, %s in use after load; %dx%d, %d steps: first %.2f s, warm "
      "%.2f s, peak %s",
      (*p)->Describe(), (*p)->load_seconds(), Gib(after_load.in_use), r.width, r.height, steps,
      first_s, warm_s, Gib(second->peak_device_bytes));
  c.data = {{"load_seconds", (*p)->load_seconds()},
            {"memory_after_load_bytes", after_load.in_use},
            {"first_generation_seconds", first_s},
            {"warm_generation_seconds", warm_s},
            {"peak_bytes", second->peak_device_bytes},
            {"width", r.width},
            {"height", r.height},
            {"steps", steps}};
  return c;
}

// The report on stdout (one line per check, or --json); true when every check passed.
bool PrintReport(const std::vector<Check>& checks, bool json, const std::string& model,
                 const std::string& device) {
  bool all_ok = true;
  for (const Check& c : checks) all_ok = all_ok && c.ok;
  if (json) {
    nlohmann::json j = {{"ok", all_ok}, {"model", model}, {"device", device}};
    j["checks"] = nlohmann::json::array();
    for (const Check& c : checks) {
      j["checks"].push_back(
          {{"name", c.name}, {"ok", c.ok}, {"detail", c.detail}, {"data", c.data}});
    }
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    for (const Check& c : checks) {
      std::printf("[%s] %-11s %s\n", c.ok ? " ok " : "FAIL", c.name.c_str(), c.detail.c_str());
    }
    std::printf("%s\n", all_ok ? "all checks passed" : "some checks FAILED");
  }
  return all_ok;
}

}  // namespace

int RunDoctor(int argc, char** argv) {
  DoctorFlags f;
  flags::FlagSet fs("zfarm-worker doctor --model DIR [flags]");
  Describe(&fs);
  DefineFlags(&fs, &f);
  if (std::optional<int> rc = ParseCommandFlags(kCommand, fs, argc, argv)) return *rc;
  if (!fs.Given("model")) return UsageError(kCommand, fs, "--model DIR is required");
  const std::string& model = f.model;
  const std::string& device = f.device;
  auto size = ParseSize("size", !f.size.empty()   ? f.size
                                : device == "cpu" ? "256x256"
                                                  : "1024x1024");
  if (!size.ok() || f.steps < 1 || f.steps > 50) {
    return UsageError(kCommand, fs, "--size WxH and --steps 1..50");
  }
  PipelineOptions::Precision precision = PipelineOptions::Precision::kAuto;
  if (!f.precision.empty()) {
    absl::StatusOr<PipelineOptions::Precision> p = ParsePrecision(f.precision);
    if (!p.ok()) return UsageError(kCommand, fs, p.status().message());
    precision = *p;
  }
  const bool fp8 = precision == PipelineOptions::Precision::kFp8;
  std::vector<Check> checks;
  checks.push_back(CheckFiles(model, f.manifest, f.fast));
  absl::StatusOr<DeviceInfo> info = QueryDevice(device);
  checks.push_back(CheckDevice(device, info));
  if (fs.Given("output-root")) checks.push_back(CheckOutputRoot(f.output_root));
  if (fs.Given("weights-cache")) checks.push_back(CheckWeightsCache(model, f.weights_cache, fp8));
  if (!f.no_load && info.ok()) {
    PipelineOptions po;
    po.model_dir = model;
    po.device = device;
    po.weights_cache_dir = f.weights_cache;
    po.precision = precision;
    checks.push_back(CheckLoad(po, *size, f.steps));
  }
  return PrintReport(checks, f.json, model, device) ? 0 : 1;
}

}  // namespace zfarm::worker
