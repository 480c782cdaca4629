#include "proto/http/metrics_server.h"

#include <sstream>
#include <vector>

#include "prometheus/text_serializer.h"
#include "proto/http/process_metrics.h"

namespace zfarm::http {

absl::StatusOr<std::unique_ptr<HttpServer>> StartMetricsServer(
    const std::string& listen, const security::TlsFlags& tls,
    std::shared_ptr<prometheus::Collectable> collectable) {
  HttpServer::Options o;
  o.listen = listen;
  o.flag = "--metrics-listen";
  o.tls = tls;
  o.handler_threads = 2;
  o.max_queued_requests = 16;
  o.max_connections = 64;
  o.max_connections_per_ip = 16;
  o.max_body_bytes = 4096;  // scrapes carry no body
  Router router;
  router.Add("GET", "/metrics", [collectable](const Request&) {
    std::ostringstream out;
    std::vector<prometheus::MetricFamily> families = collectable->Collect();
    for (prometheus::MetricFamily& f : ProcessMetricFamilies()) families.push_back(std::move(f));
    prometheus::TextSerializer().Serialize(out, families);
    Response r = Response::Text(200, out.str(), "text/plain; version=0.0.4; charset=utf-8");
    r.headers.emplace("Cache-Control", "no-store");
    return r;
  });
  return HttpServer::Start(o, std::move(router));
}

}  // namespace zfarm::http
