#ifndef ZFARM_CLIENT_OUTPUT_H_
#define ZFARM_CLIENT_OUTPUT_H_

// File: output.h
// What the CLI prints and writes: one JSON object per job (--json), human
// lines, the progress bar, and manifest.json for `batch --out-dir`.

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "zfarm/v1/job.pb.h"

namespace zfarm::client {

// "queued", "running", "succeeded", ... (the enum name without prefix,
// lower case).
std::string StateName(zfarm::v1::JobState state);

bool IsFinal(zfarm::v1::JobState state);

// One line of --json output (no trailing newline). Always has the keys job,
// request_id, state, path, sha256, seed, width, height, steps, prompt; plus
// "error" for a failed or cancelled job and "local_path" when the PNG was
// copied to a local file.
std::string JobJsonLine(const zfarm::v1::Job& job, const std::string& local_path = "");

// A short human line: "job=<id> state=<state> seed=<s> path=<p>".
std::string JobHumanLine(const zfarm::v1::Job& job, const std::string& local_path = "");

// "[#####-----] 5/10 label" sized to `width` characters of bar.
std::string ProgressBar(int done, int total, const std::string& label, int width = 30);

// One manifest entry (a job collected into --out-dir).
struct ManifestEntry {
  int index = 0;  // 1-based, matches the numbered file name
  zfarm::v1::Job job;
  std::string file;    // file name inside the out dir ("" when none)
  std::string sha256;  // of the local file
};

// Writes `<dir>/manifest.json` atomically: {"version": 1, "jobs": [{index,
// job, request_id, state, prompt, negative_prompt, seed, parameters {width,
// height, steps, guidance_scale, model, priority, labels}, path, sha256,
// error}]}.
absl::Status WriteManifest(const std::string& dir, const std::vector<ManifestEntry>& entries);

}  // namespace zfarm::client

#endif  // ZFARM_CLIENT_OUTPUT_H_
