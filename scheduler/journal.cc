#include "scheduler/journal.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "glog/logging.h"

namespace zfarm::scheduler {

Journal::~Journal() { Close(); }

void Journal::StartWriter() {
  writer_ = std::thread([this] { WriterLoop(); });
}

void Journal::Append(std::vector<Op> ops, Done done) {
  absl::MutexLock lock(&mu_);
  if (stopping_) {
    if (done) std::move(done)(absl::UnavailableError("journal is closed"));
    return;
  }
  pending_.push_back(Batch{std::move(ops), std::move(done), ++appended_});
}

absl::Status Journal::Flush() {
  absl::MutexLock lock(&mu_);
  uint64_t target = appended_;
  struct Arg {
    Journal* j;
    uint64_t target;
  } arg{this, target};
  mu_.Await(absl::Condition(
      +[](Arg* a)
           ABSL_NO_THREAD_SAFETY_ANALYSIS { return a->j->durable_ >= a->target || a->j->closed_; },
      &arg));
  return first_error_;
}

void Journal::Close() {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  if (writer_.joinable()) writer_.join();
}

int64_t Journal::commits() const {
  absl::MutexLock lock(&mu_);
  return commits_;
}
int64_t Journal::batches() const {
  absl::MutexLock lock(&mu_);
  return batches_;
}

void Journal::ClearFailure() {
  absl::MutexLock lock(&mu_);
  latched_ = absl::OkStatus();
  first_error_ = absl::OkStatus();
}

void Journal::TEST_FailWrites(int writes, absl::Status error) {
  absl::MutexLock lock(&mu_);
  fail_writes_ = writes;
  fail_error_ = std::move(error);
}

absl::Status Journal::WriteOps(const std::vector<Batch>& batches) {
  bool any = false;
  for (const Batch& b : batches) any |= !b.ops.empty();
  {
    absl::MutexLock lock(&mu_);
    if (!latched_.ok()) {
      return absl::UnavailableError(absl::StrCat(
          "journal: not written because an earlier write failed (", latched_.message(), ")"));
    }
    if (any && fail_writes_ > 0) {
      --fail_writes_;
      return absl::Status(fail_error_.code(), absl::StrCat("journal: ", fail_error_.message()));
    }
  }
  if (!any) return absl::OkStatus();
  return Write(batches);
}

void Journal::WriterLoop() {
  for (;;) {
    std::vector<Batch> batches;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](Journal* j)
               ABSL_NO_THREAD_SAFETY_ANALYSIS { return !j->pending_.empty() || j->stopping_; },
          this));
      if (pending_.empty() && stopping_) {
        closed_ = true;
        return;
      }
      while (!pending_.empty()) {
        batches.push_back(std::move(pending_.front()));
        pending_.pop_front();
      }
    }
    absl::Status s = WriteOps(batches);
    if (!s.ok()) {
      LOG(ERROR) << "event=journal_write_failed path=" << path() << " error=\"" << s << "\"";
      absl::MutexLock lock(&mu_);
      if (latched_.ok()) latched_ = s;  // before any caller hears of it (see Append)
    }
    for (Batch& b : batches) {
      if (b.done) std::move(b.done)(s);
    }
    absl::MutexLock lock(&mu_);
    durable_ = batches.back().id;
    ++commits_;
    batches_ += batches.size();
    if (!s.ok() && first_error_.ok()) first_error_ = s;
  }
}

}  // namespace zfarm::scheduler
