#ifndef ZFARM_SCHEDULER_WORKER_REGISTRY_H_
#define ZFARM_SCHEDULER_WORKER_REGISTRY_H_

// The scheduler's worker state: every worker it knows (connected or recently
// lost), their sessions, the leases each holds, which have a free slot, their
// health and drain state, and the binding of a worker name to the principal that
// first registered it.
//
// A worker is READY (takes leases), DRAINING (finishes what it holds, takes no new
// ones, until Resume), UNHEALTHY (reported so, or three device failures in a row;
// back to READY when it reports healthy) or LOST (its stream ended; kept for
// ListWorkers for lost_worker_ttl). `free()` holds exactly the READY, connected
// workers with fewer leases than their capacity.
//
// It knows nothing about jobs beyond their ids: what a lost lease means for its
// job is the Scheduler's business (JobStore).
//
// Thread-compatible: the Scheduler calls it only under Scheduler::mu_.

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "proto/contract/failure_policy.h"
#include "scheduler/journal.h"
#include "zfarm/v1/admin_service.pb.h"
#include "zfarm/v1/worker_service.pb.h"

namespace zfarm::scheduler {

// Outbound half of a worker's Connect stream. Send() must not block; Close()
// ends the stream with `status`. Both may be called after the stream ended.
class WorkerSink {
 public:
  virtual ~WorkerSink() = default;
  virtual void Send(const zfarm::v1::SchedulerMessage& message) = 0;
  virtual void Close(const absl::Status& status) = 0;
};

class WorkerRegistry {
 public:
  struct Worker {
    zfarm::v1::WorkerHello hello;  // held_leases cleared
    zfarm::v1::WorkerState state = zfarm::v1::WORKER_STATE_READY;
    uint64_t session = 0;
    std::shared_ptr<WorkerSink> sink;  // null once lost
    std::set<std::string> leases;      // job ids
    absl::Time connect_time, last_seen, lost_time;  // wall: shown to users
    absl::Time last_seen_mono, lost_mono;           // monotonic: silence, lost TTL
    int64_t jobs_done = 0, jobs_failed = 0;
    int consecutive_failures = 0;
    // From heartbeats: the LoRAs applied right now (affinity), in order.
    std::vector<std::string> active_loras;
    const std::string& name() const { return hello.worker_name(); }
    bool HasFreeSlot() const { return static_cast<int>(leases.size()) < hello.capacity(); }
  };

  // ---- Capabilities. A job runs only on a worker that has everything it needs: its
  // model (if named), its size (within max_width/height_px), the memory an earlier
  // OUT_OF_MEMORY showed it needs, the features its inputs need (init_image ->
  // "img2img", mask_image -> "inpaint", loras -> "lora", control -> "controlnet") and
  // every LoRA it names.
  // A job no connected worker can run stays QUEUED until one connects (or its
  // deadline passes), whatever the reason.
  static constexpr char kFeatureImg2Img[] = "img2img";
  static constexpr char kFeatureInpaint[] = "inpaint";
  static constexpr char kFeatureLora[] = "lora";
  static constexpr char kFeatureControlNet[] = "controlnet";
  static bool CanRun(const Worker& w, const zfarm::v1::JobSpec& spec, int64_t min_memory_bytes);
  // The set of LoRA names, canonical (sorted, unique), as one comparable key.
  static std::string LoraSetKey(std::vector<std::string> names);
  static std::string LoraSetKey(const zfarm::v1::JobSpec& spec);
  // INVALID_ARGUMENT naming the field if the hello's features or LoRA catalog are
  // out of bounds (at most 64 entries of at most 128 bytes / 4096 LoRAs).
  static absl::Status ValidateCapabilities(const zfarm::v1::WorkerHello& hello);
  // A heartbeat: free memory, the LoRA catalog (when sent) and the active LoRAs.
  static absl::Status Heartbeat(Worker& w, const zfarm::v1::WorkerHeartbeat& hb);

  // ---- Principal binding (journaled).
  // OK if `name` is unbound (binds it to `principal`, appending the journal op)
  // or bound to `principal`; PERMISSION_DENIED naming the field otherwise.
  absl::Status Bind(const std::string& name, const std::string& principal,
                    std::vector<Journal::Op>& ops);
  void RestoreBindings(std::vector<WorkerRecord> records);
  size_t bindings() const { return owners_.size(); }

  // ---- Sessions.
  // The connected worker of `name`, or null.
  Worker* Connected(const std::string& name);
  // Replaces whatever `name` had with a fresh connected worker for `hello`
  // (counters carried over), holding `kept` leases. Call Lost() on a live old
  // session first.
  Worker& Connect(const zfarm::v1::WorkerHello& hello, std::shared_ptr<WorkerSink> sink,
                  std::set<std::string> kept, absl::Time now, absl::Time mono);
  Worker* FindSession(uint64_t session);
  Worker* Find(const std::string& name);
  // Records a message from `w` (it is alive).
  static void Seen(Worker& w, absl::Time now, absl::Time mono);
  // Marks `w` LOST and forgets its session; returns the leases it held.
  std::set<std::string> Lost(Worker& w, absl::Time now, absl::Time mono);
  // Closes every stream with `status`, marks every worker LOST and drops their
  // leases (after a failed journal write: they reconnect and re-adopt).
  void DisconnectAll(const absl::Status& status, absl::Time now, absl::Time mono);
  // Connected workers silent for longer than `timeout`.
  std::vector<Worker*> Silent(absl::Time mono, absl::Duration timeout);
  // Forgets LOST workers lost for at least `ttl`.
  void PruneLost(absl::Time mono, absl::Duration ttl);

  // ---- Leases and free slots.
  void AddLease(Worker& w, const std::string& job_id);
  // Drops the lease of `job_id` from `worker_name` (if it holds it).
  void ReleaseLease(const std::string& worker_name, const std::string& job_id);
  // READY, connected workers with a free slot, by name.
  const std::set<std::string>& free() const { return free_; }
  // Re-derives `w`'s membership in free().
  void UpdateFree(Worker& w);

  // ---- Health and drain.
  // A failure that says something about the device (failure_policy.h): the
  // kUnhealthyAfterFailures-th
  // in a row makes a READY worker UNHEALTHY.
  void CountDeviceFailure(Worker& w, const std::string& why);
  void CountSuccess(Worker& w);
  // The worker's own health report.
  void ReportHealth(Worker& w, bool healthy, const std::string& message);
  struct Change {
    zfarm::v1::WorkerInfo worker;
    bool changed = false;
  };
  // READY/UNHEALTHY -> DRAINING (Drain sent). NOT_FOUND naming an unknown worker,
  // FAILED_PRECONDITION for a LOST one; already DRAINING: changed=false.
  absl::StatusOr<Worker*> Drain(const std::string& name, bool* changed);
  // DRAINING -> READY (Resume sent). NOT_FOUND naming an unknown worker; not
  // DRAINING: changed=false.
  absl::StatusOr<Worker*> Resume(const std::string& name, bool* changed);

  // ---- Views.
  // `w` for ListWorkers, without current_job_ids (the Scheduler filters those).
  static zfarm::v1::WorkerInfo Info(const Worker& w);
  // Every known worker, by name.
  std::vector<const Worker*> All() const;
  std::map<int, int64_t> CountByState() const;

 private:
  absl::flat_hash_map<std::string, std::unique_ptr<Worker>> workers_;
  absl::flat_hash_map<uint64_t, Worker*> sessions_;
  std::set<std::string> free_;
  // Worker name -> the principal that registered it.
  absl::flat_hash_map<std::string, std::string> owners_;
  uint64_t next_session_ = 1;
};

}  // namespace zfarm::scheduler

#endif  // ZFARM_SCHEDULER_WORKER_REGISTRY_H_
