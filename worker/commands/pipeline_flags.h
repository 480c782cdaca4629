#ifndef ZFARM_WORKER_COMMANDS_PIPELINE_FLAGS_H_
#define ZFARM_WORKER_COMMANDS_PIPELINE_FLAGS_H_

// The pipeline flags `zfarm-worker serve` and `generate` share: the memory savers
// and the switches that turn the speed paths off. One definition (name, help,
// default) and one mapping onto PipelineOptions for both.

#include "proto/flags/flags.h"
#include "worker/pipeline/pipeline.h"

namespace zfarm::worker {

struct PipelineFlags {
  bool offload_text_encoder = false;  // --offload-text-encoder
  bool vae_tiling = false;            // --vae-tiling
  bool vae_fp32 = false;              // --vae-fp32
  bool no_cuda_graphs = false;        // --no-cuda-graphs
  bool reference_ops = false;         // --reference-ops
};

// Defines the flags above on `fs`, bound to *f.
void DefinePipelineFlags(flags::FlagSet* fs, PipelineFlags* f);

// Sets the PipelineOptions fields those flags control.
void ApplyPipelineFlags(const PipelineFlags& f, PipelineOptions* options);

}  // namespace zfarm::worker

#endif  // ZFARM_WORKER_COMMANDS_PIPELINE_FLAGS_H_
