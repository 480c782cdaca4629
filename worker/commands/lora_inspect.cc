// zfarm-worker lora-inspect: what a LoRA file holds (layout, modules, rank, alpha) and,
// with --model, whether every key fits that model's DiT (read from its headers only).
#include <cstdio>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "proto/flags/flags.h"
#include "worker/commands/commands.h"
#include "worker/commands/flags.h"
#include "worker/io/safetensors.h"
#include "worker/model/lora_format.h"

namespace zfarm::worker {
namespace {

constexpr char kCommand[] = "lora-inspect";

// The text around the flag list in --help.
void Describe(flags::FlagSet* fs) {
  fs->set_description(
      "Prints the file's layout (diffusers, kohya, comfyui, dot), every module it targets "
      "with\nrank, alpha and the effective multiplier (alpha / rank), the keys it skips "
      "as duplicates,\nand with --model whether every key matches that model's "
      "transformer (names and shapes).");
  fs->set_footer(
      "Exit status: 0 readable (and matching, with --model), 1 unreadable or not "
      "matching, 2 usage.\n");
}

}  // namespace

// One straight story: flags, read the file, optionally check it against a model, then
// print the report (text or --json).
int RunLoraInspect(int argc, char** argv) {
  std::string model;
  bool json = false;
  flags::FlagSet fs("zfarm-worker lora-inspect FILE.safetensors [--model DIR] [--json]");
  Describe(&fs);
  fs.String("model", &model, "also check every key against this model's transformer", "DIR");
  fs.Bool("json", &json, "the report as one JSON object");
  std::vector<std::string> args;
  if (std::optional<int> rc = ParseCommandFlags(kCommand, fs, argc, argv, &args, 1)) return *rc;
  if (args.empty()) return UsageError(kCommand, fs, "FILE is required");
  const std::string& path = args[0];

  absl::StatusOr<LoraFile> lora = ReadLoraFile(path);
  if (!lora.ok()) {
    std::fprintf(stderr, "zfarm-worker lora-inspect: %s\n", std::string(lora.status().message()).c_str());
    return 1;
  }
  absl::Status match = absl::OkStatus();
  if (fs.Given("model")) {
    absl::StatusOr<std::unique_ptr<WeightSet>> ws = WeightSet::Open(model + "/transformer");
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
    if (fs.Given("model")) {
      j["model"] = model;
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
    if (fs.Given("model")) {
      if (match.ok()) {
        std::printf("every key matches %s\n", model.c_str());
      } else {
        std::printf("does not match %s: %s\n", model.c_str(), std::string(match.message()).c_str());
      }
    }
  }
  return match.ok() ? 0 : 1;
}

}  // namespace zfarm::worker
