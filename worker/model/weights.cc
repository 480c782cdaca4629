#include "worker/model/weights.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace zfarm::worker::model {
namespace {

std::string ShapeString(at::IntArrayRef s) {
  return absl::StrCat("[", absl::StrJoin(s, ", "), "]");
}

at::ScalarType TorchDType(DType d) {
  switch (d) {
    case DType::kF32:
      return at::kFloat;
    case DType::kBF16:
      return at::kBFloat16;
    case DType::kF16:
      return at::kHalf;
    case DType::kF8E4M3:
      return at::kByte;  // e4m3fn bytes: FP8 parameters are uint8 (fp8.h)
  }
  return at::kFloat;
}

absl::Status LoadImpl(torch::nn::Module& module, const WeightSet& weights, const LoadSpec& spec) {
  at::NoGradGuard no_grad;
  auto params = module.named_parameters(/*recurse=*/true);
  std::set<std::string> missing;
  for (const auto& p : params) missing.insert(p.key());
  for (const std::string& ckpt_name : weights.Names()) {
    const std::string name = spec.key_map ? spec.key_map(ckpt_name) : ckpt_name;
    at::Tensor* param = params.find(name);
    if (param == nullptr) {
      if (spec.ignore && spec.ignore(name)) continue;
      return absl::InvalidArgumentError(
          absl::StrCat(spec.component, ": unexpected key '", ckpt_name, "' in the checkpoint"));
    }
    const TensorInfo* info = weights.Find(ckpt_name);
    auto view_or = weights.Get(ckpt_name);
    if (!view_or.ok()) return view_or.status();
    const TensorView view = *view_or;
    if (!at::IntArrayRef(info->shape).equals(param->sizes())) {
      return absl::InvalidArgumentError(
          absl::StrCat(spec.component, ": key '", ckpt_name, "': expected shape ",
                       ShapeString(param->sizes()), ", found ", ShapeString(info->shape)));
    }
    // FP8 bytes go only into FP8 parameters (uint8, fp8.h) and nothing else does: a
    // numeric cast between them would be silently wrong.
    if ((info->dtype == DType::kF8E4M3) != (param->scalar_type() == at::kByte)) {
      return absl::InvalidArgumentError(absl::StrCat(
          spec.component, ": key '", ckpt_name, "': stored as ", std::string(DTypeName(info->dtype)),
          " but the module holds ", c10::toString(param->scalar_type()),
          " (FP8 weights load only with --precision fp8, into the layers of its recipe)"));
    }
    at::Tensor src = at::from_blob(const_cast<uint8_t*>(view.data), info->shape,
                                   at::TensorOptions().dtype(TorchDType(info->dtype)));
    // Convert on the host at the source precision's size, then one transfer.
    if (src.scalar_type() != param->scalar_type()) src = src.to(param->scalar_type());
    param->copy_(src);
    missing.erase(name);
  }
  if (!missing.empty()) {
    std::vector<std::string> first(missing.begin(), missing.end());
    const size_t n = first.size();
    if (first.size() > 5) first.resize(5);
    // The model was built from <component>/config.json: it names more weights than
    // the shards hold (e.g. n_layers larger than the checkpoint's).
    return absl::InvalidArgumentError(absl::StrCat(
        spec.component, ": ", n, " missing key(s) in the checkpoint, e.g. '",
        absl::StrJoin(first, "', '"), "' (", spec.component,
        "/config.json describes a model its weight files do not hold)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status LoadWeights(torch::nn::Module& module, const WeightSet& weights,
                         const LoadSpec& spec) {
  try {
    return LoadImpl(module, weights, spec);
  } catch (const c10::OutOfMemoryError& e) {
    return absl::ResourceExhaustedError(absl::StrCat(
        spec.component, ": out of memory while loading weights: ", e.what_without_backtrace()));
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(spec.component, ": ", e.what_without_backtrace()));
  }
}

}  // namespace zfarm::worker::model
