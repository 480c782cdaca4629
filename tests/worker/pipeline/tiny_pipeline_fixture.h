#ifndef ZFARM_TESTS_WORKER_PIPELINE_TINY_PIPELINE_FIXTURE_H_
#define ZFARM_TESTS_WORKER_PIPELINE_TINY_PIPELINE_FIXTURE_H_

// SmallRandomConfig(): a model small enough for random weights. And a GoogleTest
// fixture base that loads one CPU pipeline on the tiny model for a
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

// A model configuration small enough for random-weight pipelines in unit tests
// (PipelineOptions::random_weights), with `n_layers` main DiT layers.
inline ModelConfig SmallRandomConfig(int n_layers = 1) {
  ModelConfig c;
  c.transformer.dim = 64;
  c.transformer.n_heads = 2;
  c.transformer.n_layers = n_layers;
  c.transformer.n_refiner_layers = 1;
  c.transformer.axes_dims = {8, 12, 12};
  c.transformer.cap_feat_dim = 32;
  c.text_encoder.vocab_size = 256;
  c.text_encoder.hidden_size = 32;
  c.text_encoder.num_hidden_layers = 2;
  c.text_encoder.num_attention_heads = 2;
  c.text_encoder.num_key_value_heads = 1;
  c.text_encoder.head_dim = 16;
  c.text_encoder.intermediate_size = 64;
  c.vae.block_out_channels = {16, 16, 32, 32};
  c.vae.norm_num_groups = 8;
  return c;
}

}  // namespace zfarm::worker

#endif  // ZFARM_TESTS_WORKER_PIPELINE_TINY_PIPELINE_FIXTURE_H_
