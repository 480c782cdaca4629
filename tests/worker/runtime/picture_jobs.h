#ifndef ZFARM_TESTS_WORKER_RUNTIME_PICTURE_JOBS_H_
#define ZFARM_TESTS_WORKER_RUNTIME_PICTURE_JOBS_H_

// Helpers of the worker tests that render on the tiny model (ZFARM_TINY_MODEL_DIR): input
// pictures, the parameters written into a result, a worker connected to a test scheduler
// (PictureFarm: the frame of the picture-job tests).

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/testing/farm_client.h"
#include "tests/testing/scheduler_fixture.h"
#include "tests/testing/status_matchers.h"
#include "worker/io/file_util.h"
#include "worker/io/png.h"
#include "worker/pipeline/pipeline.h"
#include "worker/pipeline/pipeline_renderer.h"
#include "worker/runtime/worker.h"

namespace zfarm::worker::testing {

// A w x h PNG: a smooth picture, or (mask) a white disc on black.
inline std::string Picture(int w, int h, bool mask) {
  std::vector<uint8_t> rgb(static_cast<size_t>(w) * h * 3);
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      uint8_t* p = &rgb[(static_cast<size_t>(y) * w + x) * 3];
      if (mask) {
        const bool in = std::hypot(x - w / 2.0, y - h / 2.0) < w / 4.0;
        p[0] = p[1] = p[2] = in ? 255 : 0;
      } else {
        p[0] = static_cast<uint8_t>(x);
        p[1] = static_cast<uint8_t>(y);
        p[2] = static_cast<uint8_t>(128 + 100 * std::sin(x * 0.05));
      }
    }
  }
  auto png = EncodePng(rgb, w, h, {});
  EXPECT_OK(png.status());
  return png.ok() ? *png : "";
}

// Every text chunk of a PNG result as "key=value\n" lines.
inline std::string ParametersOf(const std::string& png_path) {
  auto bytes = ReadSmallFile(png_path, 64 << 20);
  if (!bytes.ok()) return "";
  auto png = DecodePng(*bytes);
  if (!png.ok()) return "";
  std::string all;
  for (const auto& [k, v] : png->text) all += k + "=" + v + "\n";
  return all;
}

// A channel to `address` that takes answers up to 64 MiB (the scheduler echoes specs with
// their pictures; gRPC's default is 4 MiB).
inline std::shared_ptr<grpc::Channel> BigMessageChannel(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

// Submits `spec` and waits (60 s) for its final state.
inline zfarm::v1::Job Render(zfarm::testing::FarmClient& client, const zfarm::v1::JobSpec& spec) {
  return client.WaitFinal(client.Submit(spec), absl::Seconds(60));
}

// The RGB pixels of a finished job's PNG under `output_root` (empty if unreadable).
inline std::vector<uint8_t> ResultPixels(const std::string& output_root, const zfarm::v1::Job& j) {
  auto bytes = ReadSmallFile(output_root + "/" + j.result().path(), 64 << 20);
  if (!bytes.ok()) return {};
  auto png = DecodePng(*bytes);
  return png.ok() ? png->rgb : std::vector<uint8_t>();
}

// A CPU worker on the tiny model for `address` writing under `output_root`: `po` and `o` as
// given (name, LoRAs, ControlNet...) with the model folder, a 64x64 one-step self-test, no
// free-disk reserve and fast reconnects filled in. nullptr (and a test failure) on error.
inline std::unique_ptr<Worker> MakeTinyWorker(const std::string& address,
                                              const std::string& output_root, PipelineOptions po,
                                              Worker::Options o) {
  po.model_dir = ZFARM_TINY_MODEL_DIR;
  auto p = Pipeline::Create(po);
  EXPECT_OK(p.status());
  if (!p.ok()) return nullptr;
  o.output_root = output_root;
  o.min_free_disk_bytes = 0;
  o.self_test.width = o.self_test.height = 64;
  o.self_test.steps = 1;
  o.self_test.prompt = "self-test";
  SchedulerLink::Options l;
  l.targets = {address};
  l.initial_backoff = absl::Milliseconds(20);
  l.max_backoff = absl::Milliseconds(200);
  auto w = Worker::Create(o, std::make_unique<PipelineRenderer>(*std::move(p), "cpu"), l);
  EXPECT_OK(w.status());
  return w.ok() ? *std::move(w) : nullptr;
}

// An in-process scheduler (200 ms heartbeats), a client that takes large answers, and one
// tiny-model worker (MakeTinyWorker(po, o)) started on it and serving.
struct PictureFarm {
  std::unique_ptr<zfarm::testing::TestScheduler> scheduler;
  std::unique_ptr<zfarm::testing::FarmClient> client;
  std::unique_ptr<Worker> worker;
  std::vector<std::string> features;  // what the worker's hello advertised

  // Submits `spec` and waits (60 s) for its final state.
  zfarm::v1::Job Render(const zfarm::v1::JobSpec& spec) { return testing::Render(*client, spec); }
  // The RGB pixels of a finished job's PNG (empty if unreadable).
  std::vector<uint8_t> Pixels(const zfarm::v1::Job& j) {
    return ResultPixels(scheduler->output_root(), j);
  }
  // Every text chunk of a finished job's PNG as "key=value\n" lines.
  std::string Parameters(const zfarm::v1::Job& j) {
    return ParametersOf(scheduler->output_root() + "/" + j.result().path());
  }
};

// Starts a PictureFarm; nullptr (and a test failure) when any part does not come up.
inline std::unique_ptr<PictureFarm> StartPictureFarm(PipelineOptions po, Worker::Options o) {
  auto f = std::make_unique<PictureFarm>();
  zfarm::scheduler::ServerOptions so;
  so.scheduler.heartbeat_interval = absl::Milliseconds(200);
  auto scheduler = zfarm::testing::TestScheduler::Start(so);
  EXPECT_OK(scheduler.status());
  if (!scheduler.ok()) return nullptr;
  f->scheduler = *std::move(scheduler);
  f->client =
      std::make_unique<zfarm::testing::FarmClient>(BigMessageChannel(f->scheduler->address()));
  f->worker = MakeTinyWorker(f->scheduler->address(), f->scheduler->output_root(), po, o);
  if (f->worker == nullptr) return nullptr;
  const zfarm::v1::WorkerHello hello = f->worker->MakeHello();
  f->features.assign(hello.features().begin(), hello.features().end());
  f->worker->Start();
  const bool serving =
      zfarm::testing::WaitFor([&] { return f->worker->Serving(); }, absl::Seconds(20));
  EXPECT_TRUE(serving) << "the tiny worker did not start serving in 20 s";
  return serving ? std::move(f) : nullptr;
}

}  // namespace zfarm::worker::testing

#endif  // ZFARM_TESTS_WORKER_RUNTIME_PICTURE_JOBS_H_
