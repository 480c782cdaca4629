#include "scheduler/http/dashboard.h"

#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "glog/logging.h"
#include "nlohmann/json.hpp"
#include "proto/base/files.h"
#include "scheduler/http/embedded_assets.h"
#include "scheduler/http/rest_common.h"
#include "scheduler/http/thumbnail.h"
#include "worker/io/image_file.h"

namespace zfarm::scheduler::http {
namespace {

using json = nlohmann::json;
using zfarm::http::Request;
using zfarm::http::Responder;
using zfarm::http::Response;

// Only the page's own script, style and pictures (thumbnails arrive as blob: URLs).
constexpr char kPolicy[] =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

std::string MediaTypeFor(absl::string_view name) {
  if (absl::EndsWith(name, ".html")) return "text/html; charset=utf-8";
  if (absl::EndsWith(name, ".js")) return "text/javascript; charset=utf-8";
  if (absl::EndsWith(name, ".css")) return "text/css; charset=utf-8";
  if (absl::EndsWith(name, ".json")) return "application/json";
  return "application/octet-stream";
}

Response AssetResponse(const EmbeddedAsset& a) {
  Response r = Response::Text(200, std::string(a.data), MediaTypeFor(a.name));
  r.headers.emplace("Content-Security-Policy", kPolicy);
  r.headers.emplace("X-Content-Type-Options", "nosniff");
  r.headers.emplace("Cache-Control", "no-cache");
  return r;
}

std::string StateKey(zfarm::v1::JobState s) {
  return absl::AsciiStrToLower(absl::StripPrefix(zfarm::v1::JobState_Name(s), "JOB_STATE_"));
}

std::string WorkerStateKey(zfarm::v1::WorkerState s) {
  return absl::AsciiStrToLower(
      absl::StripPrefix(zfarm::v1::WorkerState_Name(s), "WORKER_STATE_"));
}

// A job for the page: its proto JSON without input pictures' bytes.
json JobJson(zfarm::v1::Job job) {
  job.mutable_spec()->clear_init_image();
  job.mutable_spec()->clear_mask_image();
  if (job.spec().has_control()) job.mutable_spec()->mutable_control()->clear_image();
  return json::parse(ToJson(job), nullptr, false);
}

bool IsHexSha256(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!absl::ascii_isxdigit(c) || absl::ascii_isupper(c)) return false;
  }
  return true;
}

}  // namespace

Dashboard::Dashboard(const Options& options, zfarm::v1::JobService::Stub* jobs,
                     zfarm::v1::AdminService::Stub* admin)
    : options_(options), jobs_(jobs), admin_(admin) {}

absl::StatusOr<std::unique_ptr<Dashboard>> Dashboard::Create(const Options& options,
                                                             zfarm::v1::JobService::Stub* jobs,
                                                             zfarm::v1::AdminService::Stub* admin) {
  if (!options.thumbnail_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(options.thumbnail_dir, ec);
    if (ec) {
      return absl::InvalidArgumentError(
          absl::StrCat("thumbnail dir ", options.thumbnail_dir, ": ", ec.message()));
    }
  }
  std::unique_ptr<Dashboard> d(new Dashboard(options, jobs, admin));
  d->feed_thread_ = std::thread([p = d.get()] { p->FeedLoop(); });
  return d;
}

Dashboard::~Dashboard() { Stop(); }

void Dashboard::Stop() {
  std::list<std::shared_ptr<Feed>> feeds;
  {
    absl::MutexLock lock(&mu_);
    if (stopped_) return;
    stopped_ = true;
    feeds.swap(feeds_);
  }
  stop_.Notify();
  if (feed_thread_.joinable()) feed_thread_.join();
  for (auto& f : feeds) f->stream->End();
}

int64_t Dashboard::thumbnails_made() const {
  absl::MutexLock lock(&mu_);
  return thumbnails_made_;
}

void Dashboard::AddRoutes(zfarm::http::Router* router) {
  auto bind = [this](Response (Dashboard::*fn)(const Request&)) {
    return [this, fn](const Request& req) { return (this->*fn)(req); };
  };
  router->Add("GET", "/", bind(&Dashboard::Page))
      .Add("GET", "/ui/{file}", bind(&Dashboard::Asset))
      .Add("GET", "/v1/farm", bind(&Dashboard::Summary))
      .AddAsync("GET", "/v1/farm/events",
                [this](const Request& req, Responder r) { Events(req, std::move(r)); })
      .Add("GET", "/v1/jobs/{id}/thumbnail", bind(&Dashboard::Thumbnail))
      .Add("GET", "/v1/jobs/{id}/metadata", bind(&Dashboard::Metadata));
}

Response Dashboard::Page(const Request&) {
  const EmbeddedAsset* page = FindAsset("dashboard.html");
  if (page == nullptr) return GrpcError(grpc::StatusCode::INTERNAL, "dashboard.html not embedded");
  return AssetResponse(*page);
}

Response Dashboard::Asset(const Request& req) {
  const std::string& name = req.PathParam("file");
  const EmbeddedAsset* a = FindAsset(name);
  if (a == nullptr || (!absl::EndsWith(name, ".js") && !absl::EndsWith(name, ".css"))) {
    return GrpcError(grpc::StatusCode::NOT_FOUND,
                     absl::StrCat("ui: no file \"", absl::CHexEscape(name.substr(0, 64)), "\""));
  }
  return AssetResponse(*a);
}

grpc::Status Dashboard::Snapshot(const std::string& authorization, std::string* out) {
  // Recent jobs first: a job submitted meanwhile is then counted in the
  // queue before its card shows (the calls are not one snapshot).
  zfarm::v1::ListJobsRequest recent_req;
  recent_req.set_page_size(options_.recent_jobs);
  zfarm::v1::ListJobsResponse recent;
  {
    auto ctx = CallContext(authorization, options_.rpc_timeout);
    grpc::Status s = jobs_->ListJobs(ctx.get(), recent_req, &recent);
    if (!s.ok()) return s;
  }
  // Active jobs: the queue by state and priority, and the workers' steps.
  json by_state = {{"queued", 0}, {"assigned", 0}, {"running", 0}};
  std::map<int, json> by_priority;
  std::map<std::string, zfarm::v1::JobProgress> progress;
  bool truncated = false;
  std::string token;
  for (int page = 0; page < 10; ++page) {
    zfarm::v1::ListJobsRequest req;
    req.add_states(zfarm::v1::JOB_STATE_QUEUED);
    req.add_states(zfarm::v1::JOB_STATE_ASSIGNED);
    req.add_states(zfarm::v1::JOB_STATE_RUNNING);
    req.set_page_size(1000);
    req.set_page_token(token);
    zfarm::v1::ListJobsResponse resp;
    auto ctx = CallContext(authorization, options_.rpc_timeout);
    grpc::Status s = jobs_->ListJobs(ctx.get(), req, &resp);
    if (!s.ok()) return s;
    for (const auto& job : resp.jobs()) {
      const std::string key = StateKey(job.state());
      by_state[key] = by_state[key].get<int64_t>() + 1;
      json& p = by_priority[job.spec().priority()];
      if (p.is_null()) {
        p = {{"priority", job.spec().priority()}, {"queued", 0}, {"assigned", 0}, {"running", 0}};
      }
      p[key] = p[key].get<int64_t>() + 1;
      progress[job.job_id()] = job.progress();
    }
    token = resp.next_page_token();
    if (token.empty()) break;
    truncated = page == 9;
  }
  json priorities = json::array();
  for (auto it = by_priority.rbegin(); it != by_priority.rend(); ++it) priorities.push_back(it->second);

  zfarm::v1::ListWorkersResponse workers;
  {
    auto ctx = CallContext(authorization, options_.rpc_timeout);
    grpc::Status s = admin_->ListWorkers(ctx.get(), {}, &workers);
    if (!s.ok()) return s;
  }
  json wlist = json::array();
  for (const auto& w : workers.workers()) {
    json current = json::array();
    for (const auto& id : w.current_job_ids()) {
      json c = {{"job_id", id}};
      if (auto it = progress.find(id); it != progress.end()) {
        c["step"] = it->second.step();
        c["total_steps"] = it->second.total_steps();
      }
      current.push_back(std::move(c));
    }
    wlist.push_back({{"worker_name", w.worker_name()},
                     {"device", w.device()},
                     {"device_name", w.device_name()},
                     {"state", WorkerStateKey(w.state())},
                     {"model", w.model()},
                     {"jobs_done", w.jobs_done()},
                     {"jobs_failed", w.jobs_failed()},
                     {"last_seen_time", absl::FormatTime(absl::RFC3339_sec,
                                                         absl::FromUnixSeconds(
                                                             w.last_seen_time().seconds()),
                                                         absl::UTCTimeZone())},
                     {"current_jobs", std::move(current)}});
  }

  json rlist = json::array();
  for (const auto& job : recent.jobs()) rlist.push_back(JobJson(job));

  json summary = {
      {"queue", {{"by_state", by_state}, {"by_priority", priorities}, {"truncated", truncated}}},
      {"workers", std::move(wlist)},
      {"recent_jobs", std::move(rlist)}};
  *out = summary.dump(-1, ' ', false, json::error_handler_t::replace);
  return grpc::Status::OK;
}

Response Dashboard::Summary(const Request& req) {
  std::string out;
  grpc::Status s = Snapshot(AuthorizationOf(req), &out);
  if (!s.ok()) return GrpcError(s);
  return Response::Json(200, out + "\n");
}

void Dashboard::Events(const Request& req, Responder r) {
  auto feed = std::make_shared<Feed>();
  feed->authorization = AuthorizationOf(req);
  grpc::Status s = Snapshot(feed->authorization, &feed->last);
  if (!s.ok()) return r.Finish(GrpcError(s));
  {
    absl::MutexLock lock(&mu_);
    if (stopped_) {
      return r.Finish(GrpcError(grpc::StatusCode::UNAVAILABLE, "dashboard: stopping"));
    }
    if (static_cast<int>(feeds_.size()) >= options_.max_feeds) {
      return r.Finish(GrpcError(grpc::StatusCode::UNAVAILABLE,
                                absl::StrCat("dashboard: ", options_.max_feeds,
                                             " event streams are open (the limit); retry later")));
    }
    feed->stream = r.StartEventStream();
    feed->stream->Send("farm", feed->last);
    feeds_.push_back(feed);
  }
}

void Dashboard::FeedLoop() {
  while (!stop_.WaitForNotificationWithTimeout(options_.poll_interval)) {
    std::list<std::shared_ptr<Feed>> feeds;
    {
      absl::MutexLock lock(&mu_);
      for (auto it = feeds_.begin(); it != feeds_.end();) {
        if ((*it)->stream->closed()) {
          it = feeds_.erase(it);
        } else {
          feeds.push_back(*it++);
        }
      }
    }
    for (auto& f : feeds) {
      std::string now;
      grpc::Status s = Snapshot(f->authorization, &now);
      if (!s.ok()) {
        f->stream->Send("error", zfarm::http::JsonErrorBody(GrpcCodeName(s.error_code()),
                                                           s.error_message()));
        continue;
      }
      if (now != f->last) {
        f->last = std::move(now);
        f->stream->Send("farm", f->last);
      }
    }
  }
}

grpc::Status Dashboard::SucceededJob(const Request& req, const std::string& what,
                                     zfarm::v1::Job* job) {
  auto ctx = CallContext(req, options_.rpc_timeout);
  zfarm::v1::GetJobRequest get;
  get.set_job_id(req.PathParam("id"));
  if (grpc::Status s = jobs_->GetJob(ctx.get(), get, job); !s.ok()) return s;
  if (job->state() != zfarm::v1::JOB_STATE_SUCCEEDED) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        absl::StrCat(what, ": job ", job->job_id(), " is ", StateKey(job->state()),
                                     "; only a succeeded job has a result"));
  }
  return grpc::Status::OK;
}

Response Dashboard::Thumbnail(const Request& req) {
  zfarm::v1::Job job;
  if (grpc::Status s = SucceededJob(req, "thumbnail", &job); !s.ok()) return GrpcError(s);
  const std::string sha = job.result().sha256();
  if (!IsHexSha256(sha)) return GrpcError(grpc::StatusCode::INTERNAL, "thumbnail: no sha256");
  const std::string path =
      options_.thumbnail_dir.empty() ? "" : absl::StrCat(options_.thumbnail_dir, "/", sha, ".png");
  auto cached = [&]() -> std::optional<std::string> {
    if (path.empty()) {
      absl::MutexLock lock(&mu_);
      auto it = memory_thumbs_.find(sha);
      if (it != memory_thumbs_.end()) return it->second;
      return std::nullopt;
    }
    std::ifstream f(path, std::ios::binary);
    if (!f) return std::nullopt;
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  };
  auto answer = [](std::string png) {
    Response r = Response::Text(200, std::move(png), "image/png");
    // The same result always has the same thumbnail; private: it needs the token.
    r.headers.emplace("Cache-Control", "private, max-age=86400");
    return r;
  };
  if (auto hit = cached()) return answer(*std::move(hit));
  absl::MutexLock making(&make_mu_);
  if (auto hit = cached()) return answer(*std::move(hit));  // made while we waited
  std::string data;
  if (grpc::Status s = ReadResult(jobs_, req, options_.rpc_timeout, job.job_id(), &data); !s.ok()) {
    return GrpcError(s);
  }
  auto small = MakeThumbnail(data, options_.thumbnail_px);
  if (!small.ok()) {
    return GrpcError(grpc::StatusCode::INTERNAL, std::string(small.status().message()));
  }
  if (path.empty()) {
    absl::MutexLock lock(&mu_);
    if (static_cast<int>(memory_thumbs_.size()) >= options_.max_memory_thumbnails) {
      memory_thumbs_.erase(memory_thumbs_.begin());
    }
    memory_thumbs_[sha] = *small;
  } else if (absl::Status s = zfarm::base::WriteFileAtomically(path, *small); !s.ok()) {
    LOG(WARNING) << "event=thumbnail_write_failed path=" << path << " error=\"" << s.message()
                 << "\"";
  }
  {
    absl::MutexLock lock(&mu_);
    ++thumbnails_made_;
  }
  LOG(INFO) << "event=thumbnail job=" << job.job_id() << " bytes=" << small->size();
  return answer(*std::move(small));
}

Response Dashboard::Metadata(const Request& req) {
  zfarm::v1::Job job;
  if (grpc::Status s = SucceededJob(req, "metadata", &job); !s.ok()) return GrpcError(s);
  const std::string type = job.result().media_type().empty() ? "image/png"
                                                              : job.result().media_type();
  std::string data;
  if (grpc::Status s = ReadResult(jobs_, req, options_.rpc_timeout, job.job_id(), &data); !s.ok()) {
    return GrpcError(s);
  }
  // The parameters as A1111 and ComfyUI read them (PNG text, JPEG/WebP EXIF and XMP).
  auto info = zfarm::worker::ReadImageInfo(data);
  if (!info.ok()) {
    return GrpcError(grpc::StatusCode::INTERNAL,
                     absl::StrCat("metadata: ", info.status().message()));
  }
  json text = json::object();
  if (!info->parameters.empty()) text["parameters"] = info->parameters;
  if (!info->json.empty()) text["zfarm"] = info->json;
  json out = {{"media_type", type}, {"text", std::move(text)}};
  return Response::Json(200, out.dump(-1, ' ', false, json::error_handler_t::replace) + "\n");
}

}  // namespace zfarm::scheduler::http
