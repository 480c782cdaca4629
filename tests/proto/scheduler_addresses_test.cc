// The `--scheduler` address list that the CLI and the worker share.
#include "proto/base/scheduler_addresses.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace zfarm {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::zfarm::base::kMaxSchedulerAddresses;
using ::zfarm::base::ParseSchedulerAddresses;

TEST(SchedulerAddressesTest, OneAddressOrAListInOrderWithBlanksTrimmed) {
  absl::StatusOr<std::vector<std::string>> one = ParseSchedulerAddresses("--scheduler", "a:1");
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_THAT(*one, ElementsAre("a:1"));
  absl::StatusOr<std::vector<std::string>> list =
      ParseSchedulerAddresses("--scheduler", "sched-1:50051, sched-0:50051 ,[::1]:7");
  ASSERT_TRUE(list.ok()) << list.status();
  EXPECT_THAT(*list, ElementsAre("sched-1:50051", "sched-0:50051", "[::1]:7"));
}

TEST(SchedulerAddressesTest, EmptyRepeatedAndTooManyAreRefusedNamingTheFlag) {
  for (const char* bad : {"", "a:1,", ",a:1", "a:1,,b:2", " , "}) {
    absl::StatusOr<std::vector<std::string>> r = ParseSchedulerAddresses("--scheduler", bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(r.status().message(), HasSubstr("--scheduler"));
    EXPECT_THAT(r.status().message(), HasSubstr("empty address"));
  }
  absl::StatusOr<std::vector<std::string>> twice = ParseSchedulerAddresses("ADDR", "a:1,b:2,a:1");
  ASSERT_FALSE(twice.ok());
  EXPECT_THAT(twice.status().message(), HasSubstr("ADDR: address a:1 is listed twice"));
  std::string many;
  for (size_t i = 0; i <= kMaxSchedulerAddresses; ++i) many += absl::StrCat(i ? "," : "", "h:", i);
  absl::StatusOr<std::vector<std::string>> r = ParseSchedulerAddresses("--scheduler", many);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("17 addresses exceeds the limit of 16"));
  many = many.substr(0, many.rfind(','));
  EXPECT_TRUE(ParseSchedulerAddresses("--scheduler", many).ok());
}

}  // namespace
}  // namespace zfarm
