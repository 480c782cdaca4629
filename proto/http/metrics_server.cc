#include "proto/http/metrics_server.h"

#include <httplib.h>

#include <sstream>

#include "prometheus/text_serializer.h"

namespace zfarm::http {

absl::StatusOr<std::unique_ptr<HttpServer>> StartMetricsServer(
    const std::string& listen, const security::TlsFlags& tls,
    std::shared_ptr<prometheus::Collectable> collectable) {
  HttpServer::Options o;
  o.listen = listen;
  o.flag = "--metrics-listen";
  o.tls = tls;
  o.num_threads = 2;
  o.max_body_bytes = 4096;  // scrapes carry no body
  return HttpServer::Start(o, [collectable](httplib::Server& s) {
    s.Get("/metrics", [collectable](const httplib::Request&, httplib::Response& res) {
      std::ostringstream out;
      prometheus::TextSerializer().Serialize(out, collectable->Collect());
      res.set_header("Cache-Control", "no-store");
      res.set_content(out.str(), "text/plain; version=0.0.4; charset=utf-8");
    });
  });
}

}  // namespace zfarm::http
