#include "worker/model/controlnet.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "proto/base/status_macros.h"
#include "worker/io/model_folder.h"
#include "worker/model/weights.h"

namespace zfarm::worker::model {

ControlBlockImpl::ControlBlockImpl(const TransformerConfig& c, bool first,
                                   const at::TensorOptions& o)
    : DitBlockImpl(c, /*modulated=*/true, o) {
  if (first) before_proj = register_module("before_proj", Linear(c.dim, c.dim, true, o));
  after_proj = register_module("after_proj", Linear(c.dim, c.dim, true, o));
}

at::Tensor ControlBlockImpl::Control(at::Tensor& c, const at::Tensor& x, const RopeTable& rope,
                                     const at::Tensor& adaln) {
  if (before_proj) c = before_proj(c) + x;
  c = forward(c, rope, adaln);
  return after_proj(c);
}

ControlNetImpl::ControlNetImpl(const ControlNetConfig& cc, const TransformerConfig& dit,
                               const at::TensorOptions& o)
    : cc_(cc), dit_(dit) {
  const int64_t p = dit.patch_size, pf = dit.f_patch_size;
  embedder = Sub(*this, "control_all_x_embedder")
                 ->register_module(absl::StrCat(p, "-", pf),
                                   Linear(p * p * pf * cc.control_in_dim, dit.dim, true, o));
  auto layers = Sub(*this, "control_layers");
  for (size_t i = 0; i < cc.control_layers_places.size(); ++i) {
    control_layers_.push_back(
        layers->register_module(std::to_string(i), ControlBlock(dit, i == 0, o)));
  }
  if (cc.layout == ControlNetConfig::Layout::kUnion20) return;
  auto refiner = Sub(*this, "control_noise_refiner");
  for (int64_t i = 0; i < cc.n_refiner_layers; ++i) {
    if (cc.layout == ControlNetConfig::Layout::kUnion21) {
      control_refiner_.push_back(
          refiner->register_module(std::to_string(i), ControlBlock(dit, i == 0, o)));
    } else {
      plain_refiner_.push_back(
          refiner->register_module(std::to_string(i), DitBlock(dit, true, o)));
    }
  }
}

std::vector<at::Tensor> ControlNetImpl::RunControl(std::vector<ControlBlock>& blocks,
                                                   at::Tensor& c, const at::Tensor& x,
                                                   const RopeTable& rope,
                                                   const at::Tensor& adaln) {
  std::vector<at::Tensor> hints;
  hints.reserve(blocks.size());
  for (auto& b : blocks) hints.push_back(b->Control(c, x, rope, adaln));
  return hints;
}

std::vector<at::Tensor> ControlNetImpl::forward(TransformerImpl& dit, const DitTokens& tok,
                                                const at::Tensor& refined,
                                                const at::Tensor& control,
                                                const at::Tensor& scale) {
  const int64_t np = tok.x.size(1), d = dit_.dim;
  // Control tokens: patchified like the image, embedded, pads = the DiT's x_pad_token.
  at::Tensor cc = embedder(Patchify(control, dit_.patch_size, dit_.f_patch_size));
  if (np > tok.n) cc = at::cat({cc, dit.image_pad_token().expand({np - tok.n, d})}, 0);
  cc = cc.unsqueeze(0);
  at::Tensor x = refined;
  if (cc_.layout == ControlNetConfig::Layout::kUnion) {
    for (auto& b : plain_refiner_) cc = b(cc, tok.img_rope, tok.c);
  } else {
    // The first stage on the image tokens before the noise refiner: 2.0 runs the control
    // layers here too, 2.1 its control noise refiner. Its hints go into the ControlNet's own
    // pass of the DiT's noise refiner.
    std::vector<ControlBlock>& first =
        cc_.layout == ControlNetConfig::Layout::kUnion20 ? control_layers_ : control_refiner_;
    std::vector<at::Tensor> hints = RunControl(first, cc, tok.x, tok.img_rope, tok.c);
    std::vector<at::Tensor> refiner_hints(static_cast<size_t>(dit_.n_refiner_layers));
    for (size_t j = 0; j < cc_.control_refiner_layers_places.size(); ++j) {
      refiner_hints[cc_.control_refiner_layers_places[j]] = hints[j] * scale;
    }
    x = dit.RefineImage(tok, &refiner_hints);
  }
  at::Tensor cu = at::cat({cc, tok.y}, 1);
  const at::Tensor u = at::cat({x, tok.y}, 1);
  std::vector<at::Tensor> hints = RunControl(control_layers_, cu, u, tok.rope, tok.c);
  std::vector<at::Tensor> out(static_cast<size_t>(dit_.n_layers));
  for (size_t i = 0; i < cc_.control_layers_places.size(); ++i) {
    out[cc_.control_layers_places[i]] = hints[i] * scale;
  }
  return out;
}

bool ControlNetImpl::IsUnusedKey(const std::string& key) const {
  return cc_.layout == ControlNetConfig::Layout::kUnion20 &&
         absl::StartsWith(key, "control_noise_refiner.");
}

void ControlNetImpl::FuseProjections() {
  for (auto& b : control_layers_) b->FuseProjections();
  for (auto& b : control_refiner_) b->FuseProjections();
  for (auto& b : plain_refiner_) b->FuseProjections();
}

void ControlNetImpl::set_kernels(bool on) {
  for (auto& b : control_layers_) b->set_kernels(on);
  for (auto& b : control_refiner_) b->set_kernels(on);
  for (auto& b : plain_refiner_) b->set_kernels(on);
}

absl::Status LoadControlNet(ControlNetImpl& net, const std::string& path) {
  ZFARM_ASSIGN_OR_RETURN(auto ws, OpenControlNetWeights(path));
  LoadSpec spec;
  spec.component = "controlnet";
  spec.ignore = [&net](const std::string& k) { return net.IsUnusedKey(k); };
  return LoadWeights(net, *ws, spec);
}

}  // namespace zfarm::worker::model
