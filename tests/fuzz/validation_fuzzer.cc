// Fuzz target: edge validation of client requests (scheduler/validation.h) on a
// SubmitJobRequest parsed from the fuzz bytes.
//
// Properties checked (abort() on violation, so libFuzzer reports it):
//   - never crashes on any parseable request;
//   - ValidateRequestId accepts exactly the ids of <= 256 printable ASCII bytes;
//   - an accepted spec satisfies every documented limit (prompt 1..4000 bytes of
//     UTF-8, sizes multiples of 16 in [256, 2048], steps [1, 50], guidance finite in
//     [0, 20], output name rules, priority, labels, deadline, no webhook);
//   - normalization only fills the documented defaults and is idempotent: the
//     normalized spec validates again unchanged, with the same fingerprint;
//   - a refused spec gets INVALID_ARGUMENT whose message starts with the name of a
//     JobSpec field ("spec.<field>: ").
//
// libFuzzer build (clang): -DZFARM_BUILD_FUZZERS=ON -> tests/fuzz/validation_fuzzer.
// Normal build: validation_fuzz_replay runs the same checks over the files of the
// directories given on its command line (the committed seed corpus).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/match.h"
#include "google/protobuf/stubs/logging.h"
#include "google/protobuf/util/message_differencer.h"
#include "scheduler/validation.h"
#include "zfarm/v1/job_service.pb.h"

namespace {

using zfarm::scheduler::Limits;

void Die(const char* what, const std::string& detail = "") {
  std::fprintf(stderr, "validation_fuzzer: property violated: %s %s\n", what, detail.c_str());
  std::abort();
}

bool PrintableAscii(const std::string& s) {
  for (unsigned char c : s) {
    if (c < 0x21 || c > 0x7E) return false;
  }
  return true;
}

// Every limit an accepted (normalized) spec must satisfy.
void CheckAccepted(const Limits& l, const zfarm::v1::JobSpec& s) {
  using zfarm::scheduler::IsValidUtf8;
  if (s.prompt().empty() || static_cast<int>(s.prompt().size()) > l.max_prompt_bytes ||
      !IsValidUtf8(s.prompt())) {
    Die("accepted a bad prompt");
  }
  if (static_cast<int>(s.negative_prompt().size()) > l.max_prompt_bytes ||
      !IsValidUtf8(s.negative_prompt())) {
    Die("accepted a bad negative_prompt");
  }
  for (int v : {s.width_px(), s.height_px()}) {
    if (v < l.min_size_px || v > l.max_size_px || v % 16 != 0) Die("accepted a bad size");
  }
  if (s.steps() < l.min_steps || s.steps() > l.max_steps) Die("accepted bad steps");
  if (!std::isfinite(s.guidance_scale()) || s.guidance_scale() < 0 ||
      s.guidance_scale() > l.max_guidance) {
    Die("accepted a bad guidance_scale");
  }
  const std::string& n = s.output_name();
  if (static_cast<int>(n.size()) > l.max_output_name_bytes || absl::StrContains(n, "..") ||
      !IsValidUtf8(n)) {
    Die("accepted a bad output_name", n);
  }
  for (unsigned char c : n) {
    if (c == '/' || c == '\\' || c < 0x20 || c == 0x7F) Die("accepted output_name char", n);
  }
  if (s.priority() < l.min_priority || s.priority() > l.max_priority) Die("accepted priority");
  if (s.labels_size() > l.max_labels) Die("accepted too many labels");
  for (const auto& [k, v] : s.labels()) {
    if (k.empty() || absl::StrContains(k, "=") || !IsValidUtf8(k) || !IsValidUtf8(v) ||
        static_cast<int>(k.size()) > l.max_label_bytes ||
        static_cast<int>(v.size()) > l.max_label_bytes) {
      Die("accepted a bad label");
    }
  }
  if (s.has_deadline() && (s.deadline().seconds() <= 0 || s.deadline().nanos() < 0 ||
                           s.deadline().nanos() > 999'999'999)) {
    Die("accepted a bad deadline");
  }
  if (!s.webhook_url().empty()) Die("accepted a webhook without an allow-list");
}

constexpr const char* kFields[] = {
    "prompt", "negative_prompt", "width_px", "height_px", "steps",    "guidance_scale", "seed",
    "model",  "output_name",     "priority", "labels",    "deadline", "webhook_url"};

void CheckOne(const uint8_t* data, size_t size) {
  zfarm::v1::SubmitJobRequest req;
  if (!req.ParseFromArray(data, static_cast<int>(size))) return;
  const Limits limits;

  absl::Status id = zfarm::scheduler::ValidateRequestId(limits, "request_id", req.request_id());
  bool id_ok = static_cast<int>(req.request_id().size()) <= limits.max_request_id_bytes &&
               PrintableAscii(req.request_id());
  if (id.ok() != id_ok) Die("ValidateRequestId disagrees with its documented rule");
  if (!id.ok() && (id.code() != absl::StatusCode::kInvalidArgument ||
                   !absl::StartsWith(id.message(), "request_id: "))) {
    Die("request_id error does not name the field");
  }

  zfarm::v1::JobSpec spec = req.spec();
  absl::Status s = zfarm::scheduler::ValidateAndNormalizeSpec(limits, "spec", &spec);
  if (!s.ok()) {
    if (s.code() != absl::StatusCode::kInvalidArgument) Die("refusal is not INVALID_ARGUMENT");
    bool named = false;
    for (const char* f : kFields) {
      named |= absl::StartsWith(s.message(), std::string("spec.") + f + ": ");
    }
    if (!named) Die("refusal does not name a field", std::string(s.message()));
    return;
  }
  CheckAccepted(limits, spec);
  // Normalization fills only the documented defaults.
  zfarm::v1::JobSpec expect = req.spec();
  if (expect.width_px() == 0) expect.set_width_px(1024);
  if (expect.height_px() == 0) expect.set_height_px(1024);
  if (expect.steps() == 0) expect.set_steps(8);
  // (Map order on the wire is unspecified: compare messages, not bytes.)
  if (!google::protobuf::util::MessageDifferencer::Equals(expect, spec)) {
    Die("normalization changed more than the defaults");
  }
  zfarm::v1::JobSpec again = spec;
  if (!zfarm::scheduler::ValidateAndNormalizeSpec(limits, "spec", &again).ok()) {
    Die("a normalized spec is refused");
  }
  if (!google::protobuf::util::MessageDifferencer::Equals(again, spec)) {
    Die("normalization not idempotent");
  }
  std::string fp = zfarm::scheduler::SpecFingerprint(spec);
  if (fp.size() != 64 || fp != zfarm::scheduler::SpecFingerprint(again)) {
    Die("fingerprint not a stable sha256 hex");
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // Parsing invalid UTF-8 into proto3 strings logs an error per input.
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  CheckOne(data, size);
  return 0;
}

#ifndef ZFARM_LIBFUZZER
// Replay mode: every file under the directories (or files) given.
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

int main(int argc, char** argv) {
  LLVMFuzzerInitialize(&argc, &argv);
  int n = 0;
  for (int i = 1; i < argc; ++i) {
    std::vector<std::filesystem::path> files;
    if (std::filesystem::is_directory(argv[i])) {
      for (const auto& e : std::filesystem::recursive_directory_iterator(argv[i])) {
        if (e.is_regular_file()) files.push_back(e.path());
      }
    } else {
      files.emplace_back(argv[i]);
    }
    for (const auto& f : files) {
      std::ifstream in(f, std::ios::binary);
      std::string bytes((std::istreambuf_iterator<char>(in)), {});
      CheckOne(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
      ++n;
    }
  }
  std::printf("validation_fuzz_replay: %d inputs, all properties held\n", n);
  return n > 0 ? 0 : 1;
}
#endif
