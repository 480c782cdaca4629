#include "worker/model/fp8.h"

#include <torch/version.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "worker/io/safetensors.h"
#include "worker/model/fused_ops.h"
#include "worker/model/modules.h"

// at::_scaled_mm(a, b, scale_a, scale_b, bias, scale_result, out_dtype, use_fast_accum) with
// row-wise scales and a Tensor (not tuple) result: torch 2.5 and later.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 5)
#define ZFARM_FP8_NATIVE 1
#endif

namespace zfarm::worker::model {
namespace {

bool Matches(std::string_view pattern, std::string_view key) {
  if (pattern.starts_with('*')) return key.ends_with(pattern.substr(1));
  if (pattern.ends_with('*')) return key.starts_with(pattern.substr(0, pattern.size() - 1));
  return key == pattern;
}

// 2^e as float32 tensors, exactly (built from the exponent bits; e within [-126, 127]).
at::Tensor PowerOfTwo(const at::Tensor& e) {
  return ((e.to(at::kInt) + 127) * (1 << 23)).view(at::kFloat);
}

// floor(log2 |a|) for a > 0 (exact, from frexp: a = m * 2^e with m in [0.5, 1)).
at::Tensor FloorLog2(const at::Tensor& a) { return std::get<1>(at::frexp(a)).to(at::kInt) - 1; }

}  // namespace

const Fp8RecipeRow* Fp8RecipeRowOf(std::string_view module_key) {
  for (const Fp8RecipeRow& row : kZImageFp8Recipe) {
    if (Matches(row.pattern, module_key)) return &row;
  }
  return nullptr;
}

bool Fp8Selected(std::string_view module_key) {
  const Fp8RecipeRow* row = Fp8RecipeRowOf(module_key);
  return row != nullptr && row->fp8;
}

namespace {

// The Linear layers of `module` the recipe selects, in module order.
std::vector<std::pair<std::string, LinearImpl*>> SelectedLinears(torch::nn::Module& module) {
  std::vector<std::pair<std::string, LinearImpl*>> out;
  for (const auto& m : module.named_modules("", /*include_self=*/false)) {
    auto* linear = dynamic_cast<LinearImpl*>(m.value().get());
    if (linear != nullptr && Fp8Selected(m.key())) out.emplace_back(m.key(), linear);
  }
  return out;
}

}  // namespace

std::vector<std::string> Fp8Layers(torch::nn::Module& module) {
  std::vector<std::string> keys;
  for (const auto& [key, linear] : SelectedLinears(module)) keys.push_back(key);
  return keys;
}

int QuantizeFp8Layers(torch::nn::Module& module) {
  at::NoGradGuard no_grad;
  auto layers = SelectedLinears(module);
  for (const auto& [key, linear] : layers) linear->ToFp8();
  return static_cast<int>(layers.size());
}

int PrepareFp8Layers(torch::nn::Module& module) {
  at::NoGradGuard no_grad;
  auto layers = SelectedLinears(module);
  for (const auto& [key, linear] : layers) linear->PrepareFp8();
  return static_cast<int>(layers.size());
}

at::Tensor RoundToE4m3(const at::Tensor& x_in) {
  at::Tensor x = x_in.to(at::kFloat).clamp(-kE4m3Max, kE4m3Max);
  at::Tensor a = x.abs();
  // The spacing of e4m3 values around a: 2^(floor(log2 a) - 3) for normals (3 mantissa
  // bits), 2^-9 for the subnormals below 2^-6. round() is half-to-even.
  at::Tensor quantum = PowerOfTwo(FloorLog2(a).clamp_min(-6) - 3);
  return at::copysign(at::round(a / quantum) * quantum, x);
}

at::Tensor EncodeE4m3(const at::Tensor& on_grid) {
  at::Tensor x = on_grid.to(at::kFloat);
  at::Tensor a = x.abs();
  at::Tensor normal = a.ge(std::ldexp(1.0, -6));
  at::Tensor e = FloorLog2(a).clamp(-6, 8);
  // Normals: exponent field e + 7, mantissa (a / 2^e - 1) * 8; subnormals: field 0,
  // mantissa a / 2^-9. Both are exact integers for values on the grid.
  at::Tensor mant = at::where(normal, (a / PowerOfTwo(e) - 1.0) * 8.0, a * 512.0);
  at::Tensor field = at::where(normal, e + 7, at::zeros_like(e));
  at::Tensor bits = field.to(at::kInt) * 8 + mant.round().to(at::kInt) +
                    at::signbit(x).to(at::kInt) * 128;
  bits = at::where(at::isnan(x), at::full_like(bits, 0x7f), bits);
  return bits.to(at::kByte);
}

at::Tensor DecodeE4m3(const at::Tensor& bytes) {
  // The value table comes from the file format's owner (worker/io), once per process.
  static const at::Tensor table = [] {
    at::Tensor t = at::empty({256}, at::kFloat);
    for (int i = 0; i < 256; ++i) t[i] = F8E4M3ToF32(static_cast<uint8_t>(i));
    return t;
  }();
  const at::Tensor flat = bytes.reshape({-1}).to(at::kLong);
  return table.to(bytes.device()).index_select(0, flat).view(bytes.sizes());
}

QuantizedWeight QuantizeWeight(const at::Tensor& w) {
  at::Tensor wf = w.to(at::kFloat);
  at::Tensor amax = wf.abs().amax({1}, /*keepdim=*/true);
  at::Tensor scale = at::where(amax.gt(0), amax / kE4m3Max, at::ones_like(amax));
  return {EncodeE4m3(RoundToE4m3(wf / scale)), scale.reshape({-1}).contiguous()};
}

at::Tensor TokenScales(const at::Tensor& x2d) {
  return x2d.abs().amax({-1}, /*keepdim=*/true).to(at::kFloat).clamp_min(kE4m3MinAmax) *
         kE4m3InvMax;
}

QuantizedActivations QuantizeActivations(const at::Tensor& x2d, bool kernel) {
  QuantizedActivations out;
  if (kernel && QuantizeE4m3Rows(x2d, &out.data, &out.scale)) return out;
  out.scale = TokenScales(x2d);
  const at::Tensor v = x2d.to(at::kFloat) / out.scale;
#ifdef ZFARM_FP8_NATIVE
  out.data = v.clamp(-kE4m3Max, kE4m3Max).to(at::kFloat8_e4m3fn).view(at::kByte);
#else
  out.data = EncodeE4m3(RoundToE4m3(v));
#endif
  return out;
}

at::Tensor Fp8Gemm(const QuantizedActivations& xq, const at::Tensor& data, const at::Tensor& scale,
                   const at::Tensor& bias, at::ScalarType out_dtype) {
  const int64_t k = xq.data.size(-1), n = data.size(0);
#ifdef ZFARM_FP8_NATIVE
  // The FP8 GEMMs need K and N multiples of 16 (every layer of the real model; not the
  // tiny test model's FFN of 170): other shapes take the reference path on the device.
  if (xq.data.is_cuda() && k % 16 == 0 && n % 16 == 0) {
    // Row-major activations [M, K] and the column-major weight (w^T of the row-major
    // [N, K] bytes), row-wise scales [M, 1] and [1, N]. Fast accumulation (the tensor
    // cores' own accumulator, without cuBLASLt's periodic promotion to fp32): measured on
    // the H200 at 1024^2, the DiT step 69.4 -> 65.6 ms with the final latents' cosine
    // against bf16 unchanged (0.99960 / 0.99956) and the GEMMs' error unchanged (3.75e-2,
    // the e4m3 rounding itself, at K = 10240).
    std::optional<at::Tensor> b;
    if (bias.defined()) b = bias.to(out_dtype);
    return at::_scaled_mm(xq.data.view(at::kFloat8_e4m3fn), data.view(at::kFloat8_e4m3fn).t(),
                          xq.scale, scale.view({1, n}), b, std::nullopt, out_dtype,
                          /*use_fast_accum=*/true);
  }
#endif
  (void)k;
  // Reference: the same quantized operands, multiplied in float32.
  at::Tensor y = at::matmul(DecodeE4m3(xq.data), DecodeE4m3(data).t()) * xq.scale *
                 scale.view({1, n}).to(at::kFloat);
  if (bias.defined()) y = y + bias.to(at::kFloat);
  return y.to(out_dtype);
}

at::Tensor Fp8Linear(const at::Tensor& x, const at::Tensor& data, const at::Tensor& scale,
                     const at::Tensor& bias) {
  std::vector<int64_t> out_shape = x.sizes().vec();
  out_shape.back() = data.size(0);
  const QuantizedActivations xq =
      QuantizeActivations(x.reshape({-1, x.size(-1)}), /*kernel=*/true);
  return Fp8Gemm(xq, data, scale, bias, x.scalar_type()).view(out_shape);
}

bool Fp8NativeBuild() {
#ifdef ZFARM_FP8_NATIVE
  return true;
#else
  return false;
#endif
}

absl::Status CheckFp8Device(const std::string& device, const std::string& name, int cc_major,
                            int cc_minor) {
  constexpr char kNeed[] =
      "--precision fp8 needs FP8 tensor cores (CUDA compute capability 8.9 or later)";
  if (!std::string_view(device).starts_with("cuda")) {
    return absl::FailedPreconditionError(
        absl::StrCat(kNeed, "; device ", device, " is a CPU (no compute capability)"));
  }
  if (cc_major * 10 + cc_minor < 89) {
    return absl::FailedPreconditionError(absl::StrCat(kNeed, "; ", device, " (", name,
                                                      ") has compute capability ", cc_major,
                                                      ".", cc_minor));
  }
  if (!Fp8NativeBuild()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--precision fp8 needs libtorch 2.5 or later (at::_scaled_mm); this build has ",
        TORCH_VERSION));
  }
  return absl::OkStatus();
}

}  // namespace zfarm::worker::model
