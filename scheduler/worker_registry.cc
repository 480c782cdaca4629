#include "scheduler/worker_registry.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "glog/logging.h"
#include "proto/contract/contract.h"
#include "proto/contract/failure_policy.h"

namespace zfarm::scheduler {

namespace v1 = ::zfarm::v1;
using ::zfarm::contract::kUnhealthyAfterFailures;
using ::zfarm::contract::ToProto;

namespace {
absl::Status UnknownWorker(const std::string& name) {
  return absl::NotFoundError(absl::StrCat("worker_name: no worker \"", name, "\""));
}
}  // namespace

// ---------------------------------------------------------------- capabilities

bool WorkerRegistry::CanRun(const Worker& w, const v1::JobSpec& s, int64_t min_memory_bytes) {
  const v1::WorkerHello& h = w.hello;
  if (!s.model().empty() && s.model() != h.model()) return false;
  if (h.max_width_px() > 0 && s.width_px() > h.max_width_px()) return false;
  if (h.max_height_px() > 0 && s.height_px() > h.max_height_px()) return false;
  if (min_memory_bytes > 0 && h.memory_total_bytes() < min_memory_bytes) return false;
  auto has_feature = [&](absl::string_view f) {
    return std::find(h.features().begin(), h.features().end(), f) != h.features().end();
  };
  if (s.has_init_image() && !has_feature(kFeatureImg2Img)) return false;
  if (s.has_mask_image() && !has_feature(kFeatureInpaint)) return false;
  if (s.has_control() && !has_feature(kFeatureControlNet)) return false;
  if (s.loras_size() > 0) {
    if (!has_feature(kFeatureLora)) return false;
    for (const v1::LoraRef& l : s.loras()) {
      const bool known = std::any_of(h.loras().begin(), h.loras().end(),
                                     [&](const v1::LoraInfo& i) { return i.name() == l.name(); });
      if (!known) return false;
    }
  }
  return true;
}

std::string WorkerRegistry::LoraSetKey(std::vector<std::string> names) {
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  return absl::StrJoin(names, "\n");  // names hold no control characters
}

std::string WorkerRegistry::LoraSetKey(const v1::JobSpec& spec) {
  std::vector<std::string> names;
  for (const v1::LoraRef& l : spec.loras()) names.push_back(l.name());
  return LoraSetKey(std::move(names));
}

absl::Status WorkerRegistry::ValidateCapabilities(const v1::WorkerHello& hello) {
  if (hello.features_size() > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("hello.features: ", hello.features_size(), " entries exceed the limit of 64"));
  }
  for (const std::string& f : hello.features()) {
    if (f.empty() || f.size() > 128) {
      return absl::InvalidArgumentError("hello.features: each must be 1..128 bytes");
    }
  }
  if (hello.loras_size() > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("hello.loras: ", hello.loras_size(), " entries exceed the limit of 4096"));
  }
  return absl::OkStatus();
}

absl::Status WorkerRegistry::Heartbeat(Worker& w, const v1::WorkerHeartbeat& hb) {
  if (hb.has_lora_catalog() && hb.lora_catalog().loras_size() > 4096) {
    return absl::InvalidArgumentError(absl::StrCat("heartbeat.lora_catalog.loras: ",
                                                   hb.lora_catalog().loras_size(),
                                                   " entries exceed the limit of 4096"));
  }
  if (hb.active_loras_size() > 64) {
    return absl::InvalidArgumentError(absl::StrCat(
        "heartbeat.active_loras: ", hb.active_loras_size(), " entries exceed the limit of 64"));
  }
  w.hello.set_memory_free_bytes(hb.memory_free_bytes());
  if (hb.has_lora_catalog()) *w.hello.mutable_loras() = hb.lora_catalog().loras();
  w.active_loras.assign(hb.active_loras().begin(), hb.active_loras().end());
  return absl::OkStatus();
}

// ---------------------------------------------------------------- binding

absl::Status WorkerRegistry::Bind(const std::string& name, const std::string& principal,
                                  std::vector<Journal::Op>& ops) {
  auto owner = owners_.find(name);
  if (owner == owners_.end()) {
    owners_[name] = principal;
    ops.push_back({Journal::Op::Kind::kPutWorker, {}, {}, WorkerRecord{name, principal}});
    return absl::OkStatus();
  }
  if (owner->second == principal) return absl::OkStatus();
  LOG(WARNING) << "event=worker_name_refused worker=" << name << " principal=" << principal;
  return absl::PermissionDeniedError(
      absl::StrCat("hello.worker_name: \"", name,
                   "\" is registered to another principal; connect with that worker's token or "
                   "choose another --name"));
}

void WorkerRegistry::RestoreBindings(std::vector<WorkerRecord> records) {
  owners_.clear();
  for (WorkerRecord& w : records) owners_[w.worker_name] = std::move(w.principal);
}

// ---------------------------------------------------------------- sessions

WorkerRegistry::Worker* WorkerRegistry::Connected(const std::string& name) {
  Worker* w = Find(name);
  return w != nullptr && w->sink ? w : nullptr;
}

WorkerRegistry::Worker& WorkerRegistry::Connect(const v1::WorkerHello& hello,
                                                std::shared_ptr<WorkerSink> sink,
                                                std::set<std::string> kept, absl::Time now,
                                                absl::Time mono) {
  auto& slot = workers_[hello.worker_name()];
  auto w = std::make_unique<Worker>();
  if (slot) {
    w->jobs_done = slot->jobs_done;
    w->jobs_failed = slot->jobs_failed;
  }
  w->hello = hello;
  w->hello.clear_held_leases();
  w->session = next_session_++;
  w->sink = std::move(sink);
  w->connect_time = w->last_seen = now;
  w->last_seen_mono = mono;
  w->leases = std::move(kept);
  slot = std::move(w);
  sessions_[slot->session] = slot.get();
  UpdateFree(*slot);
  return *slot;
}

WorkerRegistry::Worker* WorkerRegistry::FindSession(uint64_t session) {
  auto it = sessions_.find(session);
  return it == sessions_.end() ? nullptr : it->second;
}

WorkerRegistry::Worker* WorkerRegistry::Find(const std::string& name) {
  auto it = workers_.find(name);
  return it == workers_.end() ? nullptr : it->second.get();
}

void WorkerRegistry::Seen(Worker& w, absl::Time now, absl::Time mono) {
  w.last_seen = now;
  w.last_seen_mono = mono;
}

std::set<std::string> WorkerRegistry::Lost(Worker& w, absl::Time now, absl::Time mono) {
  free_.erase(w.name());
  sessions_.erase(w.session);
  w.state = v1::WORKER_STATE_LOST;
  w.lost_time = now;
  w.lost_mono = mono;
  w.sink.reset();
  std::set<std::string> leases = std::move(w.leases);
  w.leases.clear();
  return leases;
}

void WorkerRegistry::DisconnectAll(const absl::Status& status, absl::Time now, absl::Time mono) {
  for (auto& [session, w] : sessions_) {
    if (w->sink) w->sink->Close(status);
    w->sink.reset();
    w->state = v1::WORKER_STATE_LOST;
    w->lost_time = now;
    w->lost_mono = mono;
    w->leases.clear();
  }
  sessions_.clear();
  free_.clear();
}

std::vector<WorkerRegistry::Worker*> WorkerRegistry::Silent(absl::Time mono,
                                                            absl::Duration timeout) {
  std::vector<Worker*> silent;
  for (auto& [session, w] : sessions_) {
    if (mono - w->last_seen_mono > timeout) silent.push_back(w);
  }
  return silent;
}

void WorkerRegistry::PruneLost(absl::Time mono, absl::Duration ttl) {
  for (auto it = workers_.begin(); it != workers_.end();) {
    if (it->second->state == v1::WORKER_STATE_LOST && it->second->lost_mono + ttl <= mono) {
      workers_.erase(it++);
    } else {
      ++it;
    }
  }
}

// ---------------------------------------------------------------- leases

void WorkerRegistry::AddLease(Worker& w, const std::string& job_id) {
  w.leases.insert(job_id);
  UpdateFree(w);
}

void WorkerRegistry::ReleaseLease(const std::string& worker_name, const std::string& job_id) {
  Worker* w = Find(worker_name);
  if (w != nullptr && w->leases.erase(job_id)) UpdateFree(*w);
}

void WorkerRegistry::UpdateFree(Worker& w) {
  if (w.state == v1::WORKER_STATE_READY && w.sink && w.HasFreeSlot()) {
    free_.insert(w.name());
  } else {
    free_.erase(w.name());
  }
}

// ---------------------------------------------------------------- health, drain

void WorkerRegistry::CountDeviceFailure(Worker& w, const std::string& why) {
  if (++w.consecutive_failures >= kUnhealthyAfterFailures && w.state == v1::WORKER_STATE_READY) {
    w.state = v1::WORKER_STATE_UNHEALTHY;
    UpdateFree(w);
    LOG(WARNING) << "event=worker_unhealthy worker=" << w.name() << " reason="
                 << kUnhealthyAfterFailures << "_failures last=\"" << why << "\"";
  }
}

void WorkerRegistry::CountSuccess(Worker& w) {
  ++w.jobs_done;
  w.consecutive_failures = 0;
}

void WorkerRegistry::ReportHealth(Worker& w, bool healthy, const std::string& message) {
  if (!healthy && w.state == v1::WORKER_STATE_READY) {
    w.state = v1::WORKER_STATE_UNHEALTHY;
    LOG(WARNING) << "event=worker_unhealthy worker=" << w.name() << " message=\"" << message
                 << "\"";
  } else if (healthy && w.state == v1::WORKER_STATE_UNHEALTHY) {
    w.state = v1::WORKER_STATE_READY;
    w.consecutive_failures = 0;
  }
  UpdateFree(w);
}

absl::StatusOr<WorkerRegistry::Worker*> WorkerRegistry::Drain(const std::string& name,
                                                              bool* changed) {
  Worker* w = Find(name);
  if (w == nullptr) return UnknownWorker(name);
  if (w->state == v1::WORKER_STATE_LOST) {
    return absl::FailedPreconditionError(absl::StrCat("worker ", name, " is LOST"));
  }
  *changed = w->state != v1::WORKER_STATE_DRAINING;
  if (!*changed) return w;
  w->state = v1::WORKER_STATE_DRAINING;
  UpdateFree(*w);
  if (w->sink) {
    v1::SchedulerMessage m;
    m.mutable_drain();
    w->sink->Send(m);
  }
  LOG(INFO) << "event=worker_drain worker=" << name;
  return w;
}

absl::StatusOr<WorkerRegistry::Worker*> WorkerRegistry::Resume(const std::string& name,
                                                               bool* changed) {
  Worker* w = Find(name);
  if (w == nullptr) return UnknownWorker(name);
  *changed = w->state == v1::WORKER_STATE_DRAINING;
  if (!*changed) return w;
  w->state = v1::WORKER_STATE_READY;
  if (w->sink) {
    // Sent now, before any assignment (those go out after the journal commit),
    // so the worker accepts them.
    v1::SchedulerMessage m;
    m.mutable_resume();
    w->sink->Send(m);
  }
  UpdateFree(*w);
  LOG(INFO) << "event=worker_resume worker=" << name;
  return w;
}

// ---------------------------------------------------------------- views

v1::WorkerInfo WorkerRegistry::Info(const Worker& w) {
  v1::WorkerInfo i;
  i.set_worker_name(w.name());
  i.set_device(w.hello.device());
  i.set_device_name(w.hello.device_name());
  i.set_state(w.state);
  i.set_jobs_done(w.jobs_done);
  i.set_jobs_failed(w.jobs_failed);
  *i.mutable_last_seen_time() = ToProto(w.last_seen);
  i.set_memory_total_bytes(w.hello.memory_total_bytes());
  i.set_memory_free_bytes(w.hello.memory_free_bytes());
  i.set_model(w.hello.model());
  i.set_model_fingerprint(w.hello.model_fingerprint());
  i.set_capacity(w.hello.capacity());
  i.set_version(w.hello.version());
  *i.mutable_connect_time() = ToProto(w.connect_time);
  *i.mutable_loras() = w.hello.loras();
  for (const std::string& a : w.active_loras) i.add_active_loras(a);
  *i.mutable_features() = w.hello.features();
  i.set_dtype(w.hello.dtype());
  return i;
}

std::vector<const WorkerRegistry::Worker*> WorkerRegistry::All() const {
  std::vector<const Worker*> out;
  out.reserve(workers_.size());
  for (const auto& [name, w] : workers_) out.push_back(w.get());
  std::sort(out.begin(), out.end(),
            [](const Worker* a, const Worker* b) { return a->name() < b->name(); });
  return out;
}

std::map<int, int64_t> WorkerRegistry::CountByState() const {
  std::map<int, int64_t> by_state;
  for (const auto& [name, w] : workers_) ++by_state[w->state];
  return by_state;
}

}  // namespace zfarm::scheduler
