#include "worker/model/fp8_cache.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "proto/base/status_macros.h"
#include "worker/io/safetensors.h"
#include "worker/io/weights_cache.h"
#include "worker/model/fp8.h"

namespace zfarm::worker::model {
namespace {

constexpr std::string_view kWeight = ".weight";
constexpr std::string_view kScale = "_scale";

// The recipe's layer of a checkpoint key ("layers.0.feed_forward.w2.weight"), or "".
std::string Fp8LayerOf(const std::string& name, const TensorInfo& info) {
  if (!name.ends_with(kWeight) || info.shape.size() != 2) return "";
  std::string layer = name.substr(0, name.size() - kWeight.size());
  return Fp8Selected(layer) ? layer : "";
}

absl::Status Append(SafetensorsStreamWriter& out, const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  return out.Append(std::string_view(static_cast<const char*>(c.data_ptr()),
                                     static_cast<size_t>(c.numel()) * c.element_size()));
}

}  // namespace

absl::StatusOr<std::string> WriteFp8Cache(const std::string& cache_root,
                                          const std::string& component_dir) {
  WeightsCacheContent fp8;
  fp8.plan = [](const WeightSet& ws) -> absl::StatusOr<std::vector<TensorSpec>> {
    std::vector<TensorSpec> specs;
    for (const std::string& name : ws.Names()) {
      const TensorInfo& info = *ws.Find(name);
      if (Fp8LayerOf(name, info).empty()) {
        specs.push_back({name, DType::kBF16, info.shape});
      } else {  // the scale right after its weight: write() quantizes once for both
        specs.push_back({name, DType::kF8E4M3, info.shape});
        specs.push_back({name + std::string(kScale), DType::kF32, {info.shape[0]}});
      }
    }
    return specs;
  };
  QuantizedWeight last;
  std::vector<uint16_t> buf;
  fp8.write = [&](const WeightSet& ws, const TensorSpec& spec,
                  SafetensorsStreamWriter& out) -> absl::Status {
    if (spec.dtype == DType::kF32) return Append(out, last.scale);  // the scale of `last`
    ZFARM_ASSIGN_OR_RETURN(TensorView v, ws.Get(spec.name));
    buf.resize(static_cast<size_t>(v.info->numel()));
    ConvertToBF16(v, buf.data());
    if (spec.dtype == DType::kBF16) {
      return out.Append(std::string_view(reinterpret_cast<const char*>(buf.data()),
                                         buf.size() * sizeof(uint16_t)));
    }
    try {
      at::NoGradGuard no_grad;
      last = QuantizeWeight(at::from_blob(buf.data(), spec.shape, at::kBFloat16));
    } catch (const c10::Error& e) {
      return absl::InternalError(
          absl::StrCat("fp8 cache: quantizing '", spec.name, "': ", e.what_without_backtrace()));
    }
    return Append(out, last.data);
  };
  return WriteWeightsCache(cache_root, component_dir, kFp8CacheKind, fp8);
}

}  // namespace zfarm::worker::model
