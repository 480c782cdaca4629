#ifndef ZFARM_SCHEDULER_HTTP_EMBEDDED_ASSETS_H_
#define ZFARM_SCHEDULER_HTTP_EMBEDDED_ASSETS_H_

// File: embedded_assets.h
// The files of scheduler/http/assets/ (the dashboard's page, script and style,
// the OpenAPI document), compiled into the binary at build time
// (embed_assets.cmake), so the scheduler serves them with no files beside it
// and no network. Immutable; thread-safe.

#include <vector>

#include "absl/strings/string_view.h"

namespace zfarm::scheduler::http {

struct EmbeddedAsset {
  absl::string_view name;  // file name, e.g. "dashboard.js"
  absl::string_view data;  // its bytes
};

const std::vector<EmbeddedAsset>& EmbeddedAssets();

// The asset called `name`, or nullptr.
inline const EmbeddedAsset* FindAsset(absl::string_view name) {
  for (const auto& a : EmbeddedAssets()) {
    if (a.name == name) return &a;
  }
  return nullptr;
}

}  // namespace zfarm::scheduler::http

#endif  // ZFARM_SCHEDULER_HTTP_EMBEDDED_ASSETS_H_
