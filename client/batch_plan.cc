#include "client/batch_plan.h"

#include <openssl/sha.h>

#include <fstream>
#include <map>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "nlohmann/json.hpp"
#include "proto/base/files.h"
#include "proto/base/job_defaults.h"
#include "proto/base/status_macros.h"

namespace zfarm::client {
namespace {

using ::zfarm::base::kDefaultSizePx;
using json = nlohmann::json;

absl::Status LineError(absl::string_view file, int line, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat(file, ":", line, ": ", message));
}

absl::StatusOr<int32_t> JsonInt(const json& v, absl::string_view key) {
  if (!v.is_number_integer()) {
    return absl::InvalidArgumentError(absl::StrCat("\"", key, "\" must be an integer"));
  }
  int64_t x = v.get<int64_t>();
  if (x < INT32_MIN || x > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("\"", key, "\" is out of range"));
  }
  return static_cast<int32_t>(x);
}

absl::StatusOr<uint64_t> JsonSeed(const json& v) {
  if (!v.is_number_unsigned()) {
    return absl::InvalidArgumentError("\"seed\" must be a non-negative integer");
  }
  return v.get<uint64_t>();
}

absl::StatusOr<std::string> JsonString(const json& v, absl::string_view key) {
  if (!v.is_string()) {
    return absl::InvalidArgumentError(absl::StrCat("\"", key, "\" must be a string"));
  }
  return v.get<std::string>();
}

// An input picture key: a local file read as bytes, or a --input-root path.
absl::Status JsonImage(const json& v, absl::string_view key, bool local,
                       const FileReader& read_file, zfarm::v1::ImageInput* out) {
  ZFARM_ASSIGN_OR_RETURN(std::string path, JsonString(v, key));
  if (path.empty()) return absl::InvalidArgumentError(absl::StrCat("\"", key, "\" is empty"));
  if (!local) {
    out->set_path(path);
    return absl::OkStatus();
  }
  if (!read_file) {
    return absl::InvalidArgumentError(absl::StrCat("\"", key, "\": local files are not read here"));
  }
  absl::StatusOr<std::string> bytes = read_file(path);
  if (!bytes.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("\"", key, "\": ", bytes.status().message()));
  }
  out->set_data(*std::move(bytes));
  return absl::OkStatus();
}

absl::Status JsonLoras(const json& v, zfarm::v1::JobSpec* spec) {
  if (!v.is_array()) {
    return absl::InvalidArgumentError(
        "\"loras\" must be an array of \"NAME[:SCALE]\" strings, e.g. [\"ink:0.8\"]");
  }
  spec->clear_loras();
  for (size_t i = 0; i < v.size(); ++i) {
    if (!v[i].is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "\"loras\"[", i, "]: write each LoRA as a \"NAME[:SCALE]\" string (e.g. \"ink:0.8\")",
          v[i].is_object() ? "; {name, scale} objects are not accepted" : ""));
    }
    absl::StatusOr<zfarm::v1::LoraRef> l = ParseLoraRef(v[i].get<std::string>());
    if (!l.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("\"loras\"[", i, "]: ", l.status().message()));
    }
    *spec->add_loras() = *std::move(l);
  }
  return absl::OkStatus();
}

// Applies one JSON Lines object on top of `spec`; collects per-line seeds.
// A list of independent keys, one branch per JSON key, each error naming it.
absl::Status ApplyJsonLine(const json& obj, zfarm::v1::JobSpec* spec,
                           std::vector<uint64_t>* seeds, const FileReader& read_file) {
  if (!obj.is_object()) {
    return absl::InvalidArgumentError("a JSON line must be an object");
  }
  bool has_prompt = false;
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    const std::string& key = it.key();
    const json& v = it.value();
    if (key == "prompt") {
      ZFARM_ASSIGN_OR_RETURN(*spec->mutable_prompt(), JsonString(v, key));
      has_prompt = true;
    } else if (key == "negative_prompt") {
      ZFARM_ASSIGN_OR_RETURN(*spec->mutable_negative_prompt(), JsonString(v, key));
    } else if (key == "output_name") {
      ZFARM_ASSIGN_OR_RETURN(*spec->mutable_output_name(), JsonString(v, key));
    } else if (key == "model") {
      ZFARM_ASSIGN_OR_RETURN(*spec->mutable_model(), JsonString(v, key));
    } else if (key == "webhook_url") {
      ZFARM_ASSIGN_OR_RETURN(*spec->mutable_webhook_url(), JsonString(v, key));
    } else if (key == "width" || key == "width_px") {
      ZFARM_ASSIGN_OR_RETURN(int32_t x, JsonInt(v, key));
      spec->set_width_px(x);
    } else if (key == "height" || key == "height_px") {
      ZFARM_ASSIGN_OR_RETURN(int32_t x, JsonInt(v, key));
      spec->set_height_px(x);
    } else if (key == "steps") {
      ZFARM_ASSIGN_OR_RETURN(int32_t x, JsonInt(v, key));
      spec->set_steps(x);
    } else if (key == "priority") {
      ZFARM_ASSIGN_OR_RETURN(int32_t x, JsonInt(v, key));
      spec->set_priority(x);
    } else if (key == "guidance" || key == "guidance_scale") {
      if (!v.is_number()) {
        return absl::InvalidArgumentError(absl::StrCat("\"", key, "\" must be a number"));
      }
      spec->set_guidance_scale(v.get<float>());
    } else if (key == "seed") {
      ZFARM_ASSIGN_OR_RETURN(uint64_t s, JsonSeed(v));
      seeds->assign(1, s);
    } else if (key == "seeds") {
      if (!v.is_array() || v.empty()) {
        return absl::InvalidArgumentError("\"seeds\" must be a non-empty array of integers");
      }
      seeds->clear();
      for (const json& s : v) {
        ZFARM_ASSIGN_OR_RETURN(uint64_t x, JsonSeed(s));
        seeds->push_back(x);
      }
    } else if (key == "output_format") {
      ZFARM_ASSIGN_OR_RETURN(std::string name, JsonString(v, key));
      ZFARM_ASSIGN_OR_RETURN(zfarm::v1::OutputFormat f, ParseOutputFormat(name, "\"output_format\""));
      spec->set_output_format(f);
    } else if (key == "quality") {
      ZFARM_ASSIGN_OR_RETURN(int32_t x, JsonInt(v, key));
      spec->set_quality(x);
    } else if (key == "labels") {
      if (!v.is_object()) {
        return absl::InvalidArgumentError("\"labels\" must be an object of strings");
      }
      for (auto l = v.begin(); l != v.end(); ++l) {
        ZFARM_ASSIGN_OR_RETURN(std::string value, JsonString(l.value(), "labels." + l.key()));
        (*spec->mutable_labels())[l.key()] = value;
      }
    } else if (key == "init_image" || key == "init_image_path") {
      ZFARM_RETURN_IF_ERROR(
          JsonImage(v, key, key == "init_image", read_file, spec->mutable_init_image()));
    } else if (key == "mask" || key == "mask_path") {
      ZFARM_RETURN_IF_ERROR(JsonImage(v, key, key == "mask", read_file, spec->mutable_mask_image()));
    } else if (key == "strength") {
      if (!v.is_number()) return absl::InvalidArgumentError("\"strength\" must be a number");
      spec->set_strength(v.get<float>());
    } else if (key == "loras") {
      ZFARM_RETURN_IF_ERROR(JsonLoras(v, spec));
    } else if (key == "control_image" || key == "control_image_path") {
      ZFARM_RETURN_IF_ERROR(JsonImage(v, key, key == "control_image", read_file,
                                      spec->mutable_control()->mutable_image()));
    } else if (key == "control_scale" || key == "control_start" || key == "control_end") {
      if (!v.is_number()) {
        return absl::InvalidArgumentError(absl::StrCat("\"", key, "\" must be a number"));
      }
      zfarm::v1::ControlInput* c = spec->mutable_control();
      const float x = v.get<float>();
      if (key == "control_scale") c->set_conditioning_scale(x);
      if (key == "control_start") c->set_start(x);
      if (key == "control_end") c->set_end(x);
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown key \"", key,
                       "\" (known: prompt, negative_prompt, width, height, steps, "
                       "guidance, seed, seeds, priority, output_name, model, labels, "
                       "webhook_url, output_format, quality, init_image, init_image_path, mask, "
                       "mask_path, strength, loras, control_image, control_image_path, "
                       "control_scale, control_start, control_end)"));
    }
  }
  if (!has_prompt) return absl::InvalidArgumentError("missing \"prompt\"");
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<zfarm::v1::OutputFormat> ParseOutputFormat(absl::string_view name,
                                                          absl::string_view field) {
  const std::string n = absl::AsciiStrToLower(name);
  if (n == "png") return zfarm::v1::OUTPUT_FORMAT_PNG;
  if (n == "jpeg" || n == "jpg") return zfarm::v1::OUTPUT_FORMAT_JPEG;
  if (n == "webp") return zfarm::v1::OUTPUT_FORMAT_WEBP;
  return absl::InvalidArgumentError(
      absl::StrCat(field, ": unknown format \"", name, "\" (png, jpeg or webp)"));
}

absl::StatusOr<std::string> ReadLocalFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read '", path, "'"));
  std::stringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return absl::InvalidArgumentError(absl::StrCat("error reading '", path, "'"));
  return buffer.str();
}

absl::StatusOr<zfarm::v1::LoraRef> ParseLoraRef(absl::string_view text) {
  zfarm::v1::LoraRef ref;
  std::string name(text);
  if (size_t colon = text.rfind(':'); colon != absl::string_view::npos) {
    absl::string_view tail = text.substr(colon + 1);
    float scale = 0;
    if (tail.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", text, "': empty scale after ':' (use NAME or NAME:SCALE)"));
    }
    if (absl::SimpleAtof(tail, &scale)) {
      ref.set_scale(scale);
      name = std::string(text.substr(0, colon));
    }
  }
  if (name.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", text, "': empty LoRA name (use NAME or NAME:SCALE)"));
  }
  ref.set_name(name);
  return ref;
}

void FillSizeDefaults(zfarm::v1::JobSpec* spec) {
  if (spec->has_init_image()) return;
  if (spec->width_px() == 0) spec->set_width_px(kDefaultSizePx);
  if (spec->height_px() == 0) spec->set_height_px(kDefaultSizePx);
}

absl::StatusOr<std::vector<uint64_t>> ParseSeedList(absl::string_view text) {
  std::vector<uint64_t> seeds;
  for (absl::string_view item : absl::StrSplit(text, ',')) {
    item = absl::StripAsciiWhitespace(item);
    uint64_t s = 0;
    if (item.empty() || !absl::SimpleAtoi(item, &s)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--seeds: '", item, "' is not a non-negative integer (use 1,2,3)"));
    }
    seeds.push_back(s);
  }
  return seeds;
}

// One straight story: line by line (text or JSON), the defaults and the sweep applied,
// every error naming the file and line.
absl::StatusOr<std::vector<PlannedJob>> ParsePromptsFile(absl::string_view contents,
                                                         absl::string_view file_name,
                                                         const zfarm::v1::JobSpec& defaults,
                                                         const SweepOptions& sweep,
                                                         const FileReader& read_file) {
  if (sweep.variants < 1) {
    return absl::InvalidArgumentError("--variants must be >= 1");
  }
  std::vector<PlannedJob> jobs;
  std::vector<absl::string_view> lines = absl::StrSplit(contents, '\n');
  // A final newline does not start another line.
  if (!lines.empty() && lines.back().empty()) lines.pop_back();
  if (lines.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(file_name, ": the prompts file is empty"));
  }
  for (size_t i = 0; i < lines.size(); ++i) {
    const int line_no = static_cast<int>(i) + 1;
    absl::string_view line = absl::StripSuffix(lines[i], "\r");
    if (absl::StripAsciiWhitespace(line).empty()) {
      return LineError(file_name, line_no, "empty line (one prompt per line; remove it)");
    }
    zfarm::v1::JobSpec spec = defaults;
    std::vector<uint64_t> seeds = sweep.seeds;
    if (absl::StripLeadingAsciiWhitespace(line).front() == '{') {
      json obj = json::parse(line.begin(), line.end(), nullptr,
                             /*allow_exceptions=*/false);
      if (obj.is_discarded()) {
        return LineError(file_name, line_no, "invalid JSON");
      }
      if (absl::Status s = ApplyJsonLine(obj, &spec, &seeds, read_file); !s.ok()) {
        return LineError(file_name, line_no, s.message());
      }
    } else {
      spec.set_prompt(std::string(line));
    }
    if (spec.prompt().empty()) {
      return LineError(file_name, line_no, "empty prompt");
    }
    FillSizeDefaults(&spec);
    if (!seeds.empty()) {
      int variant = 0;
      for (uint64_t s : seeds) {
        PlannedJob job{line_no, variant++, spec, ""};
        job.spec.set_seed(s);
        jobs.push_back(std::move(job));
      }
    } else if (spec.has_seed() && sweep.variants > 1) {
      // --variants N with a base --seed: seeds base, base+1, ...
      for (int v = 0; v < sweep.variants; ++v) {
        PlannedJob job{line_no, v, spec, ""};
        job.spec.set_seed(spec.seed() + static_cast<uint64_t>(v));
        jobs.push_back(std::move(job));
      }
    } else {
      for (int v = 0; v < sweep.variants; ++v) {
        jobs.push_back(PlannedJob{line_no, v, spec, ""});
      }
    }
  }
  return jobs;
}

absl::StatusOr<std::vector<PlannedJob>> LoadPromptsFile(const std::string& path,
                                                        const zfarm::v1::JobSpec& defaults,
                                                        const SweepOptions& sweep) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(absl::StrCat("cannot read prompts file '", path, "'"));
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) {
    return absl::InvalidArgumentError(absl::StrCat("error reading prompts file '", path, "'"));
  }
  // A picture named on many lines is read once.
  std::map<std::string, std::string> cache;
  FileReader read = [&cache](const std::string& p) -> absl::StatusOr<std::string> {
    if (auto it = cache.find(p); it != cache.end()) return it->second;
    ZFARM_ASSIGN_OR_RETURN(std::string bytes, ReadLocalFile(p));
    return cache.emplace(p, std::move(bytes)).first->second;
  };
  return ParsePromptsFile(buffer.str(), path, defaults, sweep, read);
}

std::string CanonicalSpecHash(const zfarm::v1::JobSpec& spec) {
  zfarm::v1::JobSpec canonical = spec;
  canonical.clear_deadline();
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream raw(&bytes);
    google::protobuf::io::CodedOutputStream coded(&raw);
    coded.SetSerializationDeterministic(true);
    canonical.SerializeToCodedStream(&coded);
  }
  return base::Sha256Hex(bytes);
}

std::string DeriveRequestId(absl::string_view prefix, const PlannedJob& job) {
  std::string id =
      absl::StrCat(prefix, "-", job.line, "-", CanonicalSpecHash(job.spec).substr(0, 16));
  if (!job.spec.has_seed() && job.variant > 0) {
    absl::StrAppend(&id, "-v", job.variant);
  }
  return id;
}

void AssignRequestIds(absl::string_view prefix, std::vector<PlannedJob>* jobs) {
  for (PlannedJob& job : *jobs) job.request_id = DeriveRequestId(prefix, job);
}

std::string DefaultRequestIdPrefix(const char* build_tag, absl::string_view fallback) {
  if (build_tag != nullptr && *build_tag != '\0') return build_tag;
  return std::string(fallback);
}

std::string DeriveBatchId(absl::string_view prefix, const std::vector<PlannedJob>& jobs) {
  std::string all;
  for (const PlannedJob& job : jobs) absl::StrAppend(&all, job.request_id, "\n");
  return absl::StrCat(prefix, "-batch-", base::Sha256Hex(all).substr(0, 16));
}

}  // namespace zfarm::client
