#ifndef ZFARM_SCHEDULER_HTTP_DASHBOARD_H_
#define ZFARM_SCHEDULER_HTTP_DASHBOARD_H_

// File: dashboard.h
// The farm dashboard on the REST gateway's port: a hand-written page, script
// and style embedded in the binary (embedded_assets.h; no CDN, no network)
// and the JSON routes behind it, all through the same in-process gRPC calls
// (and so the same bearer-token auth) as the REST routes.
//
//   GET /                       the page (queue, workers, recent jobs, a job's
//                               page at #/jobs/<id>, a submit form)
//   GET /ui/{file}              its script and style
//   GET /v1/farm                -> summary: {"queue": {"by_state": {queued,
//                               assigned, running}, "by_priority": [{"priority",
//                               "queued", "assigned", "running"}]}, "workers":
//                               [{"worker_name", "device", "device_name",
//                               "state", "model", "jobs_done", "jobs_failed",
//                               "last_seen_time", "current_jobs": [{"job_id",
//                               "step", "total_steps"}]}], "recent_jobs": [Job]}
//   GET /v1/farm/events         text/event-stream: "event: farm" with the
//                               summary at once and whenever it changes
//                               (checked every Options::poll_interval)
//   GET /v1/jobs/{id}/thumbnail image/png (of a PNG, JPEG or WebP result),
//                               longer side 256 px: made once per
//                               result (keyed by its sha256) and cached
//   GET /v1/jobs/{id}/metadata  -> {"media_type", "text": {"parameters": A1111
//                               text, "zfarm": JSON}} read back from the file
//                               (PNG text, JPEG/WebP EXIF and XMP)
//
// The page asks for a token when a call answers 401 and keeps it in the
// tab's sessionStorage; it sends it as "Authorization: Bearer" on every call
// (event streams are read with fetch(), not EventSource, for that reason).
// Every user string is inserted as text (textContent), never as markup, and
// the page is served with a Content-Security-Policy allowing only its own
// script and style.
//
// Thread-safe.

#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "proto/http/responder.h"
#include "proto/http/router.h"
#include "zfarm/v1/admin_service.grpc.pb.h"
#include "zfarm/v1/job_service.grpc.pb.h"

namespace zfarm::scheduler::http {

class Dashboard {
 public:
  struct Options {
    absl::Duration rpc_timeout = absl::Seconds(30);
    // Thumbnails are files <sha256>.png here (created if missing); empty =
    // kept in memory (at most max_memory_thumbnails).
    std::string thumbnail_dir;
    int max_memory_thumbnails = 512;
    int thumbnail_px = 256;
    absl::Duration poll_interval = absl::Milliseconds(500);
    int max_feeds = 64;  // open /v1/farm/events streams; more get 503
    int recent_jobs = 24;
  };

  // INVALID_ARGUMENT when thumbnail_dir cannot be created. The stubs must
  // outlive the dashboard.
  static absl::StatusOr<std::unique_ptr<Dashboard>> Create(const Options& options,
                                                           zfarm::v1::JobService::Stub* jobs,
                                                           zfarm::v1::AdminService::Stub* admin);
  ~Dashboard();  // Stop()

  void AddRoutes(zfarm::http::Router* router);
  // Ends the event streams and stops the feed thread. Idempotent.
  void Stop();

  int64_t thumbnails_made() const;

 private:
  struct Feed {
    std::string authorization;
    std::optional<zfarm::http::EventStream> stream;  // set before it is listed
    std::string last;  // summary last sent
  };

  Dashboard(const Options& options, zfarm::v1::JobService::Stub* jobs,
            zfarm::v1::AdminService::Stub* admin);
  zfarm::http::Response Page(const zfarm::http::Request& req);
  zfarm::http::Response Asset(const zfarm::http::Request& req);
  zfarm::http::Response Summary(const zfarm::http::Request& req);
  void Events(const zfarm::http::Request& req, zfarm::http::Responder r);
  // GetJob of the request's {id} into *job; FAILED_PRECONDITION (naming
  // `what`) unless it SUCCEEDED.
  grpc::Status SucceededJob(const zfarm::http::Request& req, const std::string& what,
                            zfarm::v1::Job* job);
  zfarm::http::Response Thumbnail(const zfarm::http::Request& req);
  zfarm::http::Response Metadata(const zfarm::http::Request& req);
  // The summary JSON for a caller into *out, or the failed call's status.
  grpc::Status Snapshot(const std::string& authorization, std::string* out);
  void FeedLoop();

  const Options options_;
  zfarm::v1::JobService::Stub* const jobs_;
  zfarm::v1::AdminService::Stub* const admin_;

  mutable absl::Mutex mu_;
  std::list<std::shared_ptr<Feed>> feeds_ ABSL_GUARDED_BY(mu_);
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  // In-memory thumbnails by sha256 (no thumbnail_dir).
  std::map<std::string, std::string> memory_thumbs_ ABSL_GUARDED_BY(mu_);
  int64_t thumbnails_made_ ABSL_GUARDED_BY(mu_) = 0;
  // Held while one thumbnail is made, so each is made once.
  absl::Mutex make_mu_;

  absl::Notification stop_;
  std::thread feed_thread_;
};

}  // namespace zfarm::scheduler::http

#endif  // ZFARM_SCHEDULER_HTTP_DASHBOARD_H_
