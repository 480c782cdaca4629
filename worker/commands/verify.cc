// zfarm-worker verify --model DIR [--fast] [--json] [--manifest FILE]
//
// Checks a model folder against the official Z-Image-Turbo md5 manifest (or an md5sum-format
// FILE for other folders, e.g. the tiny test models). Full mode hashes every file (progress
// with MB/s on stderr); --fast checks presence, sizes where known and safetensors headers.
// Exit 0 only when every file is OK, 1 when any is missing or wrong, 2 on usage errors.

#include <chrono>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "proto/flags/flags.h"
#include "worker/commands/commands.h"
#include "worker/commands/flags.h"
#include "worker/io/manifest.h"

namespace zfarm::worker {
namespace {

constexpr char kCommand[] = "verify";

struct VerifyFlags {
  std::string model, manifest_path;
  bool fast = false, json = false;
};

// -1 to go on, else the exit status (0 after --help, 2 after a usage error).
int ParseVerifyFlags(int argc, char** argv, VerifyFlags* f) {
  flags::FlagSet fs("zfarm-worker verify --model DIR [--fast] [--json] [--manifest FILE]");
  fs.set_description("Checks a model folder against the official Z-Image-Turbo md5 manifest.");
  fs.set_footer("Exit status: 0 every file is OK, 1 one is missing or wrong, 2 usage error.\n");
  fs.String("model", &f->model, "model folder (diffusers layout; required)", "DIR");
  fs.Bool("fast", &f->fast, "presence, sizes and safetensors headers only (no md5)");
  fs.Bool("json", &f->json, "machine-readable report on stdout");
  fs.String("manifest", &f->manifest_path, "md5sum-format manifest instead of the official one",
            "FILE");
  if (std::optional<int> rc = ParseCommandFlags(kCommand, fs, argc, argv)) return *rc;
  if (f->model.empty()) return UsageError(kCommand, fs, "--model DIR is required");
  return -1;
}

void PrintJson(const VerifyFlags& f, const VerifyReport& report) {
  nlohmann::ordered_json j;
  j["ok"] = report.ok();
  j["model"] = f.model;
  j["mode"] = f.fast ? "fast" : "md5";
  j["bytes_hashed"] = report.bytes_hashed;
  j["seconds"] = report.seconds;
  j["files"] = nlohmann::ordered_json::array();
  for (const FileReport& r : report.files) {
    j["files"].push_back({{"path", r.path},
                          {"status", std::string(FileCheckName(r.check))},
                          {"size", r.size},
                          {"detail", r.detail}});
  }
  std::printf("%s\n", j.dump(2).c_str());
}

void PrintText(const VerifyFlags& f, const VerifyReport& report) {
  const double mbps = report.seconds > 0 ? report.bytes_hashed / 1e6 / report.seconds : 0;
  int bad = 0;
  for (const FileReport& r : report.files) {
    if (r.check == FileCheck::kOk) continue;
    ++bad;
    std::printf("%-10s %s: %s\n", std::string(FileCheckName(r.check)).c_str(), r.path.c_str(),
                r.detail.c_str());
  }
  if (bad == 0) {
    std::printf(
        "OK: %zu files verified (%s) in %s, %.1f s%s\n", report.files.size(),
        f.fast ? "fast: presence, sizes, safetensors headers" : "md5", f.model.c_str(),
        report.seconds,
        f.fast ? "" : (", " + std::to_string(static_cast<int64_t>(mbps)) + " MB/s").c_str());
  } else {
    std::printf("FAILED: %d of %zu files missing or wrong in %s\n", bad, report.files.size(),
                f.model.c_str());
  }
}

}  // namespace

int RunVerify(int argc, char** argv) {
  VerifyFlags f;
  if (int rc = ParseVerifyFlags(argc, argv, &f); rc >= 0) return rc;
  std::vector<ManifestEntry> manifest = OfficialManifest();
  if (!f.manifest_path.empty()) {
    auto parsed = ReadMd5Manifest(f.manifest_path);
    if (!parsed.ok()) {
      std::fprintf(stderr, "zfarm-worker verify: %s\n",
                   std::string(parsed.status().message()).c_str());
      return 2;
    }
    manifest = *std::move(parsed);
  }
  VerifyOptions options;
  options.fast = f.fast;
  const auto start = std::chrono::steady_clock::now();
  options.progress = [start](uint64_t done, uint64_t total, const std::string& file) {
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::fprintf(stderr, "\rverify: %.0f / %.0f MB  %.0f MB/s  %s\033[K", done / 1e6, total / 1e6,
                 s > 0 ? done / 1e6 / s : 0.0, file.c_str());
  };
  auto report = VerifyModelFolder(f.model, manifest, options);
  if (!f.fast) std::fprintf(stderr, "\r\033[K");
  if (!report.ok()) {
    std::fprintf(stderr, "zfarm-worker verify: %s\n",
                 std::string(report.status().message()).c_str());
    return 1;
  }
  if (f.json) {
    PrintJson(f, *report);
  } else {
    PrintText(f, *report);
  }
  return report->ok() ? 0 : 1;
}

}  // namespace zfarm::worker
