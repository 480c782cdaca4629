#ifndef ZFARM_WORKER_MODEL_CONTROLNET_H_
#define ZFARM_WORKER_MODEL_CONTROLNET_H_

// Z-Image-Turbo-Fun-Controlnet-Union in libtorch: diffusers' ZImageControlNetModel
// (models/controlnets/controlnet_z_image.py), its module names equal to the checkpoint keys
// (control_layers.N.*, control_noise_refiner.N.*, control_all_x_embedder.2-1.*) and loaded
// strictly. Internal to worker/model and worker/pipeline (includes Torch).
//
// Three published layouts, told apart as diffusers does:
//   Union (1.0)  control_in_dim = 16; control_noise_refiner = plain DiT blocks run on the control
//                tokens alone; hints only for the main layers.
//   Union 2.0    control_in_dim = 33; the control layers run twice (once on the image tokens,
//                giving hints for the noise refiner, once on [image, caption]);
//                control_noise_refiner.* in the single file are unused (diffusers drops them).
//   Union 2.1    control_in_dim = 33; control_noise_refiner = control blocks giving the noise
//                refiner's hints, then the control layers on [image, caption].
// The noise refiner's hints change only the ControlNet's own copy of the image tokens (what
// diffusers does); the DiT receives the main layers' hints.
//
//   ZFARM_ASSIGN_OR_RETURN(ControlNetConfig cc, ReadControlNetConfig(path, dit_config));  // io
//   ControlNet net(cc, dit_config, options);
//   ZFARM_RETURN_IF_ERROR(LoadControlNet(*net, path, cc));
//   DitTokens tok = dit->Embed(latent, t, cap, cap_valid);
//   at::Tensor x = dit->RefineImage(tok, nullptr);
//   std::vector<at::Tensor> hints = net->forward(*dit, tok, x, control, scale);
//   at::Tensor out = dit->Finish(tok, x, &hints);
//
// Thread-safety: none; one inference thread owns a module (style rule 18).

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/io/model_config.h"
#include "worker/model/modules.h"

namespace zfarm::worker::model {

// diffusers ZImageControlTransformerBlock: a modulated DiT block on the control stream c,
// with before_proj (block 0: c = before_proj(c) + x) and after_proj (the hint).
class ControlBlockImpl : public DitBlockImpl {
 public:
  ControlBlockImpl(const TransformerConfig& c, bool first, const at::TensorOptions& options);
  // Updates c in place of the block; returns the hint after_proj(c).
  at::Tensor Control(at::Tensor& c, const at::Tensor& x, const RopeTable& rope,
                     const at::Tensor& adaln);

 private:
  Linear before_proj{nullptr}, after_proj{nullptr};
};
TORCH_MODULE(ControlBlock);

class ControlNetImpl : public torch::nn::Module {
 public:
  ControlNetImpl(const ControlNetConfig& cc, const TransformerConfig& dit,
                 const at::TensorOptions& options);
  // tok: the DiT's embedded tokens (TransformerImpl::Embed); refined: the DiT's own
  // noise-refined image tokens (RefineImage(tok, nullptr), which 1.0 shares); control: the
  // control context [control_in_dim, 1, h, w] in the module dtype (the VAE latents of the
  // control picture, padded to control_in_dim as the pipeline does); scale: a 0-dimensional
  // float32 device tensor (conditioning_scale; a tensor so that CUDA graphs can replay with
  // another value). Returns one entry per DiT layer: the hint to add after it (scaled),
  // undefined for layers without one.
  std::vector<at::Tensor> forward(TransformerImpl& dit, const DitTokens& tok,
                                  const at::Tensor& refined, const at::Tensor& control,
                                  const at::Tensor& scale);
  // Checkpoint keys the module deliberately does not hold (2.0's unused noise refiner).
  bool IsUnusedKey(const std::string& key) const;
  const ControlNetConfig& config() const { return cc_; }
  // FuseProjections() / set_kernels() of every block (see DitBlockImpl).
  void FuseProjections();
  void set_kernels(bool on);

 private:
  std::vector<at::Tensor> RunControl(std::vector<ControlBlock>& blocks, at::Tensor& c,
                                     const at::Tensor& x, const RopeTable& rope,
                                     const at::Tensor& adaln);
  ControlNetConfig cc_;
  TransformerConfig dit_;
  Linear embedder{nullptr};
  std::vector<ControlBlock> control_layers_, control_refiner_;  // refiner: 2.1
  std::vector<DitBlock> plain_refiner_;                         // 1.0
};
TORCH_MODULE(ControlNet);

// Loads the weights at `path` (folder or file, as ReadControlNetConfig in
// worker/io/model_folder.h) strictly: INVALID_ARGUMENT naming the key for a missing,
// unexpected or wrong-shaped tensor.
absl::Status LoadControlNet(ControlNetImpl& net, const std::string& path);

}  // namespace zfarm::worker::model

#endif  // ZFARM_WORKER_MODEL_CONTROLNET_H_
