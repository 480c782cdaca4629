#ifndef ZFARM_PROTO_HTTP_METRICS_SERVER_H_
#define ZFARM_PROTO_HTTP_METRICS_SERVER_H_

// File: metrics_server.h
// GET /metrics in the Prometheus text format (0.0.4) for one registry, over
// HTTP or HTTPS/mutual TLS (HttpServer). Replaces prometheus-cpp's civetweb
// Exposer so the metrics port can use TLS like every other port. Every scrape
// also carries zfarm_build_info and the process_* metrics (process_metrics.h).
//
//   auto registry = std::make_shared<prometheus::Registry>();
//   ZFARM_ASSIGN_OR_RETURN(auto m, StartMetricsServer("0.0.0.0:9464", tls, registry));

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "prometheus/collectable.h"
#include "proto/http/http_server.h"
#include "proto/security/tls.h"

namespace zfarm::http {

// Errors name --metrics-listen. At most 64 connections (16 per client
// address); scrapes are answered on 2 handler threads.
absl::StatusOr<std::unique_ptr<HttpServer>> StartMetricsServer(
    const std::string& listen, const security::TlsFlags& tls,
    std::shared_ptr<prometheus::Collectable> collectable);

}  // namespace zfarm::http

#endif  // ZFARM_PROTO_HTTP_METRICS_SERVER_H_
