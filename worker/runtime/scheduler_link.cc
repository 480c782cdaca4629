#include "worker/runtime/scheduler_link.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <random>
#include <utility>

#include "absl/synchronization/notification.h"
#include "glog/logging.h"
#include "proto/base/monotonic_wait.h"
#include "proto/contract/rpc_status.h"

namespace zfarm::worker {

namespace v1 = ::zfarm::v1;
using ::zfarm::base::AwaitMonotonic;
using ::zfarm::base::PollFor;
using ::zfarm::contract::FromGrpcStatus;

// One Connect call. Created and destroyed by SchedulerLink::Run(); the reactor's
// last act (OnDone) notifies `done_`, after which Run() deletes it.
class SchedulerLink::Session final
    : public grpc::ClientBidiReactor<v1::WorkerMessage, v1::SchedulerMessage> {
 public:
  Session(SchedulerLink* link, v1::WorkerService::Stub* stub, const v1::WorkerHello& hello)
      : link_(link) {
    for (const auto& [k, v] : link->options_.metadata) ctx_.AddMetadata(k, v);
    stub->async()->Connect(&ctx_, this);
    *cur_.mutable_hello() = hello;
    // The hello is the write in flight from the start: a Close() before Start()
    // only marks the session closing, and the hello's OnWriteDone half-closes it.
    absl::MutexLock lock(&mu_);
    writing_ = true;
  }

  // Starts the call. Run() publishes the session as the link's current one first:
  // the Welcome may arrive at once, and what OnWelcome sends goes through the link.
  void Start() {
    StartRead(&in_);
    AddHold();  // writes are started from outside reactions; released on close
    StartWrite(&cur_);
    StartCall();
  }

  // Queues a message; false once the session is closing or ended.
  bool Enqueue(const v1::WorkerMessage& m) {
    {
      absl::MutexLock lock(&mu_);
      if (closing_ || ended_) return false;
      queue_.push_back(m);
      if (writing_) return true;
      writing_ = true;
      cur_ = std::move(queue_.front());
      queue_.pop_front();
    }
    StartWrite(&cur_);
    return true;
  }

  // Flushes the queue, then half-closes.
  void Close() {
    bool release = false;
    {
      absl::MutexLock lock(&mu_);
      if (closing_ || ended_) return;
      closing_ = true;
      if (!writing_) release = ended_ = hold_released_ = true;
    }
    if (release) {
      StartWritesDone();
      RemoveHold();
    }
  }

  void Cancel() { ctx_.TryCancel(); }
  bool welcomed() const { return welcomed_.load(); }
  bool WaitDone(absl::Duration d) {
    return PollFor(d, [this] { return done_.HasBeenNotified(); });
  }
  const grpc::Status& status() const { return status_; }

  void OnReadDone(bool ok) override {
    if (!ok) {
      ReleaseHold();  // the server ended the stream: nothing more to write
      return;
    }
    if (!welcomed_.load()) {
      if (!in_.has_welcome()) {
        LOG(WARNING) << "event=link_protocol_error why=\"first message is not a welcome\"";
        ctx_.TryCancel();
        ReleaseHold();
        return;
      }
      {
        absl::MutexLock lock(&link_->mu_);
        if (in_.welcome().heartbeat_interval_ms() > 0) {
          link_->heartbeat_ = absl::Milliseconds(in_.welcome().heartbeat_interval_ms());
        }
        ++link_->sessions_welcomed_;
      }
      welcomed_.store(true);
      link_->handler_->OnWelcome(in_.welcome());
    } else {
      link_->handler_->OnMessage(in_);
    }
    StartRead(&in_);
  }

  void OnWriteDone(bool ok) override {
    bool release = false, next = false, writes_done = false;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (!ok || ended_) {
        queue_.clear();
        ended_ = true;
        if (!hold_released_) release = hold_released_ = true;
      } else if (!queue_.empty()) {
        writing_ = next = true;
        cur_ = std::move(queue_.front());
        queue_.pop_front();
      } else if (closing_) {
        release = ended_ = hold_released_ = writes_done = true;
      }
    }
    if (next) StartWrite(&cur_);
    if (writes_done) StartWritesDone();
    if (release) RemoveHold();
  }

  void OnDone(const grpc::Status& s) override {
    status_ = s;
    done_.Notify();  // last touch: Run() may delete this now
  }

 private:
  void ReleaseHold() {
    {
      absl::MutexLock lock(&mu_);
      ended_ = true;
      queue_.clear();
      // With a write in flight, OnWriteDone releases the hold.
      if (writing_ || hold_released_) return;
      hold_released_ = true;
    }
    RemoveHold();
  }

  SchedulerLink* const link_;
  grpc::ClientContext ctx_;
  v1::SchedulerMessage in_;  // owned by the read in flight
  v1::WorkerMessage cur_;    // owned by the write in flight
  std::atomic<bool> welcomed_{false};
  grpc::Status status_;
  absl::Notification done_;

  absl::Mutex mu_;
  std::deque<v1::WorkerMessage> queue_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  // The hold is released (or about to be): no new operation may start.
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  bool hold_released_ ABSL_GUARDED_BY(mu_) = false;
};

SchedulerLink::SchedulerLink(Options options, Handler* handler)
    : options_(std::move(options)), handler_(handler) {
  grpc::ChannelArguments args;
  // Reconnects are ours (with jitter); keep gRPC's own backoff short so a
  // scheduler that comes back is seen quickly.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 20000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  // A lease carries its job's pictures (init image and mask, up to the scheduler's
  // --max-input-bytes each, 16 MiB by default): gRPC's 4 MiB default would drop the stream.
  args.SetMaxReceiveMessageSize(kMaxLeaseBytes);
  for (const std::string& target : options_.targets) {
    stubs_.push_back(v1::WorkerService::NewStub(grpc::CreateCustomChannel(
        target,
        options_.credentials ? options_.credentials : grpc::InsecureChannelCredentials(), args)));
  }
  heartbeat_ = options_.default_heartbeat;
}

SchedulerLink::~SchedulerLink() { Stop(); }

void SchedulerLink::Start() {
  absl::MutexLock lock(&mu_);
  if (started_) return;
  started_ = true;
  thread_ = std::thread([this] { Run(); });
}

bool SchedulerLink::Send(const v1::WorkerMessage& message) {
  absl::MutexLock lock(&mu_);
  if (session_ == nullptr || !session_->welcomed()) return false;
  return session_->Enqueue(message);
}

bool SchedulerLink::connected() {
  absl::MutexLock lock(&mu_);
  return session_ != nullptr && session_->welcomed();
}

int SchedulerLink::sessions_welcomed() {
  absl::MutexLock lock(&mu_);
  return sessions_welcomed_;
}

std::string SchedulerLink::current_target() {
  absl::MutexLock lock(&mu_);
  return options_.targets[current_];
}

void SchedulerLink::DropSessionForTesting() {
  absl::MutexLock lock(&mu_);
  if (session_ != nullptr) session_->Cancel();
}

void SchedulerLink::PauseReconnectsForTesting(bool paused) {
  absl::MutexLock lock(&mu_);
  reconnect_paused_ = paused;
}

void SchedulerLink::Stop(absl::Duration timeout) {
  {
    absl::MutexLock lock(&mu_);
    if (!started_) return;
    stopping_ = true;
    if (session_ != nullptr) session_->Close();
  }
  // Give the half-close `timeout` to end the stream, then cancel it.
  {
    absl::MutexLock lock(&mu_);
    auto ended = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return session_ == nullptr; };
    if (!AwaitMonotonic(&mu_, absl::Condition(&ended), timeout) && session_ != nullptr) {
      session_->Cancel();
    }
  }
  if (thread_.joinable()) thread_.join();
}

// The session loop as one story: connect, hello, read until the stream ends (with
// heartbeats), move on to the next address or back off, reconnect.
void SchedulerLink::Run() {
  std::mt19937_64 rng(std::random_device{}());
  const int addresses = static_cast<int>(stubs_.size());
  int failures = 0;  // sessions in a row that ended without a Welcome
  for (;;) {
    size_t current;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      current = current_;
    }
    auto session = std::make_unique<Session>(this, stubs_[current].get(), handler_->MakeHello());
    {
      absl::MutexLock lock(&mu_);
      session_ = session.get();
      if (stopping_) session_->Close();
    }
    session->Start();
    // Heartbeats at the Welcome's interval (re-read every wake-up: the Welcome
    // arrives after this loop starts).
    auto last_beat = std::chrono::steady_clock::now();  // monotonic: immune to clock steps
    for (;;) {
      absl::Duration hb;
      {
        absl::MutexLock lock(&mu_);
        hb = heartbeat_;
      }
      if (session->WaitDone(std::min(hb, absl::Milliseconds(100)))) break;
      const auto now = std::chrono::steady_clock::now();
      if (session->welcomed() && absl::FromChrono(now - last_beat) >= hb) {
        last_beat = now;
        v1::WorkerMessage m;
        *m.mutable_heartbeat() = handler_->MakeHeartbeat();
        session->Enqueue(m);
      }
    }
    const bool welcomed = session->welcomed();
    absl::Status why = FromGrpcStatus(session->status());
    failures = welcomed ? 0 : failures + 1;
    {
      absl::MutexLock lock(&mu_);
      session_ = nullptr;
      // Never welcomed here: the next address (a standby, or a dead host, is passed by).
      if (!welcomed) current_ = (current_ + 1) % stubs_.size();
    }
    session.reset();
    if (welcomed || !why.ok()) {
      LOG(WARNING) << "event=scheduler_disconnected target=" << options_.targets[current]
                   << " welcomed=" << welcomed << " status=\"" << why.ToString() << "\"";
    }
    handler_->OnDisconnected(why);
    // Waits only after a whole round of addresses failed (or after a welcomed session).
    const int rounds = failures / addresses;
    const bool round_done = failures % addresses == 0;
    absl::Duration wait = absl::ZeroDuration();
    if (round_done) {
      const double cap = std::min(absl::ToDoubleSeconds(options_.max_backoff),
                                  absl::ToDoubleSeconds(options_.initial_backoff) *
                                      std::pow(2.0, std::min(rounds, 30)));
      wait = absl::Seconds(std::uniform_real_distribution<double>(0.0, cap)(rng));
    }
    PollFor(wait, [this] {
      absl::MutexLock lock(&mu_);
      return stopping_;
    });
    absl::MutexLock lock(&mu_);
    auto may_connect = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return stopping_ || !reconnect_paused_;
    };
    mu_.Await(absl::Condition(&may_connect));
  }
}

}  // namespace zfarm::worker
