#include "worker/model/lora.h"

#include <c10/util/Exception.h>
#include <torch/nn/utils.h>

#include <cmath>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "glog/logging.h"
#include "proto/base/files.h"
#include "proto/base/status_macros.h"
#include "worker/io/file_util.h"

namespace zfarm::worker::model {
namespace {

// A LoRA file that cannot be used is the request's fault: INVALID_ARGUMENT, named.
absl::Status BadLora(const absl::Status& s, const std::string& name) {
  return absl::InvalidArgumentError(absl::StrCat("LoRA '", name, "': ", s.message()));
}

}  // namespace

LoraApplier::LoraApplier(torch::nn::Module& transformer, int max_files, int64_t max_bytes)
    : max_files_(std::max(1, max_files)), max_bytes_(max_bytes) {
  for (const auto& p : transformer.named_parameters(/*recurse=*/true)) {
    params_[p.key()] = p.value();
    shapes_[p.key()] = p.value().sizes().vec();
  }
}

const std::vector<int64_t>* LoraApplier::ParamShape(const std::string& name) const {
  auto it = shapes_.find(name);
  return it == shapes_.end() ? nullptr : &it->second;
}

std::vector<std::string> LoraApplier::active() const {
  std::vector<std::string> names;
  for (const Applied& a : applied_) names.push_back(a.name);
  return names;
}

int64_t LoraApplier::pristine_bytes() const {
  int64_t n = 0;
  for (const auto& [name, t] : pristine_) n += static_cast<int64_t>(t.nbytes());
  return n;
}

absl::StatusOr<std::shared_ptr<const LoraApplier::DeviceLora>> LoraApplier::Load(
    const Entry& e, const std::string& sha) {
  for (auto it = cache_.begin(); it != cache_.end(); ++it) {
    if ((*it)->sha256 == sha) {
      cache_.splice(cache_.end(), cache_, it);
      return cache_.back();
    }
  }
  absl::StatusOr<LoraFile> read = ReadLoraFile(e.path);
  if (!read.ok()) return BadLora(read.status(), e.name);
  LoraFile& f = *read;
  if (f.sha256 != sha) {
    return absl::InvalidArgumentError(absl::StrCat("LoRA '", e.name, "': ", e.path,
                                                   " changed since it was catalogued: sha256 ",
                                                   f.sha256, ", expected ", sha));
  }
  if (absl::Status s = CheckLoraAgainstModel(f, [this](const std::string& n) { return ParamShape(n); });
      !s.ok()) {
    return BadLora(s, e.name);
  }
  auto d = std::make_shared<DeviceLora>();
  d->sha256 = f.sha256;
  for (LoraModule& m : f.modules) {
    const at::Tensor& w = params_.at(m.module + ".weight");
    const auto opts = w.options().dtype(at::kFloat);
    DeviceLora::Module dm;
    dm.param = m.module + ".weight";
    dm.down = at::from_blob(m.down.data(), {m.rank, m.in}, at::kFloat).to(opts, false, true);
    dm.up = at::from_blob(m.up.data(), {m.out, m.rank}, at::kFloat).to(opts, false, true);
    dm.multiplier = m.multiplier;
    d->bytes += static_cast<int64_t>(dm.down.nbytes() + dm.up.nbytes());
    d->modules.push_back(std::move(dm));
  }
  cache_.push_back(d);
  int64_t total = 0;
  for (const auto& c : cache_) total += c->bytes;
  // Evict the oldest beyond the bounds (never the one just loaded).
  while (cache_.size() > 1 &&
         (static_cast<int>(cache_.size()) > max_files_ || total > max_bytes_)) {
    total -= cache_.front()->bytes;
    cache_.pop_front();
  }
  return std::shared_ptr<const DeviceLora>(d);
}

bool LoraApplier::RestoreAll() {
  // Every weight ever touched has its copy; restoring all of them also covers a set that
  // failed half-way.
  try {
    for (const auto& [param, original] : pristine_) params_.at(param).copy_(original);
  } catch (const c10::Error& e) {
    LOG(ERROR) << "event=lora_restore_failed error=\"" << e.what_without_backtrace() << "\"";
    return false;
  }
  touched_.clear();
  applied_.clear();
  return true;
}

// One straight story, kept together because its order is the guarantee: read and
// check every file first, then restore the weights no longer targeted, then apply;
// nothing changes unless everything was readable.
absl::StatusOr<std::vector<std::string>> LoraApplier::Apply(const std::vector<Entry>& set) {
  if (set.size() > static_cast<size_t>(kMaxLorasPerJob)) {
    return absl::InvalidArgumentError(absl::StrCat("loras: ", set.size(),
                                                   " LoRAs exceeds the limit of ", kMaxLorasPerJob));
  }
  std::vector<Applied> want;
  std::set<std::string> names;
  for (size_t i = 0; i < set.size(); ++i) {
    const Entry& e = set[i];
    if (!std::isfinite(e.scale) || std::fabs(e.scale) > kMaxLoraScale) {
      return absl::InvalidArgumentError(absl::StrCat("loras[", i, "].scale: ", e.scale,
                                                     " is outside [", -kMaxLoraScale, ", ",
                                                     kMaxLoraScale, "] (LoRA '", e.name, "')"));
    }
    if (!names.insert(e.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("loras[", i, "].name: '", e.name, "' is listed twice"));
    }
    std::string sha = e.sha256;
    if (sha.empty()) {
      absl::StatusOr<std::string> computed = base::Sha256OfFile(e.path);
      if (!computed.ok()) return BadLora(computed.status(), e.name);
      sha = *computed;
    }
    want.push_back({e.name, sha, e.scale});
  }
  std::vector<std::string> shas;
  for (const Applied& a : want) shas.push_back(a.sha256);
  if (want == applied_) return shas;
  try {
    at::NoGradGuard no_grad;
    // Everything is read and checked before any weight changes.
    std::vector<std::shared_ptr<const DeviceLora>> files;
    for (size_t i = 0; i < set.size(); ++i) {
      ZFARM_ASSIGN_OR_RETURN(auto d, Load(set[i], want[i].sha256));
      files.push_back(std::move(d));
    }
    std::map<std::string, std::vector<std::pair<const DeviceLora::Module*, float>>> updates;
    for (size_t i = 0; i < files.size(); ++i) {
      for (const DeviceLora::Module& m : files[i]->modules) {
        updates[m.param].emplace_back(&m, set[i].scale * m.multiplier);
      }
    }
    // Weights no longer targeted go back to their original bytes.
    for (const std::string& p : touched_) {
      if (updates.count(p) == 0) params_.at(p).copy_(pristine_.at(p));
    }
    touched_.clear();
    applied_.clear();
    for (const auto& [param, list] : updates) {
      at::Tensor& w = params_.at(param);
      auto it = pristine_.find(param);
      if (it == pristine_.end()) it = pristine_.emplace(param, w.clone()).first;
      // One GEMM per weight for the whole stack: [s1 up1 | s2 up2 ...] @ [down1; down2 ...],
      // scales applied in float32, added to the original in the GEMM's float32 accumulator
      // and rounded once into the weight (in place: graphs and fused views stay valid).
      std::vector<at::Tensor> ups, downs;
      for (const auto& [m, scale] : list) {
        ups.push_back(m->up * scale);
        downs.push_back(m->down);
      }
      at::Tensor up = at::cat(ups, 1).to(w.scalar_type());
      at::Tensor down = at::cat(downs, 0).to(w.scalar_type());
      touched_.push_back(param);
      at::addmm_out(w, it->second, up, down);
    }
    applied_ = std::move(want);
  } catch (const c10::OutOfMemoryError& e) {
    // Back to the original weights; their copies are then not needed and free the memory
    // for a smaller set (or none) on this device.
    if (RestoreAll()) pristine_.clear();
    return absl::ResourceExhaustedError(
        "out of device memory applying LoRAs (the original weights are restored)");
  } catch (const c10::Error& e) {
    RestoreAll();
    return absl::InternalError(absl::StrCat("applying LoRAs: ", e.what_without_backtrace()));
  }
  return shas;
}

}  // namespace zfarm::worker::model
