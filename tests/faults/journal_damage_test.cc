// Fault suite: a damaged journal. Every kind of damage either
// makes the scheduler refuse to start with a message naming the damaged file and
// the recovery, or is harmless (every job and tombstone read back unchanged).
// Never a start with jobs silently missing or altered.
//
// Journals are built by a real Scheduler (submits with request ids, cancels), then
// copied — after a clean shutdown (no WAL) or while open (a crash image: journal.db
// + journal.db-wal + journal.db-shm, as SIGKILL leaves them) — and damaged copies
// are opened again. Trials run on /dev/shm when it exists (the journal fsyncs).
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "scheduler/scheduler.h"
#include "scheduler/sqlite_journal.h"
#include "tests/testing/fake_clock.h"
#include "tests/testing/status_matchers.h"

namespace zfarm::scheduler {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::zfarm::testing::FakeClock;

std::string Base() {
  std::string root = fs::exists("/dev/shm") ? "/dev/shm" : fs::temp_directory_path().string();
  return absl::StrCat(root, "/zfarm-faults-journal-", getpid(), "-",
                      ::testing::UnitTest::GetInstance()->current_test_info()->name());
}

// Canonical dump of what a journal holds (jobs + bookkeeping + tombstones).
std::map<std::string, std::string> Dump(const Journal::Contents& c) {
  std::map<std::string, std::string> out;
  for (const JobRecord& r : c.jobs) {
    out["job/" + r.job.job_id()] =
        absl::StrCat(r.job.SerializeAsString(), "|", r.runs, "|", r.min_memory_bytes, "|",
                     r.commit_pending, "|", r.cancel_requested, "|", r.seq, "|", r.fingerprint);
  }
  for (const RequestRecord& r : c.requests) {
    out["req/" + r.request_id] =
        absl::StrCat(r.job_id, "|", r.fingerprint, "|", absl::ToUnixMicros(r.create_time));
  }
  return out;
}

// Opens a journal copy the way the scheduler does at startup (Open + Load).
absl::StatusOr<std::map<std::string, std::string>> OpenAndLoad(const std::string& state_dir) {
  auto j = SqliteJournal::Open({.state_dir = state_dir});
  if (!j.ok()) return j.status();
  auto c = (*j)->Load();
  if (!c.ok()) return c.status();
  return Dump(*c);
}

void CopyDir(const std::string& from, const std::string& to) {
  fs::remove_all(to);
  fs::create_directories(to);
  for (const auto& e : fs::directory_iterator(from)) {
    fs::copy_file(e.path(), fs::path(to) / e.path().filename());
  }
}

void FlipByte(const std::string& file, uint64_t offset) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x5A);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(&c, 1);
}

class JournalDamageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    base_ = Base();
    fs::remove_all(base_);
    fs::create_directories(base_ + "/out");
  }
  void TearDown() override { fs::remove_all(base_); }

  Scheduler::Options Options(const std::string& state) {
    Scheduler::Options o;
    o.state_dir = state;
    o.output_root = base_ + "/out";
    return o;
  }

  // A scheduler with `n` jobs (request ids, labels, some cancelled) on `state`.
  std::unique_ptr<Scheduler> Populate(const std::string& state, int n) {
    auto s = Scheduler::Create(Options(state), &clock_, nullptr);
    EXPECT_OK(s.status());
    if (!s.ok()) return nullptr;
    for (int i = 0; i < n; ++i) {
      v1::SubmitJobRequest r;
      r.set_request_id(absl::StrCat("req-", i));
      r.mutable_spec()->set_prompt(absl::StrCat("a lighthouse at dusk, variant ", i));
      r.mutable_spec()->set_steps(1 + i % 8);
      (*r.mutable_spec()->mutable_labels())["team"] = i % 2 ? "a" : "b";
      (*s)->Submit(r, "owner",
                   [](absl::StatusOr<v1::SubmitJobResponse> resp) { EXPECT_OK(resp.status()); });
      if (i % 7 == 3) {
        EXPECT_OK((*s)->Flush());
      }
    }
    EXPECT_OK((*s)->Flush());
    v1::CancelJobRequest c;
    c.set_label("team=a");
    (*s)->Cancel(c, [](absl::StatusOr<v1::CancelJobResponse>) {});
    EXPECT_OK((*s)->Flush());
    return std::move(*s);
  }

  // A clean image (scheduler shut down: everything checkpointed into journal.db).
  std::map<std::string, std::string> MakeClean(const std::string& state, int n) {
    auto s = Populate(state, n);
    s->Shutdown();
    s.reset();
    EXPECT_FALSE(fs::exists(state + "/journal.db-wal"));
    auto d = OpenAndLoad(state);
    EXPECT_OK(d.status());
    // Reopening and closing again leaves the same image (Open writes nothing else).
    return d.ok() ? *d : std::map<std::string, std::string>{};
  }

  // A crash image: the files copied while the scheduler is open after a Flush.
  std::map<std::string, std::string> MakeCrashImage(const std::string& image, int n) {
    std::string live = base_ + "/live";
    auto s = Populate(live, n);
    CopyDir(live, image);
    s.reset();
    EXPECT_TRUE(fs::exists(image + "/journal.db-wal"));
    EXPECT_GT(fs::file_size(image + "/journal.db-wal"), 0u);
    std::string probe = base_ + "/probe";
    CopyDir(image, probe);
    auto d = OpenAndLoad(probe);
    EXPECT_OK(d.status());
    return d.ok() ? *d : std::map<std::string, std::string>{};
  }

  // The invariant for one damaged copy: refused naming `file`, or unchanged.
  // Returns true when refused.
  bool RefusedOrIntact(const std::string& state, const std::string& file,
                       const std::map<std::string, std::string>& want, const std::string& what) {
    auto got = OpenAndLoad(state);
    if (got.ok()) {
      EXPECT_EQ(*got, want) << what << ": opened but the jobs differ (silent damage)";
      return false;
    }
    EXPECT_THAT(got.status().code(), ::testing::AnyOf(absl::StatusCode::kFailedPrecondition,
                                                      absl::StatusCode::kDataLoss))
        << what << ": " << got.status();
    EXPECT_THAT(std::string(got.status().message()), HasSubstr(file)) << what;
    return true;
  }

  FakeClock clock_;
  std::string base_;
};

TEST_F(JournalDamageTest, CrashImageWithItsWalReopensWithEveryJob) {
  auto want = MakeCrashImage(base_ + "/image", 60);
  EXPECT_EQ(want.size(), 120u);  // 60 jobs + 60 tombstones
}

TEST_F(JournalDamageTest, WalDeletedAfterACrashIsRefused) {
  std::string image = base_ + "/image";
  auto want = MakeCrashImage(image, 60);
  fs::remove(image + "/journal.db-wal");
  fs::remove(image + "/journal.db-shm");
  auto got = OpenAndLoad(image);
  EXPECT_THAT(got.status(), ::zfarm::testing::StatusIs(absl::StatusCode::kFailedPrecondition,
                                                       HasSubstr(image + "/journal.db-wal")));
  EXPECT_THAT(std::string(got.status().message()), HasSubstr("Recovery"));
  // The documented recovery for a log that is lost for good: delete journal.db.state
  // (and journal.db.commits, or the commit record refuses the shorter journal next).
  // The scheduler then starts from the main file alone (some jobs are gone, which
  // the operator accepted explicitly).
  fs::remove(image + "/journal.db.state");
  EXPECT_THAT(OpenAndLoad(image).status(),
              ::zfarm::testing::StatusIs(absl::StatusCode::kDataLoss,
                                         HasSubstr(image + "/journal.db.commits")));
  fs::remove(image + "/journal.db.commits");
  auto salvaged = OpenAndLoad(image);
  ASSERT_OK(salvaged.status());
  EXPECT_LT(salvaged->size(), want.size());
}

TEST_F(JournalDamageTest, MainFileDeletedOrEmptiedIsRefused) {
  std::string state = base_ + "/state";
  MakeClean(state, 40);
  for (bool remove : {true, false}) {
    std::string copy = base_ + "/copy";
    CopyDir(state, copy);
    if (remove) {
      fs::remove(copy + "/journal.db");
    } else {
      fs::resize_file(copy + "/journal.db", 0);
    }
    auto got = OpenAndLoad(copy);
    EXPECT_THAT(got.status(), ::zfarm::testing::StatusIs(absl::StatusCode::kFailedPrecondition,
                                                         AllOf(HasSubstr(copy + "/journal.db"),
                                                               HasSubstr("missing or empty"))))
        << (remove ? "deleted" : "emptied");
  }
}

TEST_F(JournalDamageTest, TruncatedMainFileIsRefused) {
  std::string state = base_ + "/state";
  auto want = MakeClean(state, 200);
  const uint64_t size = fs::file_size(state + "/journal.db");
  ASSERT_GT(size, 8 * 4096u);
  int refused = 0, trials = 0;
  for (uint64_t keep : {uint64_t{50}, uint64_t{4096}, size / 2, size - 4096, size - 1}) {
    std::string copy = base_ + "/copy";
    CopyDir(state, copy);
    fs::resize_file(copy + "/journal.db", keep);
    ++trials;
    refused += RefusedOrIntact(copy, copy + "/journal.db", want, absl::StrCat("kept ", keep));
  }
  EXPECT_EQ(refused, trials);
}

TEST_F(JournalDamageTest, WalWithATornTailIsHarmless) {
  // A partial frame after the last commit is what a crash during a write leaves
  // (that transaction was never acknowledged): every acknowledged job is kept.
  // (Cutting the log at a frame boundary drops whole acknowledged transactions:
  // the commit record refuses that, WalCutAtAFrameBoundaryIsRefused.)
  std::string image = base_ + "/image";
  auto want = MakeCrashImage(image, 60);
  std::string copy = base_ + "/copy";
  CopyDir(image, copy);
  const uint64_t wal_size = fs::file_size(copy + "/journal.db-wal");
  fs::resize_file(copy + "/journal.db-wal", wal_size + 100);  // a torn extra frame
  RefusedOrIntact(copy, copy + "/journal.db-wal", want, "grown by a partial frame");
}

// Byte flips all over a cleanly closed journal.db: refused or harmless.
TEST_F(JournalDamageTest, ByteFlipsInMainFileAreRefusedOrHarmless) {
  std::string state = base_ + "/state";
  auto want = MakeClean(state, 120);
  const uint64_t size = fs::file_size(state + "/journal.db");
  int refused = 0, harmless = 0;
  std::string copy = base_ + "/copy";
  const uint64_t stride = std::max<uint64_t>(61, size / 250) | 1;  // ~250 trials
  for (uint64_t off = 0; off < size; off += stride) {
    CopyDir(state, copy);
    FlipByte(copy + "/journal.db", off);
    if (RefusedOrIntact(copy, copy + "/journal.db", want, absl::StrCat("flip at ", off))) {
      ++refused;
    } else {
      ++harmless;
    }
    if (HasFailure()) break;
  }
  RecordProperty("refused", refused);
  RecordProperty("harmless", harmless);
  std::printf("main-file flips: %d refused, %d harmless (slack space)\n", refused, harmless);
  EXPECT_GT(refused, 0);
}

// The page-aligned offsets of every frame in a WAL and whether it ends a commit.
struct WalFrame {
  uint64_t offset;
  bool commit;
};
std::vector<WalFrame> WalFrames(const std::string& wal) {
  std::ifstream f(wal, std::ios::binary);
  std::string d((std::istreambuf_iterator<char>(f)), {});
  auto be32 = [&](size_t o) {
    const auto* p = reinterpret_cast<const unsigned char*>(d.data() + o);
    return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
  };
  std::vector<WalFrame> out;
  if (d.size() < 32) return out;
  const uint64_t frame = 24 + be32(8);
  for (uint64_t off = 32; off + frame <= d.size(); off += frame) {
    if (be32(off + 8) != be32(16) || be32(off + 12) != be32(20)) break;
    out.push_back({off, be32(off + 4) != 0});
  }
  return out;
}

// Byte flips in the WAL of a crash image, anywhere before the last transaction's
// frames (header, frame headers, page data): refused or harmless.
TEST_F(JournalDamageTest, ByteFlipsInWalBeforeTheLastTransactionAreRefused) {
  std::string image = base_ + "/image";
  auto want = MakeCrashImage(image, 60);
  std::vector<WalFrame> frames = WalFrames(image + "/journal.db-wal");
  ASSERT_GE(frames.size(), 4u);
  // Start of the last transaction = the frame after the second-to-last commit frame.
  uint64_t last_txn = 32;
  int commits = 0;
  for (size_t i = frames.size(); i-- > 0;) {
    if (frames[i].commit && ++commits == 2) {
      last_txn = frames[i + 1].offset;
      break;
    }
  }
  ASSERT_EQ(commits, 2);
  int refused = 0, harmless = 0;
  std::string copy = base_ + "/copy";
  const uint64_t stride = std::max<uint64_t>(211, last_txn / 200) | 1;  // ~200 trials
  for (uint64_t off = 0; off < last_txn; off += stride) {
    CopyDir(image, copy);
    FlipByte(copy + "/journal.db-wal", off);
    bool r = RefusedOrIntact(copy, copy + "/journal.db-wal", want, absl::StrCat("flip at ", off));
    (r ? refused : harmless)++;
    if (HasFailure()) break;
  }
  std::printf("wal flips: %d refused, %d harmless\n", refused, harmless);
  EXPECT_GT(refused, 0);
}

// Damage inside the frames of the LAST transaction in the WAL, or the WAL cut at
// a frame boundary, looks exactly like a write torn by a crash, so SQLite drops
// those transactions. The commit record outside the WAL (journal.db.commits)
// says they were acknowledged: refused (DATA_LOSS), never a silent loss.
TEST_F(JournalDamageTest, ByteFlipInTheLastWalTransactionIsRefused) {
  std::string image = base_ + "/image";
  auto want = MakeCrashImage(image, 60);
  std::vector<WalFrame> frames = WalFrames(image + "/journal.db-wal");
  ASSERT_FALSE(frames.empty());
  for (uint64_t at : {frames.back().offset + 24 + 100, frames.back().offset + 9}) {
    std::string copy = base_ + "/copy";
    CopyDir(image, copy);
    FlipByte(copy + "/journal.db-wal", at);
    auto got = OpenAndLoad(copy);
    EXPECT_THAT(got.status(),
                ::zfarm::testing::StatusIs(absl::StatusCode::kDataLoss,
                                           AllOf(HasSubstr(copy + "/journal.db-wal"),
                                                 HasSubstr("were lost"), HasSubstr("Recovery"))))
        << "flip at " << at;
  }
}

TEST_F(JournalDamageTest, WalCutAtAFrameBoundaryIsRefused) {
  std::string image = base_ + "/image";
  auto want = MakeCrashImage(image, 60);
  std::vector<WalFrame> frames = WalFrames(image + "/journal.db-wal");
  // Cut after each of the last three commit frames but the final one: every cut
  // drops at least one acknowledged transaction.
  int cuts = 0;
  for (size_t i = frames.size() - 1; i-- > 0 && cuts < 3;) {
    if (!frames[i].commit) continue;
    const uint64_t frame_bytes = frames[1].offset - frames[0].offset;
    std::string copy = base_ + "/copy";
    CopyDir(image, copy);
    fs::resize_file(copy + "/journal.db-wal", frames[i].offset + frame_bytes);
    EXPECT_THAT(OpenAndLoad(copy).status(),
                ::zfarm::testing::StatusIs(absl::StatusCode::kDataLoss, HasSubstr("were lost")))
        << "cut after frame " << i;
    ++cuts;
  }
  EXPECT_GT(cuts, 0);
}

// The commit record itself: damaged -> refused naming it; deleted -> the journal
// is accepted as it is (and the record written again).
TEST_F(JournalDamageTest, DamagedCommitRecordIsRefusedDeletedIsRecreated) {
  std::string image = base_ + "/image";
  auto want = MakeCrashImage(image, 30);
  std::string copy = base_ + "/copy";
  CopyDir(image, copy);
  FlipByte(copy + "/journal.db.commits", 3);
  EXPECT_THAT(OpenAndLoad(copy).status(),
              ::zfarm::testing::StatusIs(
                  absl::StatusCode::kDataLoss,
                  AllOf(HasSubstr(copy + "/journal.db.commits"), HasSubstr("is damaged"))));
  fs::remove(copy + "/journal.db.commits");
  ASSERT_OK_AND_ASSIGN(auto got, OpenAndLoad(copy));
  EXPECT_EQ(got, want);
  EXPECT_EQ(fs::file_size(copy + "/journal.db.commits"), 16u);
}

TEST_F(JournalDamageTest, SchedulerCreateRefusesWithFileAndRecovery) {
  std::string state = base_ + "/state";
  MakeClean(state, 20);
  FlipByte(state + "/journal.db", 0);  // "SQLite format 3" magic
  auto s = Scheduler::Create(Options(state), &clock_, nullptr);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.status().message()),
              AllOf(HasSubstr(state + "/journal.db"), HasSubstr("Recovery"),
                    HasSubstr("sqlite3 OLD/journal.db .dump")));
}

int Shell(const std::string& cmd) {
  int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

// The documented recovery, end to end, with the sqlite3 shell (deploy/install-deps.sh
// installs it; missing, this test fails). A byte flipped inside one job's row is
// refused naming that job; salvaging with .dump keeps the damaged row (refused
// again), deleting the named row lets the scheduler start with every other job.
TEST_F(JournalDamageTest, DocumentedRecoveryWithTheSqlite3Shell) {
  ASSERT_EQ(Shell("sqlite3 -version > /dev/null"), 0) << "sqlite3 shell missing";
  std::string state = base_ + "/state";
  auto want = MakeClean(state, 30);
  std::ifstream f(state + "/journal.db", std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(f)), {});
  size_t at = bytes.find("variant 17");
  ASSERT_NE(at, std::string::npos);
  FlipByte(state + "/journal.db", at + 8);  // "variant 17" -> another prompt
  auto got = OpenAndLoad(state);
  ASSERT_FALSE(got.ok());
  std::string msg(got.status().message());
  EXPECT_THAT(msg, AllOf(HasSubstr(state + "/journal.db"), HasSubstr("checksum mismatch")));
  // The message names the job: "job row <id> (seq N)".
  size_t p = msg.find("job row ");
  ASSERT_NE(p, std::string::npos);
  std::string id = msg.substr(p + 8, msg.find(' ', p + 8) - (p + 8));
  ASSERT_TRUE(want.count("job/" + id)) << id;

  std::string salvaged = base_ + "/new";
  fs::create_directories(salvaged);
  ASSERT_EQ(Shell(absl::StrCat("sqlite3 ", state, "/journal.db .dump | sqlite3 ", salvaged,
                               "/journal.db && sqlite3 ", salvaged,
                               "/journal.db 'PRAGMA user_version=", SqliteJournal::kSchemaVersion,
                               "'")),
            0);
  auto again = OpenAndLoad(salvaged);
  EXPECT_THAT(again.status(),
              ::zfarm::testing::StatusIs(absl::StatusCode::kDataLoss, HasSubstr("job row " + id)));
  ASSERT_EQ(Shell(absl::StrCat("sqlite3 ", salvaged,
                               "/journal.db \"DELETE FROM jobs WHERE job_id='", id, "'\"")),
            0);
  ASSERT_OK_AND_ASSIGN(auto recovered, OpenAndLoad(salvaged));
  want.erase("job/" + id);
  EXPECT_EQ(recovered, want);
}

}  // namespace
}  // namespace zfarm::scheduler
