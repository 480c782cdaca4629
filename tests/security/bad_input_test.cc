// Bad input against the real zfarm-scheduler binary, black-box: every JobSpec
// field and request limit over gRPC (a generated stub), and the REST gateway with
// curl (malformed, unknown-field, wrong-type, wrong-content-type, huge and deeply
// nested bodies). Each refusal must carry the right code AND a message naming the
// field and the limit; the scheduler must stay up and keep accepting good input.
#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/json_util.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/farm_client.h"
#include "tests/testing/subprocess.h"
#include "zfarm/v1/job_service.grpc.pb.h"

namespace zfarm {
namespace {

namespace v1 = ::zfarm::v1;
namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::zfarm::testing::RunCommand;
using ::zfarm::testing::Subprocess;
using ::zfarm::testing::TestContext;
using json = nlohmann::json;

// One scheduler for the whole suite (they only read its answers).
class BadInputTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string((fs::temp_directory_path() /
                            absl::StrCat("zfarm-bad-input-", getpid()))
                               .string());
    fs::remove_all(*dir_);
    fs::create_directories(*dir_ + "/out");
    scheduler_ = new Subprocess({ZFARM_SCHEDULER_BIN, "--listen=127.0.0.1:0",
                                 "--http-listen=127.0.0.1:0", "--state-dir=" + *dir_ + "/state",
                                 "--output-root=" + *dir_ + "/out"},
                                *dir_ + "/scheduler.log");
    std::string line = scheduler_->WaitForLine("listening on ", absl::Seconds(30));
    ASSERT_FALSE(line.empty()) << scheduler_->ReadLog();
    address_ = new std::string(line.substr(13));
    const std::string marker = "REST gateway on port ";
    std::string rest = scheduler_->WaitForLine(marker, absl::Seconds(30));
    ASSERT_TRUE(absl::SimpleAtoi(absl::StripPrefix(rest, marker), &http_port_))
        << scheduler_->ReadLog();
  }
  static void TearDownTestSuite() {
    delete scheduler_;
    fs::remove_all(*dir_);
    delete dir_;
    delete address_;
  }
  void SetUp() override {
    ASSERT_NE(scheduler_, nullptr);
    channel_ = grpc::CreateChannel(*address_, grpc::InsecureChannelCredentials());
    stub_ = v1::JobService::NewStub(channel_);
  }
  void TearDown() override {
    EXPECT_TRUE(scheduler_->Running()) << "the scheduler died:\n" << scheduler_->ReadLog();
  }

  static v1::SubmitJobRequest Good() {
    v1::SubmitJobRequest r;
    r.mutable_spec()->set_prompt("a lighthouse at dusk");
    return r;
  }
  grpc::Status Submit(const v1::SubmitJobRequest& r) {
    v1::SubmitJobResponse resp;
    return stub_->SubmitJob(TestContext().get(), r, &resp);
  }

  struct Http {
    int status = 0;
    std::string body;
    json Json() const { return json::parse(body, nullptr, /*allow_exceptions=*/false); }
  };
  // curl -X METHOD [headers] --data-binary @file http://127.0.0.1:PORT/PATH
  Http Curl(const std::string& method, const std::string& path, const std::string& body = "",
            const std::string& headers = "-H 'Content-Type: application/json'") {
    const std::string file = *dir_ + "/body";
    {
      std::ofstream f(file, std::ios::binary | std::ios::trunc);
      f << body;
    }
    zfarm::testing::CommandResult r = RunCommand(absl::StrCat(
        "env -u LD_LIBRARY_PATH curl -sS --max-time 20 -o ", *dir_, "/reply -w '%{http_code}' -X ",
        method, " ", headers, body.empty() ? "" : " --data-binary @" + file,
        " http://127.0.0.1:", http_port_, path, " 2>&1"));
    Http h;
    absl::SimpleAtoi(r.out, &h.status);
    std::ifstream in(*dir_ + "/reply", std::ios::binary);
    h.body.assign(std::istreambuf_iterator<char>(in), {});
    if (h.status == 0) h.body = r.out;  // curl's own error
    return h;
  }

  static inline std::string* dir_ = nullptr;
  static inline std::string* address_ = nullptr;
  static inline Subprocess* scheduler_ = nullptr;
  static inline int http_port_ = 0;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::JobService::Stub> stub_;
};

// A spec change, the field the error must name and what else it must say (the limit).
struct SpecCase {
  std::string name;
  std::function<void(v1::SubmitJobRequest*)> mutate;
  std::string field;
  std::string limit;
};

std::vector<SpecCase> SpecCases() {
  auto spec = [](auto f) {
    return [f](v1::SubmitJobRequest* r) { f(r->mutable_spec()); };
  };
  const std::string long_name(129, 'n');
  return {
      {"empty prompt", spec([](v1::JobSpec* s) { s->clear_prompt(); }), "spec.prompt",
       "must not be empty"},
      {"prompt over 4000 bytes", spec([](v1::JobSpec* s) { s->set_prompt(std::string(4001, 'p')); }),
       "spec.prompt", "4001 bytes exceeds the limit of 4000 bytes"},
      {"negative prompt over 4000 bytes",
       spec([](v1::JobSpec* s) { s->set_negative_prompt(std::string(4001, 'q')); }),
       "spec.negative_prompt", "limit of 4000 bytes"},
      {"width not a multiple of 16", spec([](v1::JobSpec* s) { s->set_width_px(300); }),
       "spec.width_px", "300 is outside the allowed sizes (multiples of 16 in [256, 2048])"},
      {"width over 2048", spec([](v1::JobSpec* s) { s->set_width_px(4096); }), "spec.width_px",
       "[256, 2048]"},
      {"negative width", spec([](v1::JobSpec* s) { s->set_width_px(-16); }), "spec.width_px",
       "[256, 2048]"},
      {"height under 256", spec([](v1::JobSpec* s) { s->set_height_px(240); }), "spec.height_px",
       "[256, 2048]"},
      {"steps over 50", spec([](v1::JobSpec* s) { s->set_steps(51); }), "spec.steps",
       "51 is outside [1, 50]"},
      {"negative steps", spec([](v1::JobSpec* s) { s->set_steps(-1); }), "spec.steps", "[1, 50]"},
      {"guidance over 20", spec([](v1::JobSpec* s) { s->set_guidance_scale(20.5f); }),
       "spec.guidance_scale", "is outside [0, 20]"},
      {"negative guidance", spec([](v1::JobSpec* s) { s->set_guidance_scale(-1); }),
       "spec.guidance_scale", "[0, 20]"},
      {"NaN guidance",
       spec([](v1::JobSpec* s) { s->set_guidance_scale(std::numeric_limits<float>::quiet_NaN()); }),
       "spec.guidance_scale", "[0, 20]"},
      {"infinite guidance",
       spec([](v1::JobSpec* s) { s->set_guidance_scale(std::numeric_limits<float>::infinity()); }),
       "spec.guidance_scale", "[0, 20]"},
      {"output name over 128 bytes", spec([=](v1::JobSpec* s) { s->set_output_name(long_name); }),
       "spec.output_name", "129 bytes exceeds the limit of 128 bytes"},
      {"output name with a slash", spec([](v1::JobSpec* s) { s->set_output_name("a/b"); }),
       "spec.output_name", "must not contain '/'"},
      {"output name with a backslash", spec([](v1::JobSpec* s) { s->set_output_name("a\\b"); }),
       "spec.output_name", "'\\'"},
      {"output name with ..", spec([](v1::JobSpec* s) { s->set_output_name("..x"); }),
       "spec.output_name", "\"..\""},
      {"output name with a control character",
       spec([](v1::JobSpec* s) { s->set_output_name("a\nb"); }), "spec.output_name",
       "control characters"},
      {"priority over 100", spec([](v1::JobSpec* s) { s->set_priority(101); }), "spec.priority",
       "101 is outside [-100, 100]"},
      {"priority under -100", spec([](v1::JobSpec* s) { s->set_priority(-101); }), "spec.priority",
       "[-100, 100]"},
      {"33 labels",
       spec([](v1::JobSpec* s) {
         for (int i = 0; i < 33; ++i) (*s->mutable_labels())[absl::StrCat("k", i)] = "v";
       }),
       "spec.labels", "33 labels exceeds the limit of 32"},
      {"empty label key", spec([](v1::JobSpec* s) { (*s->mutable_labels())[""] = "v"; }),
       "spec.labels", "keys must be 1..256 bytes"},
      {"label key with =", spec([](v1::JobSpec* s) { (*s->mutable_labels())["a=b"] = "v"; }),
       "spec.labels", "without '='"},
      {"label value over 256 bytes",
       spec([](v1::JobSpec* s) { (*s->mutable_labels())["k"] = std::string(257, 'v'); }),
       "spec.labels", "values at most 256 bytes"},
      {"deadline before 1970", spec([](v1::JobSpec* s) { s->mutable_deadline()->set_seconds(-5); }),
       "spec.deadline", "must be a valid positive timestamp"},
      {"deadline nanos out of range",
       spec([](v1::JobSpec* s) {
         s->mutable_deadline()->set_seconds(4102444800);
         s->mutable_deadline()->set_nanos(1'000'000'000);
       }),
       "spec.deadline", "valid positive timestamp"},
      {"deadline in the past",
       spec([](v1::JobSpec* s) { s->mutable_deadline()->set_seconds(1'000'000'000); }),
       "spec.deadline", "is in the past"},
      {"webhook without an allow-list",
       spec([](v1::JobSpec* s) { s->set_webhook_url("http://10.0.0.1:9/hook"); }),
       "spec.webhook_url", "allow-list is empty"},
      {"model name over 128 bytes", spec([=](v1::JobSpec* s) { s->set_model(long_name); }),
       "spec.model", "limit of 128 bytes"},
      {"request id over 256 bytes",
       [](v1::SubmitJobRequest* r) { r->set_request_id(std::string(257, 'r')); }, "request_id",
       "257 bytes exceeds the limit of 256 bytes"},
      {"request id with a space", [](v1::SubmitJobRequest* r) { r->set_request_id("a b"); },
       "request_id", "printable ASCII without spaces"},
  };
}

TEST_F(BadInputTest, EverySpecFieldAndLimitOverGrpcNamesTheFieldAndTheLimit) {
  for (const SpecCase& c : SpecCases()) {
    v1::SubmitJobRequest r = Good();
    c.mutate(&r);
    grpc::Status s = Submit(r);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.name << ": " << s.error_message();
    EXPECT_THAT(s.error_message(), AllOf(HasSubstr(c.field + ":"), HasSubstr(c.limit))) << c.name;
  }
  // Control: the unchanged request is accepted.
  EXPECT_TRUE(Submit(Good()).ok());
}

TEST_F(BadInputTest, BatchAndQueryLimitsOverGrpc) {
  v1::SubmitJobsResponse batch;
  v1::SubmitJobsRequest empty;
  grpc::Status s = stub_->SubmitJobs(TestContext().get(), empty, &batch);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("jobs: must not be empty"));

  v1::SubmitJobsRequest big;
  for (int i = 0; i < 1001; ++i) *big.add_jobs() = Good();
  s = stub_->SubmitJobs(TestContext().get(), big, &batch);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("jobs: 1001 jobs exceeds the batch limit of 1000"));

  // One bad job names its index; nothing of the batch is queued (all or nothing).
  v1::SubmitJobsRequest one_bad;
  one_bad.set_batch_id("bad-input-batch");
  for (int i = 0; i < 5; ++i) *one_bad.add_jobs() = Good();
  one_bad.mutable_jobs(3)->mutable_spec()->set_steps(99);
  s = stub_->SubmitJobs(TestContext().get(), one_bad, &batch);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("jobs[3].spec.steps: 99 is outside [1, 50]"));
  v1::ListJobsRequest by_batch;
  by_batch.set_batch_id("bad-input-batch");
  v1::ListJobsResponse listed;
  ASSERT_TRUE(stub_->ListJobs(TestContext().get(), by_batch, &listed).ok());
  EXPECT_EQ(listed.jobs_size(), 0);

  v1::SubmitJobsRequest bad_batch_id = one_bad;
  bad_batch_id.mutable_jobs(3)->mutable_spec()->set_steps(4);
  bad_batch_id.set_batch_id(std::string(300, 'b'));
  s = stub_->SubmitJobs(TestContext().get(), bad_batch_id, &batch);
  EXPECT_THAT(s.error_message(), HasSubstr("batch_id: 300 bytes exceeds the limit of 256 bytes"));

  v1::ListJobsRequest page;
  page.set_page_size(1001);
  s = stub_->ListJobs(TestContext().get(), page, &listed);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("page_size: 1001 is outside [1, 1000]"));
  page.set_page_size(-1);
  s = stub_->ListJobs(TestContext().get(), page, &listed);
  EXPECT_THAT(s.error_message(), HasSubstr("page_size: -1 is outside [1, 1000]"));
  v1::ListJobsRequest token;
  token.set_page_token("not-a-token");
  s = stub_->ListJobs(TestContext().get(), token, &listed);
  EXPECT_THAT(s.error_message(), HasSubstr("page_token: not a token from ListJobs"));
  v1::ListJobsRequest label;
  label.set_label("no-equals-sign");
  s = stub_->ListJobs(TestContext().get(), label, &listed);
  EXPECT_THAT(s.error_message(), HasSubstr("label: must be \"key=value\""));

  v1::CancelJobResponse cancelled;
  s = stub_->CancelJob(TestContext().get(), v1::CancelJobRequest(), &cancelled);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("selector: set job_id, batch_id or label"));
  v1::Job job;
  s = stub_->GetJob(TestContext().get(), v1::GetJobRequest(), &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("job_id: must not be empty"));
  auto ctx = TestContext();
  auto watch = stub_->WatchJobs(ctx.get(), v1::WatchJobsRequest());
  v1::JobEvent ev;
  while (watch->Read(&ev)) {
  }
  s = watch->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("selector: set batch_id or label"));
}

TEST_F(BadInputTest, WatchersBeyondThePerJobCapAreRefusedNamingTheFlag) {
  v1::SubmitJobResponse resp;
  v1::SubmitJobRequest r = Good();
  r.mutable_spec()->set_model("no-worker-has-this-model");  // stays QUEUED
  ASSERT_TRUE(stub_->SubmitJob(TestContext().get(), r, &resp).ok());
  v1::WatchJobRequest w;
  w.set_job_id(resp.job().job_id());
  struct Stream {
    grpc::ClientContext ctx;
    std::unique_ptr<grpc::ClientReader<v1::JobEvent>> reader;
  };
  std::vector<std::unique_ptr<Stream>> open;
  for (int i = 0; i < 256; ++i) {  // --max-watchers-per-job's default
    open.push_back(std::make_unique<Stream>());
    open.back()->reader = stub_->WatchJob(&open.back()->ctx, w);
    v1::JobEvent snapshot;
    ASSERT_TRUE(open.back()->reader->Read(&snapshot)) << "watcher " << i;
  }
  auto ctx = TestContext();
  auto extra = stub_->WatchJob(ctx.get(), w);
  v1::JobEvent ev;
  EXPECT_FALSE(extra->Read(&ev));
  grpc::Status s = extra->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("--max-watchers-per-job=256"));
  for (auto& st : open) st->ctx.TryCancel();
  for (auto& st : open) {
    while (st->reader->Read(&ev)) {
    }
    st->reader->Finish().IgnoreError();
  }
}

// SubmitJob with raw request bytes (the C++ client refuses to serialize a proto3
// string that is not UTF-8): SubmitJobRequest{spec: JobSpec{prompt: `prompt`}}.
grpc::Status RawSubmit(const std::shared_ptr<grpc::Channel>& channel, const std::string& prompt) {
  std::string spec = std::string(1, '\x0a') + static_cast<char>(prompt.size()) + prompt;
  std::string wire = std::string(1, '\x12') + static_cast<char>(spec.size()) + spec;
  grpc::GenericStub generic(channel);
  grpc::Slice slice(wire);
  grpc::ByteBuffer in(&slice, 1), out;
  auto ctx = TestContext();
  absl::Notification done;
  grpc::Status st;
  generic.UnaryCall(ctx.get(), "/zfarm.v1.JobService/SubmitJob", grpc::StubOptions(), &in, &out,
                    [&](grpc::Status s) {
                      st = std::move(s);
                      done.Notify();
                    });
  done.WaitForNotification();  // the context's deadline bounds it
  return st;
}

TEST_F(BadInputTest, InvalidUtf8AndOversizedMessagesOverGrpc) {
  ASSERT_TRUE(RawSubmit(channel_, "a fox").ok());  // control: the raw path itself works
  // protobuf refuses to parse a proto3 string that is not UTF-8 before the
  // scheduler's own check ("spec.prompt: is not valid UTF-8") sees it; gRPC 1.51's
  // callback server answers that with UNIMPLEMENTED and no message. Refused either way.
  grpc::Status st = RawSubmit(channel_, "\xff\xfe");
  EXPECT_FALSE(st.ok());
  std::cout << "invalid UTF-8 over gRPC: code " << st.error_code() << " \"" << st.error_message()
            << "\"" << std::endl;

  // Over --max-message-bytes (by default 3 x --max-input-bytes + 1 MiB = 49 MiB, room
  // for an init image, a mask and a control picture): refused by gRPC, the limit in the
  // message.
  v1::SubmitJobRequest huge = Good();
  huge.mutable_spec()->set_prompt(std::string((49 << 20) + 1024, 'x'));
  grpc::Status s = Submit(huge);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("51380224"));
  EXPECT_TRUE(Submit(Good()).ok());  // and the scheduler is still fine
}

TEST_F(BadInputTest, RestSpecErrorsNameTheFieldAndTheLimit) {
  for (const SpecCase& c : SpecCases()) {
    if (c.name.find("NaN") != std::string::npos || c.name.find("infinite") != std::string::npos ||
        c.name.find("nanos") != std::string::npos) {
      continue;  // not expressible in protobuf's JSON mapping (NaN's string form: below)
    }
    v1::SubmitJobRequest r = Good();
    c.mutate(&r);
    std::string body;
    ASSERT_TRUE(google::protobuf::util::MessageToJsonString(r, &body).ok()) << c.name;
    Http h = Curl("POST", "/v1/jobs", body);
    EXPECT_EQ(h.status, 400) << c.name << ": " << h.body;
    EXPECT_EQ(h.Json().value("code", ""), "INVALID_ARGUMENT") << c.name << ": " << h.body;
    EXPECT_THAT(h.Json().value("message", ""), AllOf(HasSubstr(c.field + ":"), HasSubstr(c.limit)))
        << c.name;
  }
  Http nan = Curl("POST", "/v1/jobs", R"({"spec":{"prompt":"x","guidance_scale":"NaN"}})");
  EXPECT_EQ(nan.status, 400) << nan.body;
  EXPECT_THAT(nan.Json().value("message", ""), HasSubstr("spec.guidance_scale: nan is outside [0, 20]"));
  Http ok = Curl("POST", "/v1/jobs", R"({"spec":{"prompt":"a fox"}})");
  EXPECT_EQ(ok.status, 201) << ok.body;
}

TEST_F(BadInputTest, RestMalformedBodiesAreRefusedNamingWhatIsWrong) {
  struct BodyCase {
    std::string name, body, want;
  };
  const std::vector<BodyCase> cases = {
      {"not JSON", "{not json", "body: not a SubmitJobRequest in JSON"},
      {"truncated JSON", R"({"spec":{"prompt":"a fo)", "body: not a SubmitJobRequest in JSON"},
      {"a JSON array", "[1,2,3]", "body: not a SubmitJobRequest in JSON"},
      {"a JSON string", R"("a fox")", "body: not a SubmitJobRequest in JSON"},
      {"unknown top-level field", R"({"spec":{"prompt":"x"},"colour":"red"})", "colour"},
      {"unknown spec field", R"({"spec":{"prompt":"x","colour":"red"}})", "colour"},
      {"wrong type", R"({"spec":{"prompt":"x","width_px":"wide"}})", "width_px"},
      {"integer overflow", R"({"spec":{"prompt":"x","steps":99999999999}})", "steps"},
      {"invalid UTF-8 in a string", "{\"spec\":{\"prompt\":\"\xff\xfe\"}}", "body"},
  };
  for (const BodyCase& c : cases) {
    Http h = Curl("POST", "/v1/jobs", c.body);
    EXPECT_EQ(h.status, 400) << c.name << ": " << h.body;
    EXPECT_EQ(h.Json().value("code", ""), "INVALID_ARGUMENT") << c.name << ": " << h.body;
    EXPECT_THAT(h.Json().value("message", ""), HasSubstr(c.want)) << c.name << ": " << h.body;
  }
  // Deeply nested JSON must not crash the parser (a stack overflow would kill the
  // scheduler: TearDown checks it is still running).
  std::string deep = R"({"spec":{"prompt":"x","labels":)";
  for (int i = 0; i < 100000; ++i) deep += "[";
  Http h = Curl("POST", "/v1/jobs", deep);
  EXPECT_EQ(h.status, 400) << h.body.substr(0, 300);

  // Query parameters.
  h = Curl("GET", "/v1/jobs?state=bogus");
  EXPECT_EQ(h.status, 400) << h.body;
  EXPECT_THAT(h.Json().value("message", ""), HasSubstr("bogus"));
  h = Curl("GET", "/v1/jobs?page_size=5000");
  EXPECT_EQ(h.status, 400) << h.body;
  EXPECT_THAT(h.Json().value("message", ""), HasSubstr("page_size: 5000 is outside [1, 1000]"));
  h = Curl("GET", "/v1/jobs?page_size=lots");
  EXPECT_EQ(h.status, 400) << h.body;
  EXPECT_THAT(h.Json().value("message", ""), HasSubstr("page_size"));
}

TEST_F(BadInputTest, RestHugeBodiesAreRefusedWithTheLimit) {
  // Over the gateway's body limit, with a Content-Length and chunked. The binary's
  // limit leaves room for three base64 pictures of --max-input-bytes (16 MiB: an init
  // image, a mask and a control picture): 3 * 22369624 + 1 MiB = 68157448 bytes.
  const std::string huge = R"({"spec":{"prompt":")" + std::string(66 << 20, 'x') + R"("}})";
  Http h = Curl("POST", "/v1/jobs", huge);
  EXPECT_EQ(h.status, 413) << h.body.substr(0, 300);
  EXPECT_THAT(h.Json().value("message", ""), HasSubstr("68157448"));
  h = Curl("POST", "/v1/jobs", huge,
           "-H 'Content-Type: application/json' -H 'Transfer-Encoding: chunked'");
  EXPECT_EQ(h.status, 413) << h.body.substr(0, 300);
  EXPECT_THAT(h.Json().value("message", ""), HasSubstr("68157448"));
  // A 2 MiB body (over the HTTP server's own 1 MiB default) is read now: the
  // field's limit is named.
  const std::string two = R"({"spec":{"prompt":")" + std::string(2 << 20, 'x') + R"("}})";
  h = Curl("POST", "/v1/jobs", two);
  EXPECT_EQ(h.status, 400) << h.body.substr(0, 300);
  EXPECT_THAT(h.Json().value("message", ""), HasSubstr("spec.prompt: 2097152 bytes exceeds"));
  // Just under the body limit but over the prompt limit: the field's limit is named.
  const std::string big_prompt = R"({"spec":{"prompt":")" + std::string(500000, 'x') + R"("}})";
  h = Curl("POST", "/v1/jobs", big_prompt);
  EXPECT_EQ(h.status, 400) << h.body.substr(0, 300);
  EXPECT_THAT(h.Json().value("message", ""),
              HasSubstr("spec.prompt: 500000 bytes exceeds the limit of 4000 bytes"));
}

// JSON only; no Content-Type and curl -d's default (form-urlencoded) are read as
// JSON, anything else is 415 naming the header.
TEST_F(BadInputTest, RestWrongContentTypeIsRefusedNamingTheHeader) {
  const std::string body = R"({"spec":{"prompt":"a fox"}})";
  for (const std::string type : {"text/plain", "application/xml", "image/png",
                                 "multipart/form-data; boundary=x"}) {
    Http h = Curl("POST", "/v1/jobs", body, "-H 'Content-Type: " + type + "'");
    EXPECT_EQ(h.status, 415) << type << ": " << h.body;
    EXPECT_THAT(h.Json().value("message", ""), AllOf(HasSubstr("Content-Type"),
                                                     HasSubstr("application/json")))
        << type << ": " << h.body;
  }
  for (const std::string ok : {"-H 'Content-Type: application/json; charset=utf-8'",
                               "-H 'Content-Type: Application/JSON'", "-H 'Content-Type:'", ""}) {
    Http h = Curl("POST", "/v1/jobs", body, ok);  // "" = curl -d's form-urlencoded default
    EXPECT_EQ(h.status, 201) << ok << ": " << h.body;
  }
}

}  // namespace
}  // namespace zfarm
