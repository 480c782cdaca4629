// zfarm-worker lora-inspect: what a LoRA file holds (layout, modules, rank, alpha) and,
// with --model, whether every key fits that model's DiT (read from its headers only).
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "worker/commands/commands.h"
#include "worker/commands/flags.h"
#include "worker/io/safetensors.h"
#include "worker/model/lora_format.h"

namespace zfarm::worker {
namespace {

constexpr char kUsage[] =
    "usage: zfarm-worker lora-inspect FILE.safetensors [--model DIR] [--json]\n"
    "Prints the file's layout (diffusers, kohya, comfyui, dot), every module it targets with\n"
    "rank, alpha and the effective multiplier (alpha / rank), the keys it skips as duplicates,\n"
    "and with --model whether every key matches that model's transformer (names and shapes).\n"
    "Exit status: 0 readable (and matching, with --model), 1 unreadable or not matching, 2 usage.\n";

int Usage(const std::string& why) {
  std::fprintf(stderr, "zfarm-worker lora-inspect: %s\n%s", why.c_str(), kUsage);
  return 2;
}

}  // namespace

// One straight story: flags, read the file, optionally check it against a model, then
// print the report (text or --json).
int RunLoraInspect(int argc, char** argv) {
  if (argc >= 2 && (std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (argc < 2 || std::string(argv[1]).rfind("--", 0) == 0) return Usage("FILE is required");
  const std::string path = argv[1];
  absl::StatusOr<ParsedFlags> f = ParseFlags(argc - 1, argv + 1, {"json"}, {"model"});
  if (!f.ok()) return Usage(std::string(f.status().message()));
  const bool json = f->True("json");

  absl::StatusOr<LoraFile> lora = ReadLoraFile(path);
  if (!lora.ok()) {
    std::fprintf(stderr, "zfarm-worker lora-inspect: %s\n", std::string(lora.status().message()).c_str());
    return 1;
  }
  absl::Status match = absl::OkStatus();
  if (f->Has("model")) {
    absl::StatusOr<std::unique_ptr<WeightSet>> ws = WeightSet::Open(f->Get("model") + "/transformer");
    if (!ws.ok()) {
      match = ws.status();
    } else {
      std::map<std::string, std::vector<int64_t>> shapes;
      for (const std::string& n : (*ws)->Names()) shapes[n] = (*ws)->Find(n)->shape;
      match = CheckLoraAgainstModel(*lora, [&](const std::string& n) -> const std::vector<int64_t>* {
        auto it = shapes.find(n);
        return it == shapes.end() ? nullptr : &it->second;
      });
    }
  }
  if (json) {
    nlohmann::json j;
    j["file"] = path;
    j["sha256"] = lora->sha256;
    j["format"] = std::string(LoraFormatName(lora->layout.format));
    j["modules"] = nlohmann::json::array();
    for (const LoraModule& m : lora->modules) {
      nlohmann::json e = {{"module", m.module}, {"key", m.down_key}, {"rank", m.rank},
                          {"in", m.in},         {"out", m.out},      {"multiplier", m.multiplier}};
      if (m.has_alpha) e["alpha"] = m.alpha;
      j["modules"].push_back(e);
    }
    j["skipped"] = lora->layout.skipped;
    if (f->Has("model")) {
      j["model"] = f->Get("model");
      j["matches_model"] = match.ok();
      if (!match.ok()) j["error"] = std::string(match.message());
    }
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("%s\n  sha256 %s\n  format %s, %zu modules\n", path.c_str(), lora->sha256.c_str(),
                std::string(LoraFormatName(lora->layout.format)).c_str(), lora->modules.size());
    for (const LoraModule& m : lora->modules) {
      std::printf("  %-44s rank %-4lld %s  multiplier %-8g [%lld x %lld]\n", m.module.c_str(),
                  static_cast<long long>(m.rank),
                  m.has_alpha ? absl::StrCat("alpha ", m.alpha).c_str() : "no alpha",
                  m.multiplier, static_cast<long long>(m.out), static_cast<long long>(m.in));
    }
    for (const std::string& k : lora->layout.skipped) {
      std::printf("  skipped (duplicate of the per-projection keys): %s\n", k.c_str());
    }
    if (f->Has("model")) {
      if (match.ok()) {
        std::printf("every key matches %s\n", f->Get("model").c_str());
      } else {
        std::printf("does not match %s: %s\n", f->Get("model").c_str(),
                    std::string(match.message()).c_str());
      }
    }
  }
  return match.ok() ? 0 : 1;
}

}  // namespace zfarm::worker
