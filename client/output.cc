#include "client/output.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "proto/base/files.h"
#include "proto/contract/contract.h"

namespace zfarm::client {
namespace {

using ::zfarm::contract::IsFinal;
using json = nlohmann::json;
using zfarm::v1::Job;
using zfarm::v1::JobState;

json ErrorJson(const Job& job) {
  return json{{"reason", zfarm::v1::FailureReason_Name(job.error().reason())},
              {"message", job.error().message()}};
}

}  // namespace

std::string StateName(JobState state) {
  std::string name = zfarm::v1::JobState_Name(state);
  constexpr absl::string_view kPrefix = "JOB_STATE_";
  if (absl::StartsWith(name, kPrefix)) name = name.substr(kPrefix.size());
  return absl::AsciiStrToLower(name);
}

std::string JobJsonLine(const Job& job, const std::string& local_path) {
  json j{{"job", job.job_id()},
         {"request_id", job.request_id()},
         {"state", StateName(job.state())},
         {"path", job.result().path()},
         {"sha256", job.result().sha256()},
         {"seed", job.spec().has_seed() ? json(job.spec().seed()) : json()},
         {"width", job.spec().width_px()},
         {"height", job.spec().height_px()},
         {"steps", job.spec().steps()},
         {"prompt", job.spec().prompt()}};
  if (!job.batch_id().empty()) j["batch"] = job.batch_id();
  if (!job.result().media_type().empty()) j["media_type"] = job.result().media_type();
  if (job.state() == zfarm::v1::JOB_STATE_FAILED || job.state() == zfarm::v1::JOB_STATE_CANCELLED) {
    j["error"] = ErrorJson(job);
  }
  if (job.progress().total_steps() > 0 && !IsFinal(job.state())) {
    j["step"] = job.progress().step();
    j["total_steps"] = job.progress().total_steps();
  }
  if (!local_path.empty()) j["local_path"] = local_path;
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string JobHumanLine(const Job& job, const std::string& local_path) {
  std::string line = absl::StrCat("job=", job.job_id(), " state=", StateName(job.state()));
  if (job.spec().has_seed()) absl::StrAppend(&line, " seed=", job.spec().seed());
  if (job.state() == zfarm::v1::JOB_STATE_RUNNING && job.progress().total_steps() > 0) {
    absl::StrAppend(&line, " step=", job.progress().step(), "/", job.progress().total_steps());
  }
  if (!job.result().path().empty()) {
    absl::StrAppend(&line, " path=", job.result().path());
  }
  if (!local_path.empty()) absl::StrAppend(&line, " file=", local_path);
  if (job.state() == zfarm::v1::JOB_STATE_FAILED || job.state() == zfarm::v1::JOB_STATE_CANCELLED) {
    absl::StrAppend(&line, " reason=", zfarm::v1::FailureReason_Name(job.error().reason()));
    if (!job.error().message().empty()) {
      absl::StrAppend(&line, " message=\"", job.error().message(), "\"");
    }
  }
  return line;
}

std::string ProgressLog::Observe(const Job& job, absl::Time now) {
  const int total = job.progress().total_steps();
  const int step = job.progress().step();
  const int percent = total > 0 ? std::clamp(step * 100 / total, 0, 100) : 0;
  auto it = last_.find(job.job_id());
  bool due = it == last_.end() || it->second.state != job.state();
  if (!due && step != it->second.step) {
    due = percent >= it->second.percent + 10 || now - it->second.at >= absl::Seconds(5);
  }
  if (!due) return "";
  last_[job.job_id()] = Last{job.state(), step, percent, now};
  std::string line = absl::StrCat("job=", job.job_id(), " state=", StateName(job.state()));
  if (total > 0 && !IsFinal(job.state())) {
    absl::StrAppend(&line, " step=", step, "/", total, " (", percent, "%)");
  }
  return line;
}

std::string ProgressBar(int done, int total, const std::string& label, int width) {
  int filled = total > 0 ? std::clamp(done * width / total, 0, width) : 0;
  return absl::StrCat("[", std::string(filled, '#'), std::string(width - filled, '-'), "] ", done,
                      "/", total, " ", label);
}

absl::Status WriteManifest(const std::string& dir, const std::vector<ManifestEntry>& entries) {
  json jobs = json::array();
  for (const ManifestEntry& e : entries) {
    const zfarm::v1::JobSpec& spec = e.job.spec();
    json labels = json::object();
    for (const auto& [k, v] : spec.labels()) labels[k] = v;
    json j{{"index", e.index},
           {"job", e.job.job_id()},
           {"request_id", e.job.request_id()},
           {"state", StateName(e.job.state())},
           {"prompt", spec.prompt()},
           {"negative_prompt", spec.negative_prompt()},
           {"seed", spec.has_seed() ? json(spec.seed()) : json()},
           {"parameters",
            {{"width", spec.width_px()},
             {"height", spec.height_px()},
             {"steps", spec.steps()},
             {"guidance_scale", spec.guidance_scale()},
             {"model", spec.model()},
             {"priority", spec.priority()},
             {"labels", labels}}},
           {"path", e.file},
           {"server_path", e.job.result().path()},
           {"sha256", e.sha256}};
    if (e.job.state() != zfarm::v1::JOB_STATE_SUCCEEDED) {
      j["error"] = ErrorJson(e.job);
    }
    jobs.push_back(std::move(j));
  }
  json manifest{{"version", 1}, {"jobs", jobs}};
  return base::WriteFileAtomically(
      absl::StrCat(dir, "/manifest.json"),
      manifest.dump(2, ' ', false, json::error_handler_t::replace) + "\n");
}

}  // namespace zfarm::client
