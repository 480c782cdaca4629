#include "worker/commands/pipeline_flags.h"

namespace zfarm::worker {

void DefinePipelineFlags(flags::FlagSet* fs, PipelineFlags* f) {
  fs->Bool("offload-text-encoder", &f->offload_text_encoder,
           "keep the text encoder on the CPU and run it there");
  fs->Bool("vae-tiling", &f->vae_tiling, "decode in tiles (less memory at large sizes)");
  fs->Bool("vae-fp32", &f->vae_fp32, "run the VAE in float32");
  fs->Bool("no-cuda-graphs", &f->no_cuda_graphs,
           "run each DiT step eagerly (no graph memory pools; a speed path off)");
  fs->Bool("reference-ops", &f->reference_ops,
           "the reference ATen ops instead of the fused kernels (a speed path off, for "
           "debugging)");
}

void ApplyPipelineFlags(const PipelineFlags& f, PipelineOptions* options) {
  options->offload_text_encoder = f.offload_text_encoder;
  options->vae_tiling = f.vae_tiling;
  options->vae_fp32 = f.vae_fp32;
  options->cuda_graphs = !f.no_cuda_graphs;
  options->fused_ops = !f.reference_ops;
}

}  // namespace zfarm::worker
