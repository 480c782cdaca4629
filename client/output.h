#ifndef ZFARM_CLIENT_OUTPUT_H_
#define ZFARM_CLIENT_OUTPUT_H_

// File: output.h
// What the CLI prints and writes: one JSON object per job (--json), human
// lines, the progress bar, and manifest.json for `batch --out-dir`.

#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "proto/contract/contract.h"
#include "zfarm/v1/job.pb.h"

namespace zfarm::client {

// "queued", "running", "succeeded", ... (the enum name without prefix,
// lower case).
std::string StateName(zfarm::v1::JobState state);

// One line of --json output (no trailing newline). Always has the keys job,
// request_id, state, path, sha256, seed, width, height, steps, prompt; plus
// "error" for a failed or cancelled job and "local_path" when the PNG was
// copied to a local file.
std::string JobJsonLine(const zfarm::v1::Job& job, const std::string& local_path = "");

// A short human line: "job=<id> state=<state> seed=<s> path=<p>".
std::string JobHumanLine(const zfarm::v1::Job& job, const std::string& local_path = "");

// "[#####-----] 5/10 label" sized to `width` characters of bar.
std::string ProgressBar(int done, int total, const std::string& label, int width = 30);

// Which job updates a log that is not a terminal gets (a CI console, a file): per
// job, one line when its state changes, or when its progress moved another 10 % of
// its steps, or 5 s after its last line if the step moved; never a carriage return.
// Time is passed in, so tests need no clock. Not thread-safe.
//
//   ProgressLog log;
//   if (std::string line = log.Observe(job, absl::Now()); !line.empty()) err << line << "\n";
class ProgressLog {
 public:
  // The line for this update of `job` ("job=<id> state=running step=3/8 (37%)"),
  // or "" when it is not due yet.
  std::string Observe(const zfarm::v1::Job& job, absl::Time now);

 private:
  struct Last {
    zfarm::v1::JobState state;
    int step = 0;
    int percent = 0;
    absl::Time at;
  };
  std::map<std::string, Last> last_;
};

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
