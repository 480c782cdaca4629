#ifndef ZFARM_PROTO_HTTP_PROCESS_METRICS_H_
#define ZFARM_PROTO_HTTP_PROCESS_METRICS_H_

// File: process_metrics.h
// The metric families every zfarm /metrics page carries besides the process's own
// registry (StartMetricsServer appends them to each scrape):
//
//   zfarm_build_info{version="0.1.0",binary="zfarm-scheduler"} 1
//   process_resident_memory_bytes, process_virtual_memory_bytes,
//   process_open_fds, process_max_fds, process_cpu_seconds_total,
//   process_start_time_seconds
//
// The process_* names and meanings are those of the official Prometheus client
// libraries' process collectors, so existing dashboards and alerts work. Read
// from /proc/self at each call (Linux); a value that cannot be read is left out.
// Thread-safe.

#include <string>
#include <vector>

#include "prometheus/metric_family.h"

namespace zfarm::http {

// `binary`: the label of zfarm_build_info (default: the process's name).
std::vector<prometheus::MetricFamily> ProcessMetricFamilies(const std::string& binary = "");

}  // namespace zfarm::http

#endif  // ZFARM_PROTO_HTTP_PROCESS_METRICS_H_
