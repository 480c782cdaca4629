#include "scheduler/validation.h"

#include <cmath>
#include <set>
#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "proto/base/files.h"
#include "proto/base/job_defaults.h"
#include "proto/base/picture_size.h"
#include "proto/base/plain_name.h"
#include "proto/base/status_macros.h"

namespace zfarm::scheduler {
namespace {

using ::zfarm::base::kDefaultSizePx;
using ::zfarm::base::kDefaultSteps;
using ::zfarm::base::kDefaultStrength;
using ::zfarm::base::PlainNameProblem;

absl::Status Invalid(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

absl::Status CheckSize(const Limits& l, const std::string& field, int32_t* v) {
  if (*v == 0) *v = kDefaultSizePx;
  if (*v < l.min_size_px || *v > l.max_size_px || *v % base::kPictureSideMultiple != 0) {
    return Invalid(field, absl::StrCat(*v, " is outside the allowed sizes (multiples of 16 in [",
                                       l.min_size_px, ", ", l.max_size_px, "])"));
  }
  return absl::OkStatus();
}

// One ImageInput as far as no I/O is needed (see ValidateAndNormalizeSpec).
absl::Status CheckImageInput(const Limits& l, const std::string& f,
                             const zfarm::v1::ImageInput& in) {
  using zfarm::v1::ImageInput;
  switch (in.source_case()) {
    case ImageInput::kData:
      if (in.data().empty()) return Invalid(f + ".data", "must not be empty");
      if (static_cast<int64_t>(in.data().size()) > l.max_input_bytes) {
        return Invalid(f + ".data", absl::StrCat(FormatMiB(in.data().size()),
                                                 " is over --max-input-bytes (",
                                                 FormatMiB(l.max_input_bytes), ")"));
      }
      return absl::OkStatus();
    case ImageInput::kPath:
      if (in.path().empty()) return Invalid(f + ".path", "must not be empty");
      if (static_cast<int>(in.path().size()) > l.max_input_path_bytes) {
        return Invalid(f + ".path", absl::StrCat(in.path().size(), " bytes exceeds the limit of ",
                                                 l.max_input_path_bytes, " bytes"));
      }
      if (!IsValidUtf8(in.path())) return Invalid(f + ".path", "is not valid UTF-8");
      return absl::OkStatus();
    case ImageInput::kSha256: {
      bool hex = in.sha256().size() == 64;
      for (char c : in.sha256()) hex &= (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
      if (!hex) return Invalid(f + ".sha256", "must be 64 lower-case hex digits");
      return absl::OkStatus();
    }
    case ImageInput::SOURCE_NOT_SET:
      break;
  }
  return Invalid(f, "set data (PNG or JPEG bytes) or path (under --input-root)");
}

// JobSpec.control: the picture like init_image's, the scale and the step fractions.
absl::Status CheckControl(const Limits& l, const std::string& f, const zfarm::v1::JobSpec& spec) {
  const zfarm::v1::ControlInput& c = spec.control();
  if (!c.has_image()) {
    return Invalid(f + ".image", "is required (the control picture: PNG or JPEG data or a path)");
  }
  ZFARM_RETURN_IF_ERROR(CheckImageInput(l, f + ".image", c.image()));
  if (c.has_conditioning_scale()) {
    const float s = c.conditioning_scale();
    if (!std::isfinite(s) || s < 0 || s > kMaxControlScale) {
      return Invalid(f + ".conditioning_scale",
                     absl::StrCat(s, " is outside [0, ", kMaxControlScale, "]"));
    }
  }
  const float start = c.has_start() ? c.start() : 0.0f, end = c.has_end() ? c.end() : 1.0f;
  if (!std::isfinite(start) || !std::isfinite(end) || start < 0 || end > 1 || start >= end) {
    return Invalid(f + ".start", absl::StrCat("start ", start, " and end ", end,
                                              " must satisfy 0 <= start < end <= 1"));
  }
  if (spec.has_init_image() && !spec.has_mask_image()) {
    return Invalid(f, "with init_image needs mask_image (ControlNet inpainting); image-to-image "
                      "with a ControlNet is not supported");
  }
  return absl::OkStatus();
}

absl::Status CheckLoras(const Limits& l, const std::string& f, zfarm::v1::JobSpec* spec) {
  if (spec->loras_size() > l.max_loras) {
    return Invalid(f + ".loras", absl::StrCat(spec->loras_size(), " LoRAs exceeds the limit of ",
                                              l.max_loras));
  }
  std::set<std::string> seen;
  for (int i = 0; i < spec->loras_size(); ++i) {
    const zfarm::v1::LoraRef& lora = spec->loras(i);
    const std::string fi = absl::StrCat(f, ".loras[", i, "]");
    if (lora.name().empty()) return Invalid(fi + ".name", "must not be empty");
    if (std::string why = PlainNameProblem(lora.name()); !why.empty()) {
      return Invalid(fi + ".name", why);
    }
    if (!IsValidUtf8(lora.name())) return Invalid(fi + ".name", "is not valid UTF-8");
    if (!seen.insert(lora.name()).second) {
      return Invalid(fi + ".name", absl::StrCat("\"", lora.name(),
                                                "\" appears twice (each LoRA at most once)"));
    }
    if (lora.has_scale()) {
      float s = lora.scale();
      if (!std::isfinite(s) || s < -l.max_lora_scale || s > l.max_lora_scale) {
        return Invalid(fi + ".scale", absl::StrCat(s, " is outside [", -l.max_lora_scale, ", ",
                                                   l.max_lora_scale, "]"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::string FormatMiB(int64_t bytes) {
  if (bytes % (1 << 20) == 0) return absl::StrCat(bytes >> 20, " MiB");
  return absl::StrFormat("%.1f MiB", static_cast<double>(bytes) / (1 << 20));
}

bool IsValidUtf8(const std::string& s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t n = s.size(), i = 0;
  while (i < n) {
    unsigned c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    int len;
    uint32_t cp;
    if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > n) return false;
    for (int k = 1; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      return false;
    }
    i += len;
  }
  return true;
}

absl::Status ValidateAndNormalizeSpec(const Limits& l, const std::string& f,
                                      zfarm::v1::JobSpec* spec) {
  if (spec->prompt().empty()) return Invalid(f + ".prompt", "must not be empty");
  if (static_cast<int>(spec->prompt().size()) > l.max_prompt_bytes) {
    return Invalid(f + ".prompt",
                   absl::StrCat(spec->prompt().size(), " bytes exceeds the limit of ",
                                l.max_prompt_bytes, " bytes"));
  }
  if (!IsValidUtf8(spec->prompt())) return Invalid(f + ".prompt", "is not valid UTF-8");
  if (static_cast<int>(spec->negative_prompt().size()) > l.max_prompt_bytes) {
    return Invalid(f + ".negative_prompt",
                   absl::StrCat(spec->negative_prompt().size(), " bytes exceeds the limit of ",
                                l.max_prompt_bytes, " bytes"));
  }
  if (!IsValidUtf8(spec->negative_prompt())) {
    return Invalid(f + ".negative_prompt", "is not valid UTF-8");
  }
  int32_t w = spec->width_px(), h = spec->height_px();
  if (auto s = CheckSize(l, f + ".width_px", &w); !s.ok()) return s;
  if (auto s = CheckSize(l, f + ".height_px", &h); !s.ok()) return s;
  spec->set_width_px(w);
  spec->set_height_px(h);
  if (spec->steps() == 0) spec->set_steps(kDefaultSteps);
  if (spec->steps() < l.min_steps || spec->steps() > l.max_steps) {
    return Invalid(f + ".steps", absl::StrCat(spec->steps(), " is outside [", l.min_steps, ", ",
                                              l.max_steps, "]"));
  }
  float g = spec->guidance_scale();
  if (!std::isfinite(g) || g < 0 || g > l.max_guidance) {
    return Invalid(f + ".guidance_scale", absl::StrCat(g, " is outside [0, ", l.max_guidance, "]"));
  }
  const std::string& name = spec->output_name();
  if (std::string why = PlainNameProblem(name, static_cast<size_t>(l.max_output_name_bytes));
      !why.empty()) {
    return Invalid(f + ".output_name", why);
  }
  if (!IsValidUtf8(name)) return Invalid(f + ".output_name", "is not valid UTF-8");
  if (spec->priority() < l.min_priority || spec->priority() > l.max_priority) {
    return Invalid(f + ".priority", absl::StrCat(spec->priority(), " is outside [", l.min_priority,
                                                 ", ", l.max_priority, "]"));
  }
  if (static_cast<int>(spec->labels_size()) > l.max_labels) {
    return Invalid(f + ".labels", absl::StrCat(spec->labels_size(), " labels exceeds the limit of ",
                                               l.max_labels));
  }
  for (const auto& [k, v] : spec->labels()) {
    if (k.empty() || static_cast<int>(k.size()) > l.max_label_bytes ||
        static_cast<int>(v.size()) > l.max_label_bytes || k.find('=') != std::string::npos ||
        !IsValidUtf8(k) || !IsValidUtf8(v)) {
      return Invalid(f + ".labels", absl::StrCat("label \"", absl::CHexEscape(k.substr(0, 64)),
                                                 "\": keys must be 1..", l.max_label_bytes,
                                                 " bytes of UTF-8 without '=', values at most ",
                                                 l.max_label_bytes, " bytes of UTF-8"));
    }
  }
  if (spec->has_deadline() && (spec->deadline().seconds() <= 0 || spec->deadline().nanos() < 0 ||
                               spec->deadline().nanos() > 999'999'999)) {
    return Invalid(f + ".deadline", "must be a valid positive timestamp");
  }
  if (!spec->webhook_url().empty()) {
    if (!l.webhook_validator) {
      return Invalid(f + ".webhook_url",
                     "webhooks are not enabled on this scheduler (allow-list is empty)");
    }
    if (absl::Status s = l.webhook_validator(spec->webhook_url()); !s.ok()) {
      std::string msg(s.message());
      // The sender's messages start with "webhook_url: "; name the full field.
      if (msg.rfind("webhook_url: ", 0) == 0) msg = msg.substr(13);
      return Invalid(f + ".webhook_url", msg);
    }
  }
  if (static_cast<int>(spec->model().size()) > 128) {
    return Invalid(f + ".model", "exceeds the limit of 128 bytes");
  }
  if (!zfarm::v1::OutputFormat_IsValid(spec->output_format())) {
    return Invalid(f + ".output_format",
                   absl::StrCat(spec->output_format(), " is not a known format (png, jpeg, webp)"));
  }
  if (spec->quality() != 0) {
    if (spec->output_format() != zfarm::v1::OUTPUT_FORMAT_JPEG &&
        spec->output_format() != zfarm::v1::OUTPUT_FORMAT_WEBP) {
      return Invalid(f + ".quality", "applies to jpeg and webp only (png is lossless; leave it 0)");
    }
    if (spec->quality() < 1 || spec->quality() > 100) {
      return Invalid(f + ".quality", absl::StrCat(spec->quality(), " is outside [1, 100]"));
    }
  }
  if (spec->has_init_image()) {
    ZFARM_RETURN_IF_ERROR(CheckImageInput(l, f + ".init_image", spec->init_image()));
  }
  if (spec->has_mask_image()) {
    if (!spec->has_init_image()) {
      return Invalid(f + ".mask_image",
                     "needs init_image (inpainting repaints the mask's white part of it)");
    }
    ZFARM_RETURN_IF_ERROR(CheckImageInput(l, f + ".mask_image", spec->mask_image()));
  }
  if (spec->has_strength()) {
    float s = spec->strength();
    if (!spec->has_init_image()) {
      return Invalid(f + ".strength", "needs init_image (strength is image-to-image only)");
    }
    if (!std::isfinite(s) || s <= 0 || s > 1) {
      return Invalid(f + ".strength", absl::StrCat(s, " is outside (0, 1]"));
    }
  } else if (spec->has_init_image()) {
    spec->set_strength(kDefaultStrength);
  }
  if (spec->has_control()) ZFARM_RETURN_IF_ERROR(CheckControl(l, f + ".control", *spec));
  return CheckLoras(l, f, spec);
}

absl::Status ValidateRequestId(const Limits& l, const std::string& f, const std::string& id) {
  if (static_cast<int>(id.size()) > l.max_request_id_bytes) {
    return Invalid(f, absl::StrCat(id.size(), " bytes exceeds the limit of ",
                                   l.max_request_id_bytes, " bytes"));
  }
  for (unsigned char c : id) {
    if (c < 0x21 || c > 0x7E) return Invalid(f, "must be printable ASCII without spaces");
  }
  return absl::OkStatus();
}

absl::Status ValidateLabelSelector(const std::string& f, const std::string& label) {
  auto eq = label.find('=');
  if (eq == std::string::npos || eq == 0) return Invalid(f, "must be \"key=value\"");
  return absl::OkStatus();
}

std::string SpecFingerprint(const zfarm::v1::JobSpec& spec) {
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream raw(&bytes);
    google::protobuf::io::CodedOutputStream out(&raw);
    out.SetSerializationDeterministic(true);
    spec.SerializeToCodedStream(&out);
  }
  return base::Sha256Hex(bytes);
}

}  // namespace zfarm::scheduler
