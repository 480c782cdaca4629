#ifndef ZFARM_TESTS_TESTING_STATUS_MATCHERS_H_
#define ZFARM_TESTS_TESTING_STATUS_MATCHERS_H_

// GoogleTest helpers for absl::Status / absl::StatusOr (Abseil 20220623 ships none).
//
//   EXPECT_OK(store.Open());
//   ASSERT_OK_AND_ASSIGN(auto file, SafetensorsFile::Open(path));
//   EXPECT_THAT(Parse("x"), StatusIs(absl::StatusCode::kInvalidArgument,
//                                    HasSubstr("width")));

#include <ostream>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace zfarm::testing {

inline const absl::Status& GetStatus(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& GetStatus(const absl::StatusOr<T>& s) {
  return s.status();
}

// Matches a Status or StatusOr whose code equals `code` and whose message
// matches `message_matcher`.
MATCHER_P2(StatusIs, code, message_matcher,
           std::string("status code is ") + absl::StatusCodeToString(code)) {
  const absl::Status& s = ::zfarm::testing::GetStatus(arg);
  *result_listener << "status is " << s;
  return s.code() == code &&
         ::testing::ExplainMatchResult(message_matcher, std::string(s.message()),
                                       result_listener);
}

}  // namespace zfarm::testing

#define EXPECT_OK(expr) EXPECT_EQ(::zfarm::testing::GetStatus(expr), ::absl::OkStatus())
#define ASSERT_OK(expr) ASSERT_EQ(::zfarm::testing::GetStatus(expr), ::absl::OkStatus())

#define ZFARM_TESTING_CONCAT_INNER_(a, b) a##b
#define ZFARM_TESTING_CONCAT_(a, b) ZFARM_TESTING_CONCAT_INNER_(a, b)
#define ASSERT_OK_AND_ASSIGN(lhs, rexpr) \
  ASSERT_OK_AND_ASSIGN_IMPL_(ZFARM_TESTING_CONCAT_(zfarm_so_, __LINE__), lhs, rexpr)
#define ASSERT_OK_AND_ASSIGN_IMPL_(so, lhs, rexpr) \
  auto so = (rexpr);                               \
  ASSERT_OK(so.status());                          \
  lhs = std::move(so).value()

#endif  // ZFARM_TESTS_TESTING_STATUS_MATCHERS_H_
