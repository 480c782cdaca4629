#include "worker/model/lora_format.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"
#include "proto/base/files.h"
#include "proto/base/status_macros.h"
#include "worker/io/file_util.h"
#include "worker/io/safetensors.h"

namespace zfarm::worker {
namespace {

constexpr absl::string_view kKohyaPrefix = "lora_unet_";
constexpr absl::string_view kComfyPrefix = "diffusion_model.";
constexpr absl::string_view kDiffusersPrefix = "transformer.";

enum class Role { kDown, kUp, kAlpha };
enum class Style { kAB, kDownUp, kDot };

struct Suffix {
  absl::string_view text;
  Role role;
  Style style;
};
constexpr Suffix kSuffixes[] = {
    {".lora_A.weight", Role::kDown, Style::kAB},     {".lora_B.weight", Role::kUp, Style::kAB},
    {".lora_down.weight", Role::kDown, Style::kDownUp},
    {".lora_up.weight", Role::kUp, Style::kDownUp},  {".lora.down.weight", Role::kDown, Style::kDot},
    {".lora.up.weight", Role::kUp, Style::kDot},     {".alpha", Role::kAlpha, Style::kAB},
};

absl::Status Bad(absl::string_view key, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("LoRA key '", key, "': ", why));
}

// diffusers' kohya convert_key: the module part (before the first '.') is split at '_',
// except inside the protected pairs to_q/to_k/to_v/to_out/feed_forward, and joined with '.'.
std::string KohyaModule(absl::string_view base) {
  std::vector<std::string> parts = absl::StrSplit(base, '_');
  std::vector<std::string> merged;
  static const std::set<std::pair<std::string, std::string>> kProtected = {
      {"to", "q"}, {"to", "k"}, {"to", "v"}, {"to", "out"}, {"feed", "forward"}};
  for (size_t i = 0; i < parts.size(); ++i) {
    if (i + 1 < parts.size() && kProtected.count({parts[i], parts[i + 1]}) > 0) {
      merged.push_back(absl::StrCat(parts[i], "_", parts[i + 1]));
      ++i;
    } else {
      merged.push_back(parts[i]);
    }
  }
  return absl::StrJoin(merged, ".");
}

// diffusers' zimage_module_name_fixups: undo the split of module names with '_'.
std::string FixModuleNames(std::string k) {
  return absl::StrReplaceAll(k, {{"context.refiner.", "context_refiner."},
                                 {"noise.refiner.", "noise_refiner."},
                                 {"adaLN.modulation.", "adaLN_modulation."},
                                 {"all.final.layer.", "all_final_layer."},
                                 {"all.x.embedder.", "all_x_embedder."},
                                 {"cap.embedder.", "cap_embedder."},
                                 {"t.embedder.", "t_embedder."}});
}

// One LoRA pair (and alpha) found in the file, by module base name.
struct Pair {
  std::string down, up, alpha;  // original file keys
  Style style = Style::kAB;
};

bool EndsWithModule(absl::string_view base, absl::string_view tail, std::string* prefix) {
  if (!absl::EndsWith(base, tail)) return false;
  *prefix = std::string(base.substr(0, base.size() - tail.size()));
  return true;
}

}  // namespace

std::string_view LoraFormatName(LoraFormat format) {
  switch (format) {
    case LoraFormat::kDiffusers:
      return "diffusers";
    case LoraFormat::kKohya:
      return "kohya";
    case LoraFormat::kComfy:
      return "comfyui";
    case LoraFormat::kDot:
      return "dot";
  }
  return "?";
}

// Long on purpose: the renaming steps of diffusers' converter in its order, so the two
// can be read side by side; a step moved into a helper would no longer line up.
absl::StatusOr<LoraLayout> ConvertLoraKeys(const std::vector<std::string>& keys) {
  if (keys.empty()) return absl::InvalidArgumentError("LoRA file has no tensors");
  bool has_comfy = false, has_kohya = false, has_default = false, has_dot = false;
  for (const std::string& k : keys) {
    if (absl::StartsWith(k, "text_encoder") || absl::StartsWith(k, "lora_te") ||
        absl::StartsWith(k, "te_")) {
      return Bad(k, "targets the text encoder; only LoRAs for the transformer are supported");
    }
    if (absl::StrContains(k, "dora_scale")) {
      return Bad(k, "DoRA magnitudes are not supported (only plain LoRA)");
    }
    has_comfy = has_comfy || absl::StartsWith(k, kComfyPrefix);
    has_kohya = has_kohya || absl::StartsWith(k, kKohyaPrefix);
  }
  // The naming steps of _convert_non_diffusers_z_image_lora_to_diffusers, in its order.
  std::vector<std::pair<std::string, std::string>> named;  // {converted, original}
  for (const std::string& orig : keys) {
    std::string k = orig;
    if (has_comfy && absl::StartsWith(k, kComfyPrefix)) k = k.substr(kComfyPrefix.size());
    if (has_kohya && absl::StartsWith(k, kKohyaPrefix)) {
      k = k.substr(kKohyaPrefix.size());
      const size_t dot = k.find('.');
      k = dot == std::string::npos ? KohyaModule(k)
                                   : absl::StrCat(KohyaModule(k.substr(0, dot)), k.substr(dot));
    }
    if (absl::StartsWith(k, kDiffusersPrefix)) k = k.substr(kDiffusersPrefix.size());
    has_default = has_default || absl::StrContains(k, "default.");
    has_dot = has_dot || absl::StrContains(k, ".lora.down.weight");
    named.emplace_back(std::move(k), orig);
  }
  LoraLayout layout;
  layout.format = has_kohya ? LoraFormat::kKohya
                  : has_dot ? LoraFormat::kDot
                  : has_comfy ? LoraFormat::kComfy
                              : LoraFormat::kDiffusers;

  std::map<std::string, Pair> pairs;
  std::vector<std::pair<std::string, std::string>> alphas;  // {base, original key}
  for (auto& [k, orig] : named) {
    if (has_default) absl::StrReplaceAll({{"default.", ""}}, &k);
    k = FixModuleNames(std::move(k));
    const Suffix* hit = nullptr;
    for (const Suffix& s : kSuffixes) {
      if (absl::EndsWith(k, s.text)) {
        hit = &s;
        break;
      }
    }
    if (hit == nullptr) {
      return Bad(orig,
                 "not a LoRA tensor (expected lora_A/lora_B, lora_down/lora_up or lora.down/"
                 "lora.up weights, or alpha)");
    }
    std::string base = k.substr(0, k.size() - hit->text.size());
    // Dot format: "attention.to.q" is the module attention.to_q.
    for (const char* p : {"q", "k", "v"}) {
      std::string prefix;
      if (EndsWithModule(base, absl::StrCat(".to.", p), &prefix)) base = absl::StrCat(prefix, ".to_", p);
    }
    if (base.empty()) return Bad(orig, "names no module");
    if (hit->role == Role::kAlpha) {
      alphas.emplace_back(base, orig);
      continue;
    }
    Pair& p = pairs[base];
    std::string& slot = hit->role == Role::kDown ? p.down : p.up;
    if (!slot.empty()) {
      return Bad(orig, absl::StrCat("duplicates '", slot, "' (both are the ",
                                    hit->role == Role::kDown ? "down" : "up", " weight of ", base,
                                    ")"));
    }
    slot = orig;
    p.style = hit->style;
  }
  for (const auto& [base, orig] : alphas) {
    auto it = pairs.find(base);
    if (it == pairs.end()) return Bad(orig, absl::StrCat("alpha without LoRA weights for ", base));
    if (!it->second.alpha.empty()) {
      return Bad(orig, absl::StrCat("duplicates alpha '", it->second.alpha, "'"));
    }
    it->second.alpha = orig;
  }
  std::map<std::string, LoraModuleKeys> modules;  // by module
  auto add = [&](const std::string& module, const Pair& p, int third) -> absl::Status {
    auto [it, inserted] = modules.emplace(module, LoraModuleKeys{module, p.down, p.up, p.alpha, third});
    if (!inserted) {
      return Bad(p.down, absl::StrCat("targets ", module, ", which '", it->second.down_key,
                                      "' already targets"));
    }
    return absl::OkStatus();
  };
  auto skip = [&](const Pair& p) {
    for (const std::string* k : {&p.down, &p.up, &p.alpha}) {
      if (!k->empty()) layout.skipped.push_back(*k);
    }
  };
  for (const auto& [base, p] : pairs) {
    if (p.down.empty()) return Bad(p.up, "up weight without its down weight");
    if (p.up.empty()) return Bad(p.down, "down weight without its up weight");
    std::string prefix;
    if (EndsWithModule(base, ".attention.qkv", &prefix)) {
      const std::string names[3] = {prefix + ".attention.to_q", prefix + ".attention.to_k",
                                    prefix + ".attention.to_v"};
      const bool split_present = pairs.count(names[0]) && pairs.count(names[1]) && pairs.count(names[2]);
      if (p.style == Style::kDot && split_present) {
        skip(p);  // diffusers: the dot format's qkv copy duplicates to.q/k/v
        continue;
      }
      for (int i = 0; i < 3; ++i) ZFARM_RETURN_IF_ERROR(add(names[i], p, i));
      continue;
    }
    if (EndsWithModule(base, ".attention.out", &prefix)) {
      const std::string to_out = prefix + ".attention.to_out.0";
      if (p.style == Style::kDot && pairs.count(to_out)) {
        skip(p);  // diffusers: the dot format's bare out duplicates to_out.0
        continue;
      }
      ZFARM_RETURN_IF_ERROR(add(to_out, p, -1));
      continue;
    }
    ZFARM_RETURN_IF_ERROR(add(base, p, -1));
  }
  for (auto& [name, m] : modules) layout.modules.push_back(std::move(m));
  std::sort(layout.skipped.begin(), layout.skipped.end());
  return layout;
}

int64_t LoraFile::float_bytes() const {
  int64_t n = 0;
  for (const LoraModule& m : modules) {
    n += static_cast<int64_t>((m.down.size() + m.up.size()) * sizeof(float));
  }
  return n;
}

namespace {

std::string ShapeString(const std::vector<int64_t>& s) {
  return absl::StrCat("[", absl::StrJoin(s, ", "), "]");
}

// PEFT's LoraConfig values from diffusers' "lora_adapter_metadata" (transformer.* keys).
struct AdapterConfig {
  bool present = false;
  double r = 8, lora_alpha = 8;
  bool rslora = false;
  std::map<std::string, double> rank_pattern, alpha_pattern;
};

// PEFT matches pattern keys against the end of a module name.
const double* PatternFor(const std::map<std::string, double>& patterns, const std::string& module) {
  for (const auto& [k, v] : patterns) {
    if (module == k || absl::EndsWith(module, absl::StrCat(".", k))) return &v;
  }
  return nullptr;
}

absl::StatusOr<AdapterConfig> ParseAdapterMetadata(const SafetensorsFile& f) {
  AdapterConfig c;
  auto it = f.metadata().find("lora_adapter_metadata");
  if (it == f.metadata().end()) return c;
  const std::string where = absl::StrCat(f.path(), ": __metadata__.lora_adapter_metadata");
  nlohmann::json j = nlohmann::json::parse(it->second, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(where, ": not a JSON object"));
  auto number = [&](const nlohmann::json& v, const std::string& key) -> absl::StatusOr<double> {
    if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", key, " must be a positive number"));
    }
    return v.get<double>();
  };
  for (const auto& [key, v] : j.items()) {
    if (!absl::StartsWith(key, kDiffusersPrefix)) continue;  // diffusers keeps transformer.* only
    c.present = true;
    const std::string k = key.substr(kDiffusersPrefix.size());
    if (k == "r") {
      ZFARM_ASSIGN_OR_RETURN(c.r, number(v, key));
    } else if (k == "lora_alpha") {
      ZFARM_ASSIGN_OR_RETURN(c.lora_alpha, number(v, key));
    } else if (k == "use_rslora") {
      c.rslora = v.is_boolean() && v.get<bool>();
    } else if (k == "use_dora" && v.is_boolean() && v.get<bool>()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", key, ": DoRA is not supported"));
    } else if ((k == "rank_pattern" || k == "alpha_pattern") && v.is_object()) {
      auto& dst = k == "rank_pattern" ? c.rank_pattern : c.alpha_pattern;
      for (const auto& [pk, pv] : v.items()) {
        ZFARM_ASSIGN_OR_RETURN(dst[pk], number(pv, absl::StrCat(key, ".", pk)));
      }
    }
  }
  return c;
}

}  // namespace

// One straight story: open, size limit, key layout, adapter metadata, then every
// module's down/up pair read and checked (rank, shapes, alpha) in file order.
absl::StatusOr<LoraFile> ReadLoraFile(const std::string& path) {
  LoraFile out;
  out.path = path;
  ZFARM_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> f, SafetensorsFile::Open(path));
  if (f->file_size() > kMaxLoraFileBytes) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", f->file_size(),
                                                   " bytes exceeds the LoRA limit of ",
                                                   kMaxLoraFileBytes, " bytes"));
  }
  std::vector<std::string> keys;
  for (const TensorInfo& t : f->tensors()) keys.push_back(t.name);
  auto in_file = [&](const absl::Status& s) {
    return absl::Status(s.code(), absl::StrCat(path, ": ", s.message()));
  };
  absl::StatusOr<LoraLayout> layout = ConvertLoraKeys(keys);
  if (!layout.ok()) return in_file(layout.status());
  out.layout = *std::move(layout);
  absl::StatusOr<AdapterConfig> config = ParseAdapterMetadata(*f);
  if (!config.ok()) return config.status();
  auto read = [&](const std::string& key, std::vector<float>* dst) {
    const TensorInfo* t = f->Find(key);
    dst->resize(static_cast<size_t>(t->numel()));
    ConvertToF32(f->View(*t), dst->data());
    return t;
  };
  for (const LoraModuleKeys& k : out.layout.modules) {
    LoraModule m;
    m.module = k.module;
    m.down_key = k.down_key;
    const TensorInfo* down = read(k.down_key, &m.down);
    std::vector<float> up;
    const TensorInfo* upt = read(k.up_key, &up);
    if (down->shape.size() != 2 || upt->shape.size() != 2 || down->shape[0] != upt->shape[1] ||
        down->shape[0] <= 0) {
      return in_file(Bad(k.down_key, absl::StrCat("expected down [rank, in] and up [out, rank], found ",
                                                  ShapeString(down->shape), " and ",
                                                  ShapeString(upt->shape), " ('", k.up_key, "')")));
    }
    m.rank = down->shape[0];
    m.in = down->shape[1];
    m.out = upt->shape[0];
    if (k.up_third >= 0) {
      if (m.out % 3 != 0) {
        return in_file(Bad(k.up_key, absl::StrCat("a fused qkv up weight needs a multiple of 3 rows, found ",
                                                  ShapeString(upt->shape))));
      }
      m.out /= 3;
      const size_t begin = static_cast<size_t>(k.up_third * m.out * m.rank);
      m.up.assign(up.begin() + begin, up.begin() + begin + m.out * m.rank);
    } else {
      m.up = std::move(up);
    }
    for (const std::vector<float>* v : {&m.down, &m.up}) {
      for (float x : *v) {
        if (!std::isfinite(x)) return in_file(Bad(k.down_key, "holds a non-finite value"));
      }
    }
    if (!k.alpha_key.empty()) {
      std::vector<float> a;
      const TensorInfo* at = read(k.alpha_key, &a);
      if (at->numel() != 1 || !std::isfinite(a[0])) {
        return in_file(Bad(k.alpha_key, absl::StrCat("alpha must be one finite number, found shape ",
                                                     ShapeString(at->shape))));
      }
      m.has_alpha = true;
      m.alpha = a[0];
      m.multiplier = a[0] / static_cast<float>(m.rank);
    }
    if (config->present) {
      const double* rp = PatternFor(config->rank_pattern, m.module);
      const double* ap = PatternFor(config->alpha_pattern, m.module);
      const double r = rp != nullptr ? *rp : config->r;
      const double alpha = ap != nullptr ? *ap : config->lora_alpha;
      if (static_cast<int64_t>(r) != m.rank) {
        return in_file(Bad(k.down_key, absl::StrCat("rank ", m.rank, " differs from the adapter "
                                                    "metadata's r = ", r)));
      }
      m.multiplier = static_cast<float>(m.multiplier *
                                        (alpha / (config->rslora ? std::sqrt(r) : r)));
    }
    out.modules.push_back(std::move(m));
  }
  ZFARM_ASSIGN_OR_RETURN(out.sha256, base::Sha256OfFile(path));
  return out;
}

absl::Status CheckLoraAgainstModel(const LoraFile& file, const ParamShapeFn& shape_of) {
  for (const LoraModule& m : file.modules) {
    const std::string param = m.module + ".weight";
    const std::vector<int64_t>* shape = shape_of(param);
    if (shape == nullptr || shape->size() != 2) {
      return absl::InvalidArgumentError(absl::StrCat(
          file.path, ": LoRA key '", m.down_key, "' targets ", param,
          shape == nullptr ? ", which the model does not have" : ", which is not a linear weight",
          " (a LoRA for another model?)"));
    }
    if ((*shape)[0] != m.out || (*shape)[1] != m.in) {
      return absl::InvalidArgumentError(absl::StrCat(
          file.path, ": LoRA key '", m.down_key, "' targets ", param, " of shape ",
          ShapeString(*shape), " but its update up x down is ", ShapeString({m.out, m.in}),
          " (a LoRA for another architecture?)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace zfarm::worker
