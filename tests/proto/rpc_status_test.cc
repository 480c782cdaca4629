#include "proto/contract/rpc_status.h"

#include "gtest/gtest.h"
#include "proto/base/status_macros.h"
#include "proto/contract/error_details.h"
#include "tests/testing/status_matchers.h"
#include "zfarm/v1/job_service.pb.h"

namespace zfarm {
namespace {

using ::testing::HasSubstr;
using ::zfarm::contract::CopyErrorDetails;
using ::zfarm::contract::FindRequestIdConflict;
using ::zfarm::contract::FromGrpcStatus;
using ::zfarm::contract::RequestIdConflict;
using ::zfarm::contract::RequestIdConflictError;
using ::zfarm::contract::RetryDelay;
using ::zfarm::contract::RetryLater;
using ::zfarm::contract::SerializeErrorDetails;
using ::zfarm::contract::ToGrpcStatus;
using ::zfarm::contract::WithRetryDelay;
using ::zfarm::contract::WithSerializedErrorDetails;
using ::zfarm::testing::StatusIs;

TEST(RpcStatusTest, RoundTripsEveryCanonicalCode) {
  for (int code = 0; code <= 16; ++code) {
    absl::Status s(static_cast<absl::StatusCode>(code), code == 0 ? "" : "msg");
    grpc::Status g = ToGrpcStatus(s);
    EXPECT_EQ(static_cast<int>(g.error_code()), code);
    EXPECT_EQ(FromGrpcStatus(g), s);
  }
}

TEST(ErrorDetailsTest, RetryDelayIsTypedAndSaidInTheMessage) {
  absl::Status s = RetryLater("queue is full (--max-queued-jobs=3)", absl::Milliseconds(750));
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kResourceExhausted,
                          "queue is full (--max-queued-jobs=3); retry after 750 ms"));
  ASSERT_TRUE(RetryDelay(s).has_value());
  EXPECT_EQ(*RetryDelay(s), absl::Milliseconds(750));
  EXPECT_FALSE(FindRequestIdConflict(s).has_value());
  // The text alone carries nothing: a message that says the same has no delay.
  EXPECT_FALSE(RetryDelay(absl::ResourceExhaustedError(s.message())).has_value());
}

TEST(ErrorDetailsTest, ConflictNamesTheFieldAndTheJob) {
  absl::Status s = RequestIdConflictError("jobs[2].", {"r-7", "j-1"});
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument,
                          "jobs[2].request_id: \"r-7\" was already used for job j-1 with a "
                          "different spec"));
  std::optional<RequestIdConflict> c = FindRequestIdConflict(s);
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->request_id, "r-7");
  EXPECT_EQ(c->job_id, "j-1");
  EXPECT_FALSE(RetryDelay(s).has_value());
}

TEST(ErrorDetailsTest, SurviveTheWireFormAndRewording) {
  absl::Status s = WithRetryDelay(RequestIdConflictError("", {"r", "j"}), absl::Seconds(2));
  const std::string wire = SerializeErrorDetails(s);
  ASSERT_FALSE(wire.empty());
  absl::Status back = WithSerializedErrorDetails(absl::InvalidArgumentError("x"), wire);
  EXPECT_EQ(*RetryDelay(back), absl::Seconds(2));
  EXPECT_EQ(FindRequestIdConflict(back)->job_id, "j");
  absl::Status reworded = CopyErrorDetails(s, absl::InvalidArgumentError("SubmitJob: x"));
  EXPECT_EQ(reworded.message(), "SubmitJob: x");
  EXPECT_EQ(*RetryDelay(reworded), absl::Seconds(2));
  EXPECT_EQ(FindRequestIdConflict(reworded)->request_id, "r");
  // No details: nothing on the wire; a value that does not parse adds nothing.
  EXPECT_EQ(SerializeErrorDetails(absl::InternalError("plain")), "");
  absl::Status garbage = WithSerializedErrorDetails(absl::InternalError("y"), "\xff\xff\xff");
  EXPECT_FALSE(RetryDelay(garbage).has_value());
  EXPECT_FALSE(FindRequestIdConflict(garbage).has_value());
  // An OK status carries no details.
  EXPECT_TRUE(WithRetryDelay(absl::OkStatus(), absl::Seconds(1)).ok());
  EXPECT_FALSE(RetryDelay(WithSerializedErrorDetails(absl::OkStatus(), wire)).has_value());
}

absl::StatusOr<int> Half(int x) {
  if (x % 2 != 0) return absl::InvalidArgumentError("odd");
  return x / 2;
}

absl::StatusOr<int> Quarter(int x) {
  ZFARM_ASSIGN_OR_RETURN(int h, Half(x));
  ZFARM_ASSIGN_OR_RETURN(h, Half(h));
  return h;
}

TEST(StatusMacrosTest, PropagatesErrorsAndValues) {
  EXPECT_EQ(*Quarter(8), 2);
  EXPECT_THAT(Quarter(6), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("odd")));
}

TEST(ProtoTest, SpecSerializes) {
  zfarm::v1::SubmitJobRequest req;
  req.set_request_id("r1");
  req.mutable_spec()->set_prompt("a cat");
  req.mutable_spec()->set_seed(0);
  zfarm::v1::SubmitJobRequest back;
  ASSERT_TRUE(back.ParseFromString(req.SerializeAsString()));
  EXPECT_TRUE(back.spec().has_seed());
  EXPECT_EQ(back.spec().prompt(), "a cat");
}

}  // namespace
}  // namespace zfarm
