#ifndef ZFARM_WORKER_COMMANDS_COMMANDS_H_
#define ZFARM_WORKER_COMMANDS_COMMANDS_H_

// Subcommands of zfarm-worker. Each takes the arguments after the subcommand name
// (argv[0] is the subcommand) and returns the process exit code: 0 success,
// 1 the operation failed, 2 usage error.

namespace zfarm::worker {

// serve: load and warm the pipeline, then take jobs from the scheduler.
int RunServe(int argc, char** argv);
// generate: render images without a scheduler.
int RunGenerate(int argc, char** argv);
// verify: check a model folder against the official manifest.
int RunVerify(int argc, char** argv);
// tokenize: JSON Lines prompts on stdin -> token ids on stdout.
int RunTokenize(int argc, char** argv);
// doctor: pre-flight checks of files, device and a load test.
int RunDoctor(int argc, char** argv);
// cache-weights: write the bf16 (or fp8) DiT copy that serve --weights-cache reads.
int RunCacheWeights(int argc, char** argv);
// info: the format, size and generation parameters of a PNG/JPEG/WebP result.
int RunInfo(int argc, char** argv);
// lora-inspect: a LoRA file's layout, modules, rank and alpha, and whether it fits a model.
int RunLoraInspect(int argc, char** argv);
// compare: render prompts with two precisions (e.g. bf16 and fp8), PSNR/SSIM per pair.
int RunCompare(int argc, char** argv);

}  // namespace zfarm::worker

#endif  // ZFARM_WORKER_COMMANDS_COMMANDS_H_
