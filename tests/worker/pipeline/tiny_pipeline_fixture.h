#ifndef ZFARM_TESTS_WORKER_PIPELINE_TINY_PIPELINE_FIXTURE_H_
#define ZFARM_TESTS_WORKER_PIPELINE_TINY_PIPELINE_FIXTURE_H_

// A GoogleTest fixture base that loads one CPU pipeline on the tiny model for a
// whole test suite (made by make_tiny_model in SetUpTestSuite, removed in
// TearDownTestSuite). `Base` is ::testing::Test or ::testing::TestWithParam<T>.
//
//   class PipelineTest : public TinyPipelineFixture<::testing::Test> {};
//   TEST_F(PipelineTest, X) { ASSERT_NE(pipeline_, nullptr); ... }

#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"
#include "tests/worker/model/tiny_folder.h"
#include "worker/pipeline/pipeline.h"

namespace zfarm::worker {

template <typename Base>
class TinyPipelineFixture : public Base {
 protected:
  static void SetUpTestSuite() {
    const std::string dir = testing::MakeTinyFolder();
    ASSERT_FALSE(dir.empty());
    PipelineOptions o;
    o.model_dir = dir;
    auto p = Pipeline::Create(o);
    ASSERT_OK(p.status());
    pipeline_ = p->release();
  }
  static void TearDownTestSuite() {
    delete pipeline_;
    pipeline_ = nullptr;
    testing::RemoveTinyFolder();
  }
  // Owned by the suite; nullptr if SetUpTestSuite failed.
  static inline Pipeline* pipeline_ = nullptr;
};

}  // namespace zfarm::worker

#endif  // ZFARM_TESTS_WORKER_PIPELINE_TINY_PIPELINE_FIXTURE_H_
