#include "scheduler/http/openai_api.h"

#include <algorithm>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "glog/logging.h"
#include "nlohmann/json.hpp"
#include "proto/base/status_macros.h"
#include "scheduler/http/job_streams.h"
#include "scheduler/http/rest_common.h"

namespace zfarm::scheduler::http {
namespace {

using json = nlohmann::json;
using zfarm::http::Request;
using zfarm::http::Responder;
using zfarm::http::Response;

constexpr int kMaxImages = 10;
constexpr size_t kMaxKeyBytes = 200;  // leaves room for "/<i>" in a 256-byte request id

absl::Status Bad(const std::string& param, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(param, ": ", what));
}

std::string TypeName(const json& v) { return v.type_name(); }

// An integer field in [lo, hi]; errors name the field and the range.
absl::StatusOr<int64_t> IntIn(const json& v, const std::string& name, int64_t lo, int64_t hi) {
  if (!v.is_number_integer()) {
    return Bad(name, absl::StrCat("must be an integer in [", lo, ", ", hi, "], not ", TypeName(v)));
  }
  const int64_t x = v.is_number_unsigned() && v.get<uint64_t>() > uint64_t{INT64_MAX}
                        ? INT64_MAX
                        : v.get<int64_t>();
  if (x < lo || x > hi) return Bad(name, absl::StrCat(x, " is outside [", lo, ", ", hi, "]"));
  return x;
}

absl::StatusOr<std::string> String(const json& v, const std::string& name) {
  if (!v.is_string()) return Bad(name, absl::StrCat("must be a string, not ", TypeName(v)));
  return v.get<std::string>();
}

// "1024x768" -> {1024, 768}; "auto" -> {0, 0} (the scheduler's default size).
absl::StatusOr<std::pair<int, int>> ParseSize(const std::string& size) {
  if (size == "auto") return std::pair{0, 0};
  std::vector<std::string> parts = absl::StrSplit(absl::AsciiStrToLower(size), 'x');
  int w = 0, h = 0;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &w) || !absl::SimpleAtoi(parts[1], &h) ||
      w <= 0 || h <= 0) {
    return Bad("size", absl::StrCat("\"", absl::CHexEscape(size.substr(0, 32)),
                                    "\" is not WIDTHxHEIGHT (e.g. \"1024x1024\") or \"auto\""));
  }
  return std::pair{w, h};
}

const char* TypeForStatus(int http_status) {
  switch (http_status) {
    case 401:
      return "authentication_error";
    case 403:
      return "permission_error";
    case 429:
      return "rate_limit_error";
    default:
      return http_status >= 500 ? "server_error" : "invalid_request_error";
  }
}

// gRPC's field names (after "jobs[i]." and "spec.") -> this API's.
std::string ParamForField(const std::string& field) {
  static const auto* kMap = new std::map<std::string, std::string>{
      {"width_px", "size"},         {"height_px", "size"},
      {"steps", "steps"},           {"guidance_scale", "guidance"},
      {"prompt", "prompt"},         {"negative_prompt", "negative_prompt"},
      {"seed", "seed"},             {"output_format", "output_format"},
      {"quality", "output_compression"}, {"model", "model"},
      {"request_id", "Idempotency-Key"}, {"jobs", "n"}};
  auto it = kMap->find(field);
  return it == kMap->end() ? "" : it->second;
}

}  // namespace

absl::StatusOr<ImagesRequest> ParseImagesRequest(const std::string& body,
                                                 const std::string* idempotency_key) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return Bad("body", "must be a JSON object (OpenAI images.generate parameters)");
  }
  ImagesRequest out;
  zfarm::v1::JobSpec spec;
  int64_t n = 1;
  std::optional<uint64_t> seed;
  std::string format = "png";
  std::optional<int64_t> compression;
  std::string size = "auto";
  for (const auto& [key, v] : j.items()) {
    if (key == "prompt") {
      ZFARM_ASSIGN_OR_RETURN(std::string p, String(v, key));
      spec.set_prompt(p);
    } else if (key == "n") {
      if (v.is_null()) continue;
      ZFARM_ASSIGN_OR_RETURN(n, IntIn(v, key, 1, kMaxImages));
    } else if (key == "size") {
      if (v.is_null()) continue;
      ZFARM_ASSIGN_OR_RETURN(size, String(v, key));
      ZFARM_ASSIGN_OR_RETURN(auto wh, ParseSize(size));
      spec.set_width_px(wh.first);
      spec.set_height_px(wh.second);
    } else if (key == "response_format") {
      if (v.is_null()) continue;
      ZFARM_ASSIGN_OR_RETURN(std::string f, String(v, key));
      if (f != "b64_json" && f != "url") {
        return Bad(key, absl::StrCat("\"", absl::CHexEscape(f.substr(0, 32)),
                                     "\" is not one of b64_json, url"));
      }
      out.want_url = f == "url";
    } else if (key == "output_format") {
      if (v.is_null()) continue;
      ZFARM_ASSIGN_OR_RETURN(format, String(v, key));
      if (format != "png" && format != "jpeg" && format != "webp") {
        return Bad(key, absl::StrCat("\"", absl::CHexEscape(format.substr(0, 32)),
                                     "\" is not one of png, jpeg, webp"));
      }
    } else if (key == "output_compression") {
      if (v.is_null()) continue;
      ZFARM_ASSIGN_OR_RETURN(compression, IntIn(v, key, 1, 100));
    } else if (key == "seed") {
      if (v.is_null()) continue;
      if (!v.is_number_integer() || (!v.is_number_unsigned() && v.get<int64_t>() < 0)) {
        return Bad(key, "must be an integer in [0, 2^64 - 1]");
      }
      seed = v.get<uint64_t>();
    } else if (key == "steps") {
      if (v.is_null()) continue;
      ZFARM_ASSIGN_OR_RETURN(int64_t s, IntIn(v, key, 1, 1000));
      spec.set_steps(static_cast<int32_t>(s));
    } else if (key == "guidance") {
      if (v.is_null()) continue;
      if (!v.is_number()) return Bad(key, "must be a number");
      spec.set_guidance_scale(v.get<float>());
    } else if (key == "negative_prompt") {
      if (v.is_null()) continue;
      ZFARM_ASSIGN_OR_RETURN(std::string p, String(v, key));
      spec.set_negative_prompt(p);
    } else if (key == "model") {
      if (v.is_null()) continue;
      ZFARM_ASSIGN_OR_RETURN(std::string m, String(v, key));
      spec.set_model(m);
    } else if (key == "user") {
      if (!v.is_null() && !v.is_string()) return Bad(key, "must be a string");
    } else if (key == "quality") {
      if (v.is_null()) continue;
      ZFARM_ASSIGN_OR_RETURN(std::string q, String(v, key));
      static const std::set<std::string> kQualities = {"auto", "standard", "hd",
                                                       "low",  "medium",   "high"};
      if (kQualities.count(q) == 0) {
        return Bad(key, absl::StrCat("\"", absl::CHexEscape(q.substr(0, 32)),
                                     "\" is not one of auto, standard, hd, low, medium, high "
                                     "(accepted and ignored: steps sets the quality)"));
      }
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(key.substr(0, 64), ": unknown parameter (prompt, n, size, response_format, "
                                          "output_format, output_compression, model, user, "
                                          "quality, seed, steps, negative_prompt, guidance)"));
    }
  }
  if (!j.contains("prompt")) return Bad("prompt", "is required");
  if (format == "jpeg") spec.set_output_format(zfarm::v1::OUTPUT_FORMAT_JPEG);
  if (format == "webp") spec.set_output_format(zfarm::v1::OUTPUT_FORMAT_WEBP);
  if (format == "png") spec.set_output_format(zfarm::v1::OUTPUT_FORMAT_PNG);
  if (compression.has_value()) {
    if (format == "png") {
      return Bad("output_compression", "applies to jpeg and webp only, not png");
    }
    spec.set_quality(static_cast<int32_t>(*compression));
  }
  out.output_format = format;
  out.size = size;
  if (idempotency_key != nullptr) {
    if (idempotency_key->empty() || idempotency_key->size() > kMaxKeyBytes) {
      return Bad("Idempotency-Key", absl::StrCat("must be 1..", kMaxKeyBytes, " bytes"));
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    zfarm::v1::SubmitJobRequest* job = out.batch.add_jobs();
    *job->mutable_spec() = spec;
    if (seed.has_value()) job->mutable_spec()->set_seed(*seed + static_cast<uint64_t>(i));
    if (idempotency_key != nullptr) job->set_request_id(absl::StrCat(*idempotency_key, "/", i));
  }
  return out;
}

Response OpenAiError(int http_status, const std::string& message, const std::string& type,
                     const std::string& code) {
  std::string param;
  if (size_t colon = message.find(": "); colon != std::string::npos && colon < 80) {
    param = message.substr(0, colon);
  }
  json e = {{"message", message},
            {"type", type},
            {"param", param.empty() ? json(nullptr) : json(param)},
            {"code", code.empty() ? json(nullptr) : json(code)}};
  // Invalid UTF-8 from a request (echoed in a message) is replaced, not thrown on.
  return Response::Json(http_status,
                        json{{"error", e}}.dump(-1, ' ', false, json::error_handler_t::replace) +
                            "\n");
}

Response OpenAiErrorFromGrpc(grpc::StatusCode code, const std::string& message) {
  const int status = HttpStatusForCode(code);
  std::string msg = message;
  // "jobs[0].spec.width_px: 100 is outside ..." -> "size: width_px 100 is outside ...".
  if (size_t colon = message.find(": "); colon != std::string::npos) {
    absl::string_view field(message.data(), colon);
    if (absl::StartsWith(field, "jobs[")) {
      if (size_t dot = field.find("]."); dot != absl::string_view::npos) {
        field.remove_prefix(dot + 2);
      }
    }
    absl::ConsumePrefix(&field, "spec.");
    const std::string param = ParamForField(std::string(field));
    if (!param.empty()) {
      msg = param == field ? absl::StrCat(param, message.substr(colon))
                           : absl::StrCat(param, ": ", field, " ", message.substr(colon + 2));
    }
  }
  std::string name = absl::AsciiStrToLower(GrpcCodeName(code));
  return OpenAiError(status, msg, TypeForStatus(status),
                     code == grpc::StatusCode::INVALID_ARGUMENT ? "invalid_value" : name);
}

namespace {

Response BadRequest(const absl::Status& s) {
  const bool unknown = absl::StrContains(s.message(), ": unknown parameter");
  return OpenAiError(400, std::string(s.message()), "invalid_request_error",
                     unknown ? "unknown_parameter" : "invalid_value");
}

// One generation in flight: n WatchJob streams, then (b64_json) n result reads.
class Generation : public std::enable_shared_from_this<Generation> {
 public:
  Generation(Responder responder, zfarm::v1::JobService::Stub* stub, OpenAiApiOptions options,
             std::string authorization, std::string url_base, ImagesRequest request,
             zfarm::v1::SubmitJobsResponse submitted)
      : responder_(std::move(responder)),
        stub_(stub),
        options_(std::move(options)),
        authorization_(std::move(authorization)),
        url_base_(std::move(url_base)),
        request_(std::move(request)),
        deadline_(absl::Now() + options_.images_timeout) {
    for (const auto& j : submitted.jobs()) jobs_.push_back(j.job());
    images_.resize(jobs_.size());
  }

  void Start() {
    auto self = shared_from_this();
    std::weak_ptr<Generation> weak = self;
    responder_.OnCancel([weak] {
      if (auto g = weak.lock()) g->CancelAll();
    });
    std::vector<std::string> ids;
    {
      absl::MutexLock lock(&mu_);
      remaining_ = static_cast<int>(jobs_.size());
      for (const auto& j : jobs_) ids.push_back(j.job_id());
    }
    // Started without mu_ held: a stream's callbacks take it.
    for (size_t i = 0; i < ids.size(); ++i) {
      auto h = StartWatchJob(
          stub_, CallContext(authorization_, deadline_ - absl::Now()), ids[i],
          [self, i](const zfarm::v1::JobEvent& e) {
            absl::MutexLock lock(&self->mu_);
            self->jobs_[i] = e.job();
            return true;
          },
          [self](const grpc::Status& s) { self->WatchDone(s); });
      Keep(std::move(h));
    }
  }

 private:
  // Holds a stream's handle for CancelAll (cancelled at once after it).
  void Keep(std::shared_ptr<StreamHandle> h) {
    absl::MutexLock lock(&mu_);
    handles_.push_back(std::move(h));
    if (cancelled_) handles_.back()->Cancel();
  }

  void CancelAll() {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    for (auto& h : handles_) h->Cancel();
  }

  void WatchDone(const grpc::Status& s) {
    {
      absl::MutexLock lock(&mu_);
      if (!s.ok() && error_.ok()) error_ = s;
      if (--remaining_ > 0) return;
      if (cancelled_) return;  // the client is gone
    }
    Finished();
  }

  // Every watch ended: the images, or why not.
  void Finished() {
    grpc::Status error;
    {
      absl::MutexLock lock(&mu_);
      error = error_;
      final_jobs_ = jobs_;
    }
    if (error.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
      return responder_.Finish(OpenAiError(
          504,
          absl::StrCat("images: not final within ",
                       absl::FormatDuration(options_.images_timeout),
                       " (--http-images-timeout); the jobs go on: retry with the same "
                       "Idempotency-Key or watch GET /v1/jobs/{id}/events"),
          "server_error", "timeout"));
    }
    if (!error.ok()) {
      return responder_.Finish(OpenAiErrorFromGrpc(error.error_code(), error.error_message()));
    }
    for (const auto& job : final_jobs_) {
      if (job.state() == zfarm::v1::JOB_STATE_SUCCEEDED) continue;
      const bool invalid = job.error().reason() == zfarm::v1::FAILURE_REASON_INVALID_REQUEST;
      return responder_.Finish(OpenAiError(
          invalid ? 400 : 500,
          absl::StrCat("job ", job.job_id(), " ", zfarm::v1::JobState_Name(job.state()), ": ",
                       zfarm::v1::FailureReason_Name(job.error().reason()), ": ",
                       job.error().message()),
          invalid ? "invalid_request_error" : "server_error",
          job.state() == zfarm::v1::JOB_STATE_CANCELLED ? "job_cancelled" : "job_failed"));
    }
    if (request_.want_url) return Answer();
    ReadNext(0);
  }

  void ReadNext(size_t i) {
    if (i == final_jobs_.size()) return Answer();
    auto self = shared_from_this();
    auto h = StartReadResult(stub_, CallContext(authorization_, options_.rpc_timeout),
                             final_jobs_[i].job_id(), options_.max_image_bytes,
                             [self, i](const grpc::Status& s, std::string data) {
                               if (!s.ok()) {
                                 return self->responder_.Finish(
                                     OpenAiErrorFromGrpc(s.error_code(), s.error_message()));
                               }
                               self->images_[i] = absl::Base64Escape(data);
                               self->ReadNext(i + 1);
                             });
    Keep(std::move(h));
  }

  void Answer() {
    json data = json::array();
    for (size_t i = 0; i < final_jobs_.size(); ++i) {
      const zfarm::v1::Job& job = final_jobs_[i];
      json item = {{"seed", job.spec().seed()}, {"job_id", job.job_id()}};
      if (request_.want_url) {
        item["url"] = absl::StrCat(url_base_, "/v1/jobs/", job.job_id(), "/image");
      } else {
        item["b64_json"] = std::move(images_[i]);
      }
      data.push_back(std::move(item));
    }
    const zfarm::v1::JobSpec& spec = final_jobs_.front().spec();
    json out = {{"created", absl::ToUnixSeconds(absl::Now())},
                {"data", std::move(data)},
                {"output_format", request_.output_format},
                {"size", absl::StrCat(spec.width_px(), "x", spec.height_px())}};
    LOG(INFO) << "event=openai_images jobs=" << final_jobs_.size()
              << " first=" << final_jobs_.front().job_id();
    responder_.Finish(Response::Json(200, out.dump() + "\n"));
  }

  Responder responder_;
  zfarm::v1::JobService::Stub* const stub_;
  const OpenAiApiOptions options_;
  const std::string authorization_;
  const std::string url_base_;
  const ImagesRequest request_;
  const absl::Time deadline_;
  // After every watch ended (Finished): read without mu_, one step at a time.
  std::vector<zfarm::v1::Job> final_jobs_;
  std::vector<std::string> images_;  // base64, filled in order by ReadNext

  absl::Mutex mu_;
  std::vector<zfarm::v1::Job> jobs_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<StreamHandle>> handles_ ABSL_GUARDED_BY(mu_);
  int remaining_ ABSL_GUARDED_BY(mu_) = 0;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status error_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

void AddOpenAiRoutes(zfarm::http::Router* router, zfarm::v1::JobService::Stub* jobs,
                     zfarm::v1::AdminService::Stub* admin, const OpenAiApiOptions& options) {
  auto list_models = [admin, options](const Request& http) -> Response {
    auto ctx = CallContext(http, options.rpc_timeout);
    zfarm::v1::ListWorkersResponse resp;
    grpc::Status s = admin->ListWorkers(ctx.get(), {}, &resp);
    if (!s.ok()) return OpenAiErrorFromGrpc(s.error_code(), s.error_message());
    std::map<std::string, int64_t> models;  // id -> earliest connect time
    for (const auto& w : resp.workers()) {
      if (w.model().empty() || w.state() == zfarm::v1::WORKER_STATE_LOST) continue;
      auto [it, fresh] = models.emplace(w.model(), w.connect_time().seconds());
      if (!fresh) it->second = std::min(it->second, w.connect_time().seconds());
    }
    json data = json::array();
    for (const auto& [id, created] : models) {
      data.push_back({{"id", id}, {"object", "model"}, {"created", created}, {"owned_by", "zfarm"}});
    }
    return Response::Json(200, json{{"object", "list"}, {"data", std::move(data)}}.dump() + "\n");
  };

  auto generate = [jobs, admin, options](const Request& http, Responder r) {
    if (auto bad = CheckJsonBody(http); bad.has_value()) {
      return r.Finish(OpenAiError(415,
                                  "Content-Type: not accepted; send application/json",
                                  "invalid_request_error", "unsupported_media_type"));
    }
    auto parsed = ParseImagesRequest(http.body, http.Header("Idempotency-Key"));
    if (!parsed.ok()) return r.Finish(BadRequest(parsed.status()));
    const std::string& model = parsed->batch.jobs(0).spec().model();
    if (!model.empty()) {
      auto ctx = CallContext(http, options.rpc_timeout);
      zfarm::v1::ListWorkersResponse workers;
      grpc::Status s = admin->ListWorkers(ctx.get(), {}, &workers);
      if (!s.ok()) return r.Finish(OpenAiErrorFromGrpc(s.error_code(), s.error_message()));
      std::set<std::string> held;
      for (const auto& w : workers.workers()) {
        if (w.state() != zfarm::v1::WORKER_STATE_LOST) held.insert(w.model());
      }
      if (held.count(model) == 0) {
        return r.Finish(OpenAiError(
            404,
            absl::StrCat("model: \"", absl::CHexEscape(model.substr(0, 64)),
                         "\" is not held by any connected worker (GET /v1/models lists them; "
                         "omit model for any)"),
            "invalid_request_error", "model_not_found"));
      }
    }
    auto ctx = CallContext(http, options.rpc_timeout);
    zfarm::v1::SubmitJobsResponse submitted;
    grpc::Status s = jobs->SubmitJobs(ctx.get(), parsed->batch, &submitted);
    if (!s.ok()) return r.Finish(OpenAiErrorFromGrpc(s.error_code(), s.error_message()));
    const std::string* host = http.Header("Host");
    std::string base =
        absl::StrCat(http.tls ? "https://" : "http://", host != nullptr ? *host : "localhost");
    LOG(INFO) << "event=openai_submit batch=" << submitted.batch_id()
              << " jobs=" << submitted.jobs_size();
    auto gen = std::make_shared<Generation>(r, jobs, options, AuthorizationOf(http),
                                            std::move(base), *std::move(parsed),
                                            std::move(submitted));
    gen->Start();
  };

  zfarm::http::RouteOptions wait;
  wait.deadline = options.images_timeout + absl::Seconds(30);  // our own 504 comes first
  router->AddAsync("POST", "/v1/images/generations", std::move(generate), wait)
      .Add("GET", "/v1/models", std::move(list_models));
}

}  // namespace zfarm::scheduler::http
