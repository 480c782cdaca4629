#include "scheduler/job_store.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "proto/contract/contract.h"

namespace zfarm::scheduler {

namespace v1 = ::zfarm::v1;
using ::zfarm::contract::FromProto;
using ::zfarm::contract::IsFinal;
using ::zfarm::contract::ToProto;

namespace {


// FAILED and CANCELLED jobs wrote no result: their output path is free again.
bool ReleasesOutput(v1::JobState s) {
  return s == v1::JOB_STATE_FAILED || s == v1::JOB_STATE_CANCELLED;
}

// Retention caps: when `items` (time, id) hold more than `cap` (> 0), moves the
// ids of the oldest surplus into `out`; returns how many.
int64_t TakeOldestBeyond(int64_t cap, std::vector<std::pair<absl::Time, std::string>>* items,
                         std::vector<std::string>* out) {
  const int64_t surplus = static_cast<int64_t>(items->size()) - cap;
  if (cap <= 0 || surplus <= 0) return 0;
  std::nth_element(items->begin(), items->begin() + surplus, items->end());
  for (int64_t i = 0; i < surplus; ++i) out->push_back(std::move((*items)[i].second));
  return surplus;
}

void SetError(v1::Job& job, v1::FailureReason reason, const std::string& message, bool retryable) {
  job.mutable_error()->set_reason(reason);
  job.mutable_error()->set_message(message);
  job.mutable_error()->set_retryable(retryable);
}

}  // namespace

bool IsLeased(v1::JobState s) {
  return s == v1::JOB_STATE_ASSIGNED || s == v1::JOB_STATE_RUNNING;
}
// The extension follows the job's output format (the worker checks it does).
std::string OutputPathFor(absl::Time submit_time, const std::string& name,
                          v1::OutputFormat format) {
  const char* ext = format == v1::OUTPUT_FORMAT_JPEG   ? ".jpg"
                    : format == v1::OUTPUT_FORMAT_WEBP ? ".webp"
                                                       : ".png";
  return absl::StrCat(absl::FormatTime("%Y-%m-%d", submit_time, absl::UTCTimeZone()), "/", name,
                      ext);
}

const char* JobStore::EventName(Event e) {
  switch (e) {
    case Event::kDispatch: return "Dispatch";
    case Event::kReadopt: return "Readopt";
    case Event::kStart: return "Start";
    case Event::kProgress: return "Progress";
    case Event::kCommit: return "Commit";
    case Event::kRequestCancel: return "RequestCancel";
    case Event::kRequeue: return "Requeue";
    case Event::kRecover: return "Recover";
    case Event::kSucceed: return "Succeed";
    case Event::kFail: return "Fail";
    case Event::kCancel: return "Cancel";
  }
  return "?";
}

// ---------------------------------------------------------------- the table

absl::StatusOr<JobStore::Effects> JobStore::Transition(JobRecord& r, const Change& c) {
  v1::Job& j = r.job;
  const v1::JobState from = j.state();
  const bool queued = from == v1::JOB_STATE_QUEUED;
  const bool leased = IsLeased(from);
  bool legal = false;
  switch (c.event) {
    case Event::kDispatch:
    case Event::kReadopt:
      legal = queued;
      break;
    case Event::kStart:
      legal = from == v1::JOB_STATE_ASSIGNED;
      break;
    case Event::kProgress:
      legal = from == v1::JOB_STATE_RUNNING;
      break;
    case Event::kCommit:
      legal = leased && !r.commit_pending;
      break;
    case Event::kSucceed:
      legal = from == v1::JOB_STATE_RUNNING && r.commit_pending;
      break;
    case Event::kRequestCancel:
    case Event::kRequeue:
    case Event::kRecover:
    case Event::kFail:
      legal = leased;
      break;
    case Event::kCancel:
      legal = queued || leased;
      break;
  }
  if (!legal) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job ", j.job_id(), ": ", EventName(c.event), " is not allowed in state ",
        v1::JobState_Name(from), r.commit_pending ? " (commit pending)" : ""));
  }

  Effects fx;
  const std::string id = j.job_id();
  switch (c.event) {
    case Event::kDispatch:
      queue_.Take(id);  // ends the owner's turn (fair share)
      j.set_state(v1::JOB_STATE_ASSIGNED);
      j.set_attempt(j.attempt() + 1);
      j.set_worker(c.worker);
      j.clear_progress();
      break;
    case Event::kReadopt:
      queue_.Remove(id);
      j.set_state(v1::JOB_STATE_ASSIGNED);
      j.set_worker(c.worker);
      break;
    case Event::kStart:
      j.set_state(v1::JOB_STATE_RUNNING);
      *j.mutable_start_time() = ToProto(c.now);
      break;
    case Event::kProgress:
      j.mutable_progress()->set_step(c.step);
      j.mutable_progress()->set_total_steps(c.total_steps);
      fx.event_type = v1::JOB_EVENT_TYPE_PROGRESS;
      return fx;  // not journaled
    case Event::kCommit:
      if (from == v1::JOB_STATE_ASSIGNED) {
        j.set_state(v1::JOB_STATE_RUNNING);
        *j.mutable_start_time() = ToProto(c.now);
      }
      r.commit_pending = true;
      *j.mutable_result() = c.result;
      j.mutable_result()->set_path(OutputPath(r));
      break;
    case Event::kRequestCancel:
      r.cancel_requested = true;
      SetError(j, c.reason, c.message, false);
      break;
    case Event::kRequeue:
    case Event::kRecover:
      fx.released_worker = j.worker();
      j.set_state(v1::JOB_STATE_QUEUED);
      j.clear_progress();
      r.commit_pending = false;
      j.clear_result();
      if (c.event == Event::kRequeue) {
        SetError(j, c.reason, c.message, true);
      } else {
        j.clear_worker();  // the lease died with the old process
      }
      if (!queue_.Contains(id)) {
        queue_.Push(id, j.spec().priority(), r.seq, FromProto(j.create_time()), j.owner());
      }
      break;
    case Event::kSucceed:
    case Event::kFail:
    case Event::kCancel: {
      if (leased) fx.released_worker = j.worker();
      queue_.Remove(id);
      j.set_state(c.event == Event::kSucceed ? v1::JOB_STATE_SUCCEEDED
                  : c.event == Event::kFail  ? v1::JOB_STATE_FAILED
                                             : v1::JOB_STATE_CANCELLED);
      r.commit_pending = false;
      *j.mutable_end_time() = ToProto(c.now);
      if (c.event == Event::kSucceed) {
        j.clear_error();
      } else {
        j.clear_result();
        SetError(j, c.reason, c.message, false);
      }
      fx.final = true;
      break;
    }
  }
  fx.ops.push_back({Journal::Op::Kind::kPutJob, r, {}, {}});
  return fx;
}

// ---------------------------------------------------------------- admission

void JobStore::Index(JobRecord& r) {
  const std::string& id = r.job.job_id();
  by_seq_[r.seq] = id;
  if (!r.job.spec().output_name().empty()) outputs_[OutputPath(r)] = id;
  if (r.job.state() == v1::JOB_STATE_QUEUED && !queue_.Contains(id)) {
    queue_.Push(id, r.job.spec().priority(), r.seq, FromProto(r.job.create_time()),
                r.job.owner());
  }
  if (!IsFinal(r.job.state()) && r.job.spec().has_deadline()) {
    deadlines_.emplace(FromProto(r.job.spec().deadline()), id);
  }
}

std::vector<Journal::Op> JobStore::Admit(JobRecord r, std::optional<RequestRecord> request) {
  std::vector<Journal::Op> ops;
  if (request) {
    ops.push_back({Journal::Op::Kind::kPutRequest, {}, *request, {}});
    RequestKey key{request->owner, request->request_id};
    requests_[std::move(key)] = *std::move(request);
  }
  const std::string id = r.job.job_id();
  auto [it, inserted] = jobs_.emplace(id, std::move(r));
  Index(it->second);
  ops.push_back({Journal::Op::Kind::kPutJob, it->second, {}, {}});
  return ops;
}

void JobStore::Unadmit(const std::string& id) {
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return;
  const JobRecord& rec = it->second;
  queue_.Remove(id);
  by_seq_.erase(rec.seq);
  requests_.erase(RequestKey(rec.job.owner(), rec.job.request_id()));
  if (auto o = outputs_.find(OutputPath(rec)); o != outputs_.end() && o->second == id) {
    outputs_.erase(o);
  }
  for (auto d = deadlines_.begin(); d != deadlines_.end();) {
    d = d->second == id ? deadlines_.erase(d) : std::next(d);
  }
  jobs_.erase(it);
}

void JobStore::Clear() {
  for (const auto& [id, r] : jobs_) queue_.Remove(id);
  jobs_.clear();
  by_seq_.clear();
  requests_.clear();
  deadlines_.clear();
  outputs_.clear();
}

// ---------------------------------------------------------------- lookup

JobRecord* JobStore::Find(const std::string& id) {
  auto it = jobs_.find(id);
  return it == jobs_.end() ? nullptr : &it->second;
}
const JobRecord* JobStore::Find(const std::string& id) const {
  auto it = jobs_.find(id);
  return it == jobs_.end() ? nullptr : &it->second;
}

v1::Job JobStore::View(const JobRecord& r) const {
  v1::Job j = r.job;
  j.set_queue_position(r.job.state() == v1::JOB_STATE_QUEUED ? queue_.Position(r.job.job_id())
                                                             : -1);
  return j;
}

std::vector<JobRecord*> JobStore::Select(const std::string& job_id, const std::string& batch_id,
                                         const std::string& label) {
  std::vector<JobRecord*> out;
  if (!job_id.empty()) {
    if (JobRecord* r = Find(job_id)) out.push_back(r);
    return out;
  }
  std::string key, value;
  if (!label.empty()) {
    auto eq = label.find('=');
    key = label.substr(0, eq);
    value = label.substr(eq + 1);
  }
  for (auto& [seq, id] : by_seq_) {
    JobRecord& r = jobs_.at(id);
    if (!batch_id.empty() && r.job.batch_id() != batch_id) continue;
    if (!label.empty()) {
      auto l = r.job.spec().labels().find(key);
      if (l == r.job.spec().labels().end() || l->second != value) continue;
    }
    out.push_back(&r);
  }
  return out;
}

std::map<int, int64_t> JobStore::CountByState() const {
  std::map<int, int64_t> by_state;
  for (const auto& [id, r] : jobs_) ++by_state[r.job.state()];
  return by_state;
}

const RequestRecord* JobStore::FindRequest(const std::string& owner,
                                           const std::string& request_id) const {
  auto it = requests_.find(RequestKey(owner, request_id));
  return it == requests_.end() ? nullptr : &it->second;
}

// ---------------------------------------------------------------- output names

std::string JobStore::OutputPath(const JobRecord& r) {
  return OutputPathFor(FromProto(r.job.create_time()),
                       r.job.spec().output_name().empty() ? r.job.job_id()
                                                          : r.job.spec().output_name(),
                       r.job.spec().output_format());
}

absl::Status JobStore::OutputPathFree(const std::string& path, const std::string& owner,
                                      const std::string& field) const {
  if (auto it = outputs_.find(path); it != outputs_.end()) {
    auto j = jobs_.find(it->second);
    if (j != jobs_.end() && !ReleasesOutput(j->second.job.state())) {
      return absl::AlreadyExistsError(absl::StrCat(
          field, "spec.output_name: ", path, " is already the output of ",
          j->second.job.owner() == owner ? absl::StrCat("job ", j->first)
                                         : std::string("another principal's job"),
          "; choose another output_name"));
    }
  }
  // The output root is not looked at here: a pruned job's file can only collide
  // after an early prune, and the worker's no-replace rename catches that. (A
  // lookup now would also leave an NFS client caching "no such file" for the very
  // name the result check must find a few seconds later.)
  return absl::OkStatus();
}

// ---------------------------------------------------------------- periodic

std::vector<std::string> JobStore::TakeDueDeadlines(absl::Time now) {
  std::vector<std::string> due;
  while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
    std::string id = deadlines_.begin()->second;
    deadlines_.erase(deadlines_.begin());
    const JobRecord* r = Find(id);
    if (r == nullptr || IsFinal(r->job.state())) continue;
    due.push_back(std::move(id));
  }
  return due;
}

JobStore::Pruned JobStore::Prune(absl::Time now, absl::Duration retention, int64_t max_finished,
                                 absl::Duration tombstone_ttl, int64_t max_tombstones,
                                 std::vector<Journal::Op>& ops) {
  Pruned out;
  std::vector<std::string> prune;
  std::vector<std::pair<absl::Time, std::string>> kept;  // finished, within retention
  for (const auto& [id, r] : jobs_) {
    if (!IsFinal(r.job.state())) continue;
    const absl::Time end = FromProto(r.job.end_time());
    if (end + retention <= now) {
      prune.push_back(id);
    } else {
      kept.emplace_back(end, id);
    }
  }
  // Over --max-finished-jobs: the oldest-ended go too.
  out.jobs_over_cap = TakeOldestBeyond(max_finished, &kept, &prune);
  for (const auto& id : prune) {
    JobRecord& r = jobs_.at(id);
    Journal::Op op{Journal::Op::Kind::kDeleteJob, {}, {}, {}};
    op.job.job.set_job_id(id);
    ops.push_back(std::move(op));
    by_seq_.erase(r.seq);
    // Its file stays, and the worker's no-replace rename still finds it on disk.
    if (auto o = outputs_.find(OutputPath(r)); o != outputs_.end() && o->second == id) {
      outputs_.erase(o);
    }
    jobs_.erase(id);
  }
  out.jobs = static_cast<int64_t>(prune.size());
  // Tombstones whose job is gone, by "<owner>\0<request_id>" (TakeOldestBeyond's ids).
  std::vector<std::string> expired;
  std::vector<std::pair<absl::Time, std::string>> orphans;  // job gone, within the TTL
  for (const auto& [key, rr] : requests_) {
    if (jobs_.contains(rr.job_id)) continue;
    std::string flat = absl::StrCat(key.first, std::string(1, '\0'), key.second);
    if (rr.create_time + tombstone_ttl <= now) {
      expired.push_back(std::move(flat));
    } else {
      orphans.emplace_back(rr.create_time, std::move(flat));
    }
  }
  // Over --max-tombstones: the oldest go too.
  out.tombstones_over_cap = TakeOldestBeyond(max_tombstones, &orphans, &expired);
  for (const auto& flat : expired) {
    const size_t nul = flat.find('\0');
    Journal::Op op{Journal::Op::Kind::kDeleteRequest, {}, {}, {}};
    op.request.owner = flat.substr(0, nul);
    op.request.request_id = flat.substr(nul + 1);
    requests_.erase(RequestKey(op.request.owner, op.request.request_id));
    ops.push_back(std::move(op));
  }
  out.tombstones = static_cast<int64_t>(expired.size());
  return out;
}

}  // namespace zfarm::scheduler
