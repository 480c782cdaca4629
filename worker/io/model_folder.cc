#include "worker/io/model_folder.h"

#include <algorithm>
#include <filesystem>
#include <numeric>
#include <set>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "proto/base/status_macros.h"
#include "worker/io/file_util.h"

namespace zfarm::worker {
namespace {

using Json = nlohmann::json;

const char* TypeName(const Json& j) { return j.type_name(); }

// A parsed JSON file plus its path, with typed getters that name file and key on error.
class JsonFile {
 public:
  static absl::StatusOr<JsonFile> Load(const std::string& path) {
    ZFARM_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(path, 16 << 20));
    Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) {
      std::string where;
      try {
        Json unused = Json::parse(text);
        (void)unused;
      } catch (const Json::parse_error& e) {
        where = absl::StrCat(" (byte ", e.byte, ")");
      } catch (...) {
      }
      return absl::InvalidArgumentError(absl::StrCat(path, ": invalid JSON", where));
    }
    if (!j.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": top level is not a JSON object"));
    }
    return JsonFile(path, std::move(j));
  }

  const std::string& path() const { return path_; }
  const Json& json() const { return json_; }

  absl::Status Error(std::string_view key, std::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": key '", Sv(key), "': ", Sv(what)));
  }

  // Returns nullptr if absent (or null), error if required and absent.
  absl::StatusOr<const Json*> Find(std::string_view key, bool required) const {
    auto it = json_.find(std::string(key));
    if (it == json_.end() || it->is_null()) {
      if (required) {
        return absl::InvalidArgumentError(absl::StrCat(path_, ": missing key '", Sv(key), "'"));
      }
      return nullptr;
    }
    return &*it;
  }

  absl::Status Int(std::string_view key, int64_t* out, bool required = true) const {
    ZFARM_ASSIGN_OR_RETURN(const Json* j, Find(key, required));
    if (j == nullptr) return absl::OkStatus();
    if (!j->is_number_integer()) {
      return Error(key, absl::StrCat("expected an integer, got ", TypeName(*j), " ", j->dump()));
    }
    *out = j->get<int64_t>();
    return absl::OkStatus();
  }
  absl::Status Double(std::string_view key, double* out, bool required = true) const {
    ZFARM_ASSIGN_OR_RETURN(const Json* j, Find(key, required));
    if (j == nullptr) return absl::OkStatus();
    if (!j->is_number()) {
      return Error(key, absl::StrCat("expected a number, got ", TypeName(*j), " ", j->dump()));
    }
    *out = j->get<double>();
    return absl::OkStatus();
  }
  absl::Status Bool(std::string_view key, bool* out, bool required = true) const {
    ZFARM_ASSIGN_OR_RETURN(const Json* j, Find(key, required));
    if (j == nullptr) return absl::OkStatus();
    if (!j->is_boolean()) {
      return Error(key, absl::StrCat("expected true/false, got ", TypeName(*j), " ", j->dump()));
    }
    *out = j->get<bool>();
    return absl::OkStatus();
  }
  absl::Status IntArray(std::string_view key, std::vector<int64_t>* out,
                        bool required = true) const {
    ZFARM_ASSIGN_OR_RETURN(const Json* j, Find(key, required));
    if (j == nullptr) return absl::OkStatus();
    if (!j->is_array() || j->empty()) {
      return Error(key, absl::StrCat("expected a non-empty array of integers, got ", j->dump()));
    }
    std::vector<int64_t> v;
    for (const Json& e : *j) {
      if (!e.is_number_integer()) {
        return Error(key, absl::StrCat("expected integers, got ", TypeName(e), " ", e.dump()));
      }
      v.push_back(e.get<int64_t>());
    }
    *out = std::move(v);
    return absl::OkStatus();
  }
  absl::Status String(std::string_view key, std::string* out, bool required = true) const {
    ZFARM_ASSIGN_OR_RETURN(const Json* j, Find(key, required));
    if (j == nullptr) return absl::OkStatus();
    if (!j->is_string()) {
      return Error(key, absl::StrCat("expected a string, got ", TypeName(*j), " ", j->dump()));
    }
    *out = j->get<std::string>();
    return absl::OkStatus();
  }
  absl::Status ExpectString(std::string_view key, std::string_view want) const {
    std::string got;
    ZFARM_RETURN_IF_ERROR(String(key, &got));
    if (got != want) {
      return Error(key, absl::StrCat("unknown value '", got, "' (expected '", Sv(want), "')"));
    }
    return absl::OkStatus();
  }

 private:
  JsonFile(std::string path, Json j) : path_(std::move(path)), json_(std::move(j)) {}
  std::string path_;
  Json json_;
};

absl::Status CheckModelIndex(const JsonFile& f) {
  ZFARM_RETURN_IF_ERROR(f.ExpectString("_class_name", "ZImagePipeline"));
  struct Component {
    const char* key;
    const char* library;
    std::vector<std::string> classes;
  };
  const Component components[] = {
      {"scheduler", "diffusers", {"FlowMatchEulerDiscreteScheduler"}},
      {"text_encoder", "transformers", {"Qwen3Model"}},
      {"tokenizer", "transformers", {"Qwen2Tokenizer", "Qwen2TokenizerFast"}},
      {"transformer", "diffusers", {"ZImageTransformer2DModel"}},
      {"vae", "diffusers", {"AutoencoderKL"}},
  };
  for (const Component& c : components) {
    ZFARM_ASSIGN_OR_RETURN(const Json* j, f.Find(c.key, true));
    if (!j->is_array() || j->size() != 2 || !(*j)[0].is_string() || !(*j)[1].is_string()) {
      return f.Error(c.key, absl::StrCat("expected [library, class], got ", j->dump()));
    }
    const std::string lib = (*j)[0].get<std::string>();
    const std::string cls = (*j)[1].get<std::string>();
    if (lib != c.library) {
      return f.Error(c.key,
                     absl::StrCat("unknown library '", lib, "' (expected '", c.library, "')"));
    }
    if (std::find(c.classes.begin(), c.classes.end(), cls) == c.classes.end()) {
      return f.Error(c.key, absl::StrCat("unknown class '", cls, "' (expected ",
                                         absl::StrJoin(c.classes, " or "), ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status ParseTransformer(const JsonFile& f, TransformerConfig* c) {
  ZFARM_RETURN_IF_ERROR(f.ExpectString("_class_name", "ZImageTransformer2DModel"));
  ZFARM_RETURN_IF_ERROR(f.Int("in_channels", &c->in_channels));
  ZFARM_RETURN_IF_ERROR(f.Int("dim", &c->dim));
  ZFARM_RETURN_IF_ERROR(f.Int("n_layers", &c->n_layers));
  ZFARM_RETURN_IF_ERROR(f.Int("n_refiner_layers", &c->n_refiner_layers));
  ZFARM_RETURN_IF_ERROR(f.Int("n_heads", &c->n_heads));
  ZFARM_RETURN_IF_ERROR(f.Int("n_kv_heads", &c->n_kv_heads, false));
  ZFARM_RETURN_IF_ERROR(f.Double("norm_eps", &c->norm_eps));
  ZFARM_RETURN_IF_ERROR(f.Bool("qk_norm", &c->qk_norm));
  ZFARM_RETURN_IF_ERROR(f.Int("cap_feat_dim", &c->cap_feat_dim));
  ZFARM_RETURN_IF_ERROR(f.Double("rope_theta", &c->rope_theta));
  ZFARM_RETURN_IF_ERROR(f.Double("t_scale", &c->t_scale));
  ZFARM_RETURN_IF_ERROR(f.IntArray("axes_dims", &c->axes_dims));
  ZFARM_RETURN_IF_ERROR(f.IntArray("axes_lens", &c->axes_lens));
  std::vector<int64_t> p = {c->patch_size}, fp = {c->f_patch_size};
  ZFARM_RETURN_IF_ERROR(f.IntArray("all_patch_size", &p));
  ZFARM_RETURN_IF_ERROR(f.IntArray("all_f_patch_size", &fp));
  if (p.size() != 1) return f.Error("all_patch_size", "exactly one patch size is supported");
  if (fp.size() != 1) return f.Error("all_f_patch_size", "exactly one patch size is supported");
  c->patch_size = p[0];
  c->f_patch_size = fp[0];
  if (auto s = f.Find("siglip_feat_dim", false); s.ok() && *s != nullptr) {
    return f.Error("siglip_feat_dim", "Omni (SigLIP) models are not supported");
  }
  return absl::OkStatus();
}

absl::Status ParseTextEncoder(const JsonFile& f, TextEncoderConfig* c) {
  ZFARM_RETURN_IF_ERROR(f.ExpectString("model_type", "qwen3"));
  ZFARM_RETURN_IF_ERROR(f.Int("vocab_size", &c->vocab_size));
  ZFARM_RETURN_IF_ERROR(f.Int("hidden_size", &c->hidden_size));
  ZFARM_RETURN_IF_ERROR(f.Int("num_hidden_layers", &c->num_hidden_layers));
  ZFARM_RETURN_IF_ERROR(f.Int("num_attention_heads", &c->num_attention_heads));
  ZFARM_RETURN_IF_ERROR(f.Int("num_key_value_heads", &c->num_key_value_heads));
  c->head_dim = c->num_attention_heads > 0 ? c->hidden_size / c->num_attention_heads : 0;
  ZFARM_RETURN_IF_ERROR(f.Int("head_dim", &c->head_dim, false));
  ZFARM_RETURN_IF_ERROR(f.Int("intermediate_size", &c->intermediate_size));
  ZFARM_RETURN_IF_ERROR(f.Double("rms_norm_eps", &c->rms_norm_eps));
  // transformers >= 5 writes rope_parameters {rope_theta, rope_type} instead of rope_theta.
  ZFARM_ASSIGN_OR_RETURN(const Json* rope, f.Find("rope_parameters", false));
  if (rope == nullptr) {
    ZFARM_RETURN_IF_ERROR(f.Double("rope_theta", &c->rope_theta));
  } else {
    if (!rope->is_object()) {
      return f.Error("rope_parameters", absl::StrCat("expected an object, got ", rope->dump()));
    }
    auto type = rope->find("rope_type");
    if (type != rope->end() && !type->is_null() &&
        !(type->is_string() && type->get<std::string>() == "default")) {
      return f.Error("rope_parameters.rope_type",
                     absl::StrCat("only \"default\" RoPE is supported, got ", type->dump()));
    }
    auto theta = rope->find("rope_theta");
    if (theta == rope->end() || !theta->is_number()) {
      return f.Error("rope_parameters.rope_theta", "missing or not a number");
    }
    c->rope_theta = theta->get<double>();
  }
  if (auto lt = f.Find("layer_types", false); lt.ok() && *lt != nullptr) {
    for (const Json& t : **lt) {
      if (!t.is_string() || t.get<std::string>() != "full_attention") {
        return f.Error("layer_types",
                       absl::StrCat("only full_attention layers are supported, got ", t.dump()));
      }
    }
  }
  ZFARM_RETURN_IF_ERROR(f.Int("max_position_embeddings", &c->max_position_embeddings, false));
  ZFARM_RETURN_IF_ERROR(f.Bool("tie_word_embeddings", &c->tie_word_embeddings, false));
  ZFARM_RETURN_IF_ERROR(f.Bool("attention_bias", &c->attention_bias, false));
  std::string act = "silu";
  ZFARM_RETURN_IF_ERROR(f.String("hidden_act", &act, false));
  if (act != "silu") return f.Error("hidden_act", absl::StrCat("unsupported '", act, "'"));
  if (auto s = f.Find("rope_scaling", false); s.ok() && *s != nullptr) {
    return f.Error("rope_scaling", "RoPE scaling is not supported");
  }
  return absl::OkStatus();
}

absl::Status ParseVae(const JsonFile& f, VaeConfig* c) {
  ZFARM_RETURN_IF_ERROR(f.ExpectString("_class_name", "AutoencoderKL"));
  ZFARM_RETURN_IF_ERROR(f.Int("in_channels", &c->in_channels));
  ZFARM_RETURN_IF_ERROR(f.Int("out_channels", &c->out_channels));
  ZFARM_RETURN_IF_ERROR(f.Int("latent_channels", &c->latent_channels));
  ZFARM_RETURN_IF_ERROR(f.IntArray("block_out_channels", &c->block_out_channels));
  ZFARM_RETURN_IF_ERROR(f.Int("layers_per_block", &c->layers_per_block));
  ZFARM_RETURN_IF_ERROR(f.Int("norm_num_groups", &c->norm_num_groups));
  ZFARM_RETURN_IF_ERROR(f.Double("scaling_factor", &c->scaling_factor));
  ZFARM_RETURN_IF_ERROR(f.Double("shift_factor", &c->shift_factor));
  ZFARM_RETURN_IF_ERROR(f.Bool("use_quant_conv", &c->use_quant_conv, false));
  ZFARM_RETURN_IF_ERROR(f.Bool("use_post_quant_conv", &c->use_post_quant_conv, false));
  ZFARM_RETURN_IF_ERROR(f.Bool("mid_block_add_attention", &c->mid_block_add_attention, false));
  std::string act = "silu";
  ZFARM_RETURN_IF_ERROR(f.String("act_fn", &act, false));
  if (act != "silu") return f.Error("act_fn", absl::StrCat("unsupported '", act, "'"));
  return absl::OkStatus();
}

absl::Status ParseScheduler(const JsonFile& f, SchedulerConfig* c) {
  ZFARM_RETURN_IF_ERROR(f.ExpectString("_class_name", "FlowMatchEulerDiscreteScheduler"));
  ZFARM_RETURN_IF_ERROR(f.Int("num_train_timesteps", &c->num_train_timesteps));
  ZFARM_RETURN_IF_ERROR(f.Double("shift", &c->shift));
  ZFARM_RETURN_IF_ERROR(f.Bool("use_dynamic_shifting", &c->use_dynamic_shifting, false));
  ZFARM_RETURN_IF_ERROR(f.Double("base_shift", &c->base_shift, false));
  ZFARM_RETURN_IF_ERROR(f.Double("max_shift", &c->max_shift, false));
  ZFARM_RETURN_IF_ERROR(f.Int("base_image_seq_len", &c->base_image_seq_len, false));
  ZFARM_RETURN_IF_ERROR(f.Int("max_image_seq_len", &c->max_image_seq_len, false));
  // Options current diffusers writes out with their defaults; other values change the
  // schedule, which is not implemented.
  for (const char* key : {"use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas",
                          "invert_sigmas", "stochastic_sampling"}) {
    bool on = false;
    ZFARM_RETURN_IF_ERROR(f.Bool(key, &on, false));
    if (on) return f.Error(key, "only false is supported");
  }
  if (auto t = f.Find("shift_terminal", false); t.ok() && *t != nullptr) {
    return f.Error("shift_terminal", absl::StrCat("only null is supported, got ", (*t)->dump()));
  }
  return absl::OkStatus();
}

absl::Status Check(bool ok, const std::string& file, std::string_view key, std::string_view what) {
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(file, ": key '", Sv(key), "': ", Sv(what)));
}

}  // namespace

// A list of independent checks, one per config field, in the configs' order.
absl::Status ValidateModelConfig(const ModelConfig& m) {
  const std::string tf = m.root + "/transformer/config.json";
  const TransformerConfig& t = m.transformer;
  ZFARM_RETURN_IF_ERROR(Check(t.dim > 0, tf, "dim", "must be positive"));
  ZFARM_RETURN_IF_ERROR(
      Check(t.n_heads > 0 && t.dim % t.n_heads == 0, tf, "n_heads",
            absl::StrCat("dim ", t.dim, " is not divisible by n_heads ", t.n_heads)));
  ZFARM_RETURN_IF_ERROR(Check(t.in_channels > 0, tf, "in_channels", "must be positive"));
  ZFARM_RETURN_IF_ERROR(Check(t.n_layers > 0, tf, "n_layers", "must be positive"));
  ZFARM_RETURN_IF_ERROR(Check(t.n_refiner_layers >= 0, tf, "n_refiner_layers", "must be >= 0"));
  ZFARM_RETURN_IF_ERROR(Check(t.cap_feat_dim > 0, tf, "cap_feat_dim", "must be positive"));
  ZFARM_RETURN_IF_ERROR(Check(t.patch_size > 0, tf, "all_patch_size", "must be positive"));
  ZFARM_RETURN_IF_ERROR(Check(t.f_patch_size > 0, tf, "all_f_patch_size", "must be positive"));
  ZFARM_RETURN_IF_ERROR(Check(t.axes_dims.size() == 3, tf, "axes_dims", "must have 3 entries"));
  ZFARM_RETURN_IF_ERROR(Check(t.axes_lens.size() == t.axes_dims.size(), tf, "axes_lens",
                              "must have as many entries as axes_dims"));
  int64_t sum = 0;
  for (int64_t d : t.axes_dims) {
    ZFARM_RETURN_IF_ERROR(
        Check(d > 0 && d % 2 == 0, tf, "axes_dims", "entries must be positive and even"));
    sum += d;
  }
  for (int64_t d : t.axes_lens)
    ZFARM_RETURN_IF_ERROR(Check(d > 0, tf, "axes_lens", "must be positive"));
  if (t.n_heads > 0 && t.dim % t.n_heads == 0) {
    ZFARM_RETURN_IF_ERROR(
        Check(sum == t.head_dim(), tf, "axes_dims",
              absl::StrCat("sum ", sum, " != head_dim ", t.head_dim(), " (dim / n_heads)")));
  }
  ZFARM_RETURN_IF_ERROR(Check(
      t.cap_feat_dim == m.text_encoder.hidden_size, tf, "cap_feat_dim",
      absl::StrCat(t.cap_feat_dim, " != text_encoder hidden_size ", m.text_encoder.hidden_size)));
  ZFARM_RETURN_IF_ERROR(
      Check(t.in_channels == m.vae.latent_channels, tf, "in_channels",
            absl::StrCat(t.in_channels, " != vae latent_channels ", m.vae.latent_channels)));

  const std::string ef = m.root + "/text_encoder/config.json";
  const TextEncoderConfig& e = m.text_encoder;
  ZFARM_RETURN_IF_ERROR(Check(e.vocab_size > 0, ef, "vocab_size", "must be positive"));
  ZFARM_RETURN_IF_ERROR(Check(e.hidden_size > 0, ef, "hidden_size", "must be positive"));
  ZFARM_RETURN_IF_ERROR(Check(e.num_hidden_layers >= 2, ef, "num_hidden_layers",
                              "must be >= 2 (Z-Image uses hidden_states[-2])"));
  ZFARM_RETURN_IF_ERROR(
      Check(e.num_attention_heads > 0, ef, "num_attention_heads", "must be positive"));
  ZFARM_RETURN_IF_ERROR(
      Check(e.num_key_value_heads > 0 && e.num_attention_heads % e.num_key_value_heads == 0, ef,
            "num_key_value_heads",
            absl::StrCat("num_attention_heads ", e.num_attention_heads,
                         " is not a multiple of num_key_value_heads ", e.num_key_value_heads)));
  ZFARM_RETURN_IF_ERROR(
      Check(e.head_dim > 0 && e.head_dim % 2 == 0, ef, "head_dim", "must be positive and even"));
  ZFARM_RETURN_IF_ERROR(
      Check(e.intermediate_size > 0, ef, "intermediate_size", "must be positive"));
  ZFARM_RETURN_IF_ERROR(Check(e.rms_norm_eps > 0, ef, "rms_norm_eps", "must be positive"));

  const std::string vf = m.root + "/vae/config.json";
  const VaeConfig& v = m.vae;
  ZFARM_RETURN_IF_ERROR(Check(v.latent_channels > 0, vf, "latent_channels", "must be positive"));
  ZFARM_RETURN_IF_ERROR(
      Check(v.in_channels > 0 && v.out_channels > 0, vf, "out_channels", "must be positive"));
  ZFARM_RETURN_IF_ERROR(Check(v.layers_per_block > 0, vf, "layers_per_block", "must be positive"));
  ZFARM_RETURN_IF_ERROR(Check(v.norm_num_groups > 0, vf, "norm_num_groups", "must be positive"));
  for (int64_t ch : v.block_out_channels) {
    ZFARM_RETURN_IF_ERROR(Check(
        ch > 0 && ch % v.norm_num_groups == 0, vf, "block_out_channels",
        absl::StrCat(ch, " is not a positive multiple of norm_num_groups ", v.norm_num_groups)));
  }
  ZFARM_RETURN_IF_ERROR(Check(v.scaling_factor != 0, vf, "scaling_factor", "must not be 0"));

  const std::string sf = m.root + "/scheduler/scheduler_config.json";
  ZFARM_RETURN_IF_ERROR(
      Check(m.scheduler.num_train_timesteps > 0, sf, "num_train_timesteps", "must be positive"));
  ZFARM_RETURN_IF_ERROR(Check(m.scheduler.shift > 0, sf, "shift", "must be positive"));
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir) {
  ModelConfig m;
  m.root = dir;
  while (m.root.size() > 1 && m.root.back() == '/') m.root.pop_back();
  ZFARM_ASSIGN_OR_RETURN(JsonFile index, JsonFile::Load(m.root + "/model_index.json"));
  ZFARM_RETURN_IF_ERROR(CheckModelIndex(index));
  ZFARM_ASSIGN_OR_RETURN(JsonFile tf, JsonFile::Load(m.root + "/transformer/config.json"));
  ZFARM_RETURN_IF_ERROR(ParseTransformer(tf, &m.transformer));
  ZFARM_ASSIGN_OR_RETURN(JsonFile ef, JsonFile::Load(m.root + "/text_encoder/config.json"));
  ZFARM_RETURN_IF_ERROR(ParseTextEncoder(ef, &m.text_encoder));
  ZFARM_ASSIGN_OR_RETURN(JsonFile vf, JsonFile::Load(m.root + "/vae/config.json"));
  ZFARM_RETURN_IF_ERROR(ParseVae(vf, &m.vae));
  ZFARM_ASSIGN_OR_RETURN(JsonFile sf, JsonFile::Load(m.root + "/scheduler/scheduler_config.json"));
  ZFARM_RETURN_IF_ERROR(ParseScheduler(sf, &m.scheduler));
  m.tokenizer_json_path = m.root + "/tokenizer/tokenizer.json";
  ZFARM_RETURN_IF_ERROR(ValidateModelConfig(m));
  return m;
}

std::string_view StripModelPrefix(std::string_view name) {
  if (name.substr(0, 6) == "model.") name.remove_prefix(6);
  return name;
}

const TensorInfo* FindTextEncoderTensor(const WeightSet& weights, std::string_view name) {
  name = StripModelPrefix(name);
  if (const TensorInfo* t = weights.Find(name)) return t;
  return weights.Find(absl::StrCat("model.", Sv(name)));
}

absl::StatusOr<TensorView> GetTextEncoderTensor(const WeightSet& weights, std::string_view name) {
  name = StripModelPrefix(name);
  auto v = weights.Get(name);
  if (v.ok()) return v;
  auto p = weights.Get(absl::StrCat("model.", Sv(name)));
  if (p.ok()) return p;
  return absl::NotFoundError(absl::StrCat(v.status().message(), " (nor 'model.", Sv(name), "')"));
}

namespace {

std::string Join(const std::vector<int64_t>& v) { return absl::StrCat("[", absl::StrJoin(v, ", "), "]"); }

// Indices N of the keys "<prefix>N.<anything>" (sorted).
std::vector<int64_t> BlockIndices(const WeightSet& ws, std::string_view prefix) {
  std::set<int64_t> found;
  for (const std::string& name : ws.Names()) {
    if (!absl::StartsWith(name, Sv(prefix))) continue;
    const std::string_view rest = std::string_view(name).substr(prefix.size());
    const size_t dot = rest.find('.');
    int64_t i = 0;
    if (dot != std::string_view::npos && absl::SimpleAtoi(Sv(rest.substr(0, dot)), &i)) {
      found.insert(i);
    }
  }
  return std::vector<int64_t>(found.begin(), found.end());
}

bool AllZero(const TensorView& v) {
  std::vector<float> buf(static_cast<size_t>(v.info->numel()));
  ConvertToF32(v, buf.data());
  for (float x : buf) {
    if (x != 0.0f) return false;
  }
  return true;
}

// The parts of a ControlNet config that the weights and the DiT must agree with.
absl::Status CheckControlNet(const ControlNetConfig& c, const TransformerConfig& dit,
                             const std::string& where) {
  auto bad = [&](std::string_view key, const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": key '", Sv(key), "': ", what));
  };
  if (c.control_layers_places.empty() || c.control_layers_places[0] != 0) {
    return bad("control_layers_places",
               absl::StrCat(Join(c.control_layers_places), " must start with layer 0"));
  }
  for (int64_t p : c.control_layers_places) {
    if (p < 0 || p >= dit.n_layers) {
      return bad("control_layers_places", absl::StrCat("place ", p, " is outside the DiT's ",
                                                       dit.n_layers, " layers"));
    }
  }
  for (int64_t p : c.control_refiner_layers_places) {
    if (p < 0 || p >= dit.n_refiner_layers) {
      return bad("control_refiner_layers_places",
                 absl::StrCat("place ", p, " is outside the DiT's ", dit.n_refiner_layers,
                              " noise refiner blocks"));
    }
  }
  if (c.control_in_dim < 1 || c.control_in_dim > 4 * dit.in_channels) {
    return bad("control_in_dim", absl::StrCat(c.control_in_dim, " is outside 1..",
                                              4 * dit.in_channels));
  }
  const int64_t hints = c.layout == ControlNetConfig::Layout::kUnion20
                            ? static_cast<int64_t>(c.control_layers_places.size())
                            : c.n_refiner_layers;
  if (c.layout != ControlNetConfig::Layout::kUnion &&
      static_cast<int64_t>(c.control_refiner_layers_places.size()) > hints) {
    return bad("control_refiner_layers_places",
               absl::StrCat(Join(c.control_refiner_layers_places), " needs more hints than the ",
                            hints, " the ", ControlNetLayoutName(c.layout), " layout makes"));
  }
  if (c.layout != ControlNetConfig::Layout::kUnion20 && c.n_refiner_layers < 1) {
    return bad("n_refiner_layers", absl::StrCat(c.n_refiner_layers, " must be >= 1"));
  }
  return absl::OkStatus();
}

absl::StatusOr<ControlNetConfig> ControlNetFromFolder(const std::string& dir,
                                                      const TransformerConfig& dit) {
  ZFARM_ASSIGN_OR_RETURN(JsonFile f, JsonFile::Load(dir + "/config.json"));
  ZFARM_RETURN_IF_ERROR(f.ExpectString("_class_name", "ZImageControlNetModel"));
  static const std::set<std::string> kKnown = {
      "control_layers_places", "control_refiner_layers_places", "control_in_dim",
      "add_control_noise_refiner", "all_patch_size", "all_f_patch_size", "dim",
      "n_refiner_layers", "n_heads", "n_kv_heads", "norm_eps", "qk_norm"};
  for (auto it = f.json().begin(); it != f.json().end(); ++it) {
    if (!absl::StartsWith(it.key(), "_") && kKnown.count(it.key()) == 0) {
      return f.Error(it.key(), "unknown ZImageControlNetModel setting");
    }
  }
  ControlNetConfig c;
  c.source = f.path();
  ZFARM_RETURN_IF_ERROR(f.IntArray("control_layers_places", &c.control_layers_places));
  ZFARM_ASSIGN_OR_RETURN(const Json* rp, f.Find("control_refiner_layers_places", false));
  if (rp != nullptr && !(rp->is_array() && rp->empty())) {
    ZFARM_RETURN_IF_ERROR(
        f.IntArray("control_refiner_layers_places", &c.control_refiner_layers_places));
  }
  ZFARM_RETURN_IF_ERROR(f.Int("control_in_dim", &c.control_in_dim));
  ZFARM_RETURN_IF_ERROR(f.Int("n_refiner_layers", &c.n_refiner_layers, false));
  ZFARM_ASSIGN_OR_RETURN(const Json* mode, f.Find("add_control_noise_refiner", false));
  if (mode == nullptr) {
    c.layout = ControlNetConfig::Layout::kUnion;
  } else if (*mode == "control_layers") {
    c.layout = ControlNetConfig::Layout::kUnion20;
  } else if (*mode == "control_noise_refiner") {
    c.layout = ControlNetConfig::Layout::kUnion21;
  } else {
    return f.Error("add_control_noise_refiner",
                   absl::StrCat("unknown value ", mode->dump(),
                                " (expected null, \"control_layers\" or \"control_noise_refiner\")"));
  }
  // The sizes it shares with the DiT (the base model's transformer/config.json).
  auto same_int = [&](std::string_view key, int64_t want) -> absl::Status {
    int64_t got = want;
    ZFARM_RETURN_IF_ERROR(f.Int(key, &got, false));
    if (got != want) {
      return f.Error(key, absl::StrCat(got, " differs from the DiT's ", want,
                                       " (a ControlNet for another base model)"));
    }
    return absl::OkStatus();
  };
  ZFARM_RETURN_IF_ERROR(same_int("dim", dit.dim));
  ZFARM_RETURN_IF_ERROR(same_int("n_heads", dit.n_heads));
  ZFARM_RETURN_IF_ERROR(same_int("n_kv_heads", dit.n_kv_heads));
  double eps = dit.norm_eps;
  ZFARM_RETURN_IF_ERROR(f.Double("norm_eps", &eps, false));
  if (eps != dit.norm_eps) {
    return f.Error("norm_eps", absl::StrCat(eps, " differs from the DiT's ", dit.norm_eps));
  }
  bool qk = dit.qk_norm;
  ZFARM_RETURN_IF_ERROR(f.Bool("qk_norm", &qk, false));
  if (qk != dit.qk_norm) return f.Error("qk_norm", "differs from the DiT's");
  for (const auto& [key, want] : {std::pair<const char*, int64_t>{"all_patch_size", dit.patch_size},
                                  {"all_f_patch_size", dit.f_patch_size}}) {
    std::vector<int64_t> v = {want};
    ZFARM_RETURN_IF_ERROR(f.IntArray(key, &v, false));
    if (v.size() != 1 || v[0] != want) {
      return f.Error(key, absl::StrCat(Join(v), " differs from the DiT's [", want, "]"));
    }
  }
  ZFARM_RETURN_IF_ERROR(CheckControlNet(c, dit, f.path()));
  return c;
}

absl::StatusOr<ControlNetConfig> ControlNetFromFile(const std::string& path,
                                                    const TransformerConfig& dit) {
  ZFARM_ASSIGN_OR_RETURN(auto ws, WeightSet::OpenFile(path));
  ControlNetConfig c;
  c.source = absl::StrCat(path, " (layout from its keys)");
  const std::string embed =
      absl::StrCat("control_all_x_embedder.", dit.patch_size, "-", dit.f_patch_size, ".weight");
  const TensorInfo* e = ws->Find(embed);
  const int64_t patch = dit.patch_size * dit.patch_size * dit.f_patch_size;
  if (e == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": no tensor '", embed, "': not a Z-Image ControlNet for this model's patch size"));
  }
  if (e->shape.size() != 2 || e->shape[0] != dit.dim || e->shape[1] % patch != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": tensor '", embed, "' has shape ", Join(e->shape), ", expected [",
                     dit.dim, ", ", patch, " x channels] (a ControlNet for another base model)"));
  }
  c.control_in_dim = e->shape[1] / patch;
  const std::vector<int64_t> layers = BlockIndices(*ws, "control_layers.");
  const std::vector<int64_t> refiner = BlockIndices(*ws, "control_noise_refiner.");
  const int64_t k = static_cast<int64_t>(layers.size());
  if (k == 0 || layers.back() != k - 1 || dit.n_layers % k != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": control_layers.N blocks ", Join(layers), " are not 0..K-1 with K dividing the DiT's ",
        dit.n_layers, " layers"));
  }
  for (int64_t i = 0; i < k; ++i) c.control_layers_places.push_back(i * (dit.n_layers / k));
  const bool two = c.control_in_dim != dit.in_channels ||
                   ws->Find("control_layers.14.adaLN_modulation.0.weight") != nullptr;
  if (!two) {
    c.layout = ControlNetConfig::Layout::kUnion;
    c.n_refiner_layers = static_cast<int64_t>(refiner.size());
  } else {
    for (int64_t i = 0; i < dit.n_refiner_layers; ++i) c.control_refiner_layers_places.push_back(i);
    auto before = ws->Get("control_noise_refiner.0.before_proj.weight");
    if (!before.ok() || AllZero(*before)) {
      c.layout = ControlNetConfig::Layout::kUnion20;
      c.n_refiner_layers = dit.n_refiner_layers;
    } else {
      c.layout = ControlNetConfig::Layout::kUnion21;
      c.n_refiner_layers = static_cast<int64_t>(refiner.size());
      c.control_refiner_layers_places.resize(
          std::min<size_t>(c.control_refiner_layers_places.size(), refiner.size()));
    }
  }
  ZFARM_RETURN_IF_ERROR(CheckControlNet(c, dit, path));
  return c;
}

}  // namespace

const char* ControlNetLayoutName(ControlNetConfig::Layout layout) {
  switch (layout) {
    case ControlNetConfig::Layout::kUnion:
      return "1.0";
    case ControlNetConfig::Layout::kUnion20:
      return "2.0";
    case ControlNetConfig::Layout::kUnion21:
      return "2.1";
  }
  return "?";
}

absl::StatusOr<ControlNetConfig> ReadControlNetConfig(const std::string& path,
                                                      const TransformerConfig& dit) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) return ControlNetFromFolder(path, dit);
  if (!std::filesystem::exists(path, ec)) {
    return absl::NotFoundError(absl::StrCat("controlnet ", path, ": no such file or folder"));
  }
  return ControlNetFromFile(path, dit);
}

std::string ControlNetName(const std::string& path) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  std::string name = std::filesystem::path(p).filename().string();
  if (absl::EndsWith(name, ".safetensors")) name.resize(name.size() - 12);
  return name;
}

absl::StatusOr<std::unique_ptr<WeightSet>> OpenControlNetWeights(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) return WeightSet::Open(path);
  return WeightSet::OpenFile(path);
}

}  // namespace zfarm::worker
