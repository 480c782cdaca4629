#include "proto/rpc_status.h"

#include "gtest/gtest.h"
#include "proto/status_macros.h"
#include "tests/testing/status_matchers.h"
#include "zfarm/v1/job_service.pb.h"

namespace zfarm {
namespace {

using ::testing::HasSubstr;
using ::zfarm::testing::StatusIs;

TEST(RpcStatusTest, RoundTripsEveryCanonicalCode) {
  for (int code = 0; code <= 16; ++code) {
    absl::Status s(static_cast<absl::StatusCode>(code), code == 0 ? "" : "msg");
    grpc::Status g = ToGrpcStatus(s);
    EXPECT_EQ(static_cast<int>(g.error_code()), code);
    EXPECT_EQ(FromGrpcStatus(g), s);
  }
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
