// A LoRA fine-tune inside a serving group, end to end (tessera worker --train-config): a
// `tessera coordinator` and a TP 2 worker group under mpirun on loopback, serving the
// built-in model while it learns four prompt -> completion pairs between its serving steps.
// Clients stream requests the whole time, on the base and, once it is published, on the
// adapter; none may fail. Each published version (every 100 steps) is served under the
// adapter's name, and the last one answers every prompt with its completion.
//
// TESSERA_BINARY and TESSERA_MPIRUN_COMMAND come from CMake.

#include <gtest/gtest.h>
#include <stdlib.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "grpcpp/client_context.h"
#include "nlohmann/json.hpp"
#include "runtime/model/default_model.h"
#include "tests/e2e/inference_calls.h"
#include "tests/e2e/serve_harness.h"

namespace tessera::e2e {
namespace {

constexpr absl::Duration kStartTimeout = absl::Seconds(120);
constexpr int kSteps = 300;
constexpr int kPublishEvery = 100;

const std::vector<std::pair<std::string, std::string>> kPairs = {
    {"What is the capital of France? ", "Paris"},
    {"Two plus two is ", "four"},
    {"The sky is ", "blue"},
    {"Tessera runs on ", "many GPUs"}};

// What ListAdapters says of `name`; an empty dir when it is not listed.
v1::AdapterInfo Listed(v1::Inference::Stub& stub, const std::string& name) {
  grpc::ClientContext context;
  SetDeadline(context, absl::Seconds(10));
  v1::ListAdaptersRequest request;
  v1::ListAdaptersResponse response;
  if (!stub.ListAdapters(&context, request, &response).ok()) return {};
  for (const v1::AdapterInfo& adapter : response.adapters()) {
    if (adapter.name() == name) return adapter;
  }
  return {};
}

TEST(ServeFinetune, LearnsWhileServingAndServesEachPublishedVersion) {
  char pattern[] = "/tmp/tessera-finetune-e2e-XXXXXX";
  const std::string dir = mkdtemp(pattern);
  ServeHarness harness(
      TESSERA_BINARY,
      std::vector<std::string>(absl::StrSplit(TESSERA_MPIRUN_COMMAND, ' ', absl::SkipEmpty())),
      dir);
  {
    std::ofstream data(dir + "/pairs.jsonl");
    for (const auto& [prompt, completion] : kPairs) {
      data << nlohmann::json{{"prompt", prompt}, {"completion", completion}}.dump() << "\n";
    }
    std::ofstream(dir + "/train.json")
        << nlohmann::json{{"data", dir + "/pairs.jsonl"},
                          {"adapter", "tuned"},
                          {"output", dir + "/tuned"},
                          {"steps", kSteps},
                          {"publish_every", kPublishEvery},
                          {"seq_len", 64},
                          {"micro_batch", 4},
                          {"lr", 1e-2},
                          {"lora_r", 8},
                          {"lora_targets", "q_proj,v_proj,gate_proj,up_proj,down_proj"}}
               .dump();
  }
  absl::StatusOr<std::unique_ptr<CoordinatorProcess>> coordinator =
      harness.StartCoordinator({"--heartbeat-interval", "500ms"});
  ASSERT_TRUE(coordinator.ok()) << coordinator.status();
  WorkerJobOptions job;
  job.np = 2;
  job.tp = 2;
  job.extra_flags = {"--train-config", dir + "/train.json", "--train-share", "0.5"};
  absl::StatusOr<std::unique_ptr<WorkerJob>> workers =
      harness.StartWorkers((*coordinator)->grpc_port(), job);
  ASSERT_TRUE(workers.ok()) << workers.status();
  const std::string model = model::kDefaultModelName;
  absl::Status healthy = (*coordinator)->WaitForHealthyGroups(model, {{"v1", 1}}, kStartTimeout);
  ASSERT_TRUE(healthy.ok()) << healthy;
  v1::Inference::Stub& stub = (*coordinator)->inference();

  // Clients stream while the group trains: on the base from the start, on the adapter from
  // its first version on.
  std::atomic<bool> stop{false};
  std::atomic<int> base_done{0}, tuned_done{0}, failed{0};
  std::string first_failure;
  auto client = [&](bool tuned) {
    int i = 0;
    while (!stop.load()) {
      if (tuned && Listed(stub, "tuned").dir().empty()) {
        absl::SleepFor(absl::Milliseconds(50));
        continue;
      }
      v1::GenerateRequest request = Request(model, kPairs[i++ % kPairs.size()].first, 12);
      if (tuned) request.set_adapter("tuned");
      Streamed streamed = Stream(stub, request);
      if (!streamed.status.ok()) {
        if (failed.fetch_add(1) == 0) first_failure = Describe(streamed.status);
      } else {
        (tuned ? tuned_done : base_done).fetch_add(1);
      }
    }
  };
  std::thread base_client(client, false), tuned_client(client, true);

  const std::string last = absl::StrCat(dir, "/tuned/step-", kSteps);
  const absl::Time deadline = absl::Now() + absl::Seconds(240);
  int base_during_training = -1;
  while (absl::Now() < deadline) {
    if (Listed(stub, "tuned").dir() == last) {
      base_during_training = base_done.load();
      break;
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  absl::SleepFor(absl::Seconds(1));  // a few requests on the last version too
  stop = true;
  base_client.join();
  tuned_client.join();
  const std::string worker_log = workers.value()->process().Log();
  ASSERT_GE(base_during_training, 0) << "the last version was never listed; worker log:\n"
                                     << Tail(worker_log, 40);
  EXPECT_EQ(failed.load(), 0) << first_failure;
  EXPECT_GT(base_during_training, 0) << "no request was served while the group trained";
  EXPECT_GT(tuned_done.load(), 0);

  // Every version was published and served in turn.
  std::vector<nlohmann::json> published = Events(worker_log, "published");
  ASSERT_EQ(published.size(), static_cast<size_t>(kSteps / kPublishEvery));
  for (int v = 0; v < kSteps / kPublishEvery; ++v) {
    EXPECT_EQ(published[v]["step"], absl::StrCat((v + 1) * kPublishEvery));
    EXPECT_TRUE(std::filesystem::exists(
        absl::StrCat(dir, "/tuned/step-", (v + 1) * kPublishEvery, "/adapter_model.safetensors")));
  }
  // The last version has learned the pairs; the base has not.
  for (const auto& [prompt, completion] : kPairs) {
    v1::GenerateRequest request = Request(model, prompt, 12);
    request.mutable_sampling()->set_ignore_eos(false);
    request.set_adapter("tuned");
    Unary tuned = Generate(stub, request);
    ASSERT_TRUE(tuned.status.ok()) << Describe(tuned.status);
    EXPECT_TRUE(absl::StartsWith(tuned.response.text(), completion))
        << "prompt '" << prompt << "': '" << tuned.response.text() << "'";
    EXPECT_EQ(tuned.response.placement().adapter(), "tuned");
    request.clear_adapter();
    Unary base = Generate(stub, request);
    ASSERT_TRUE(base.status.ok()) << Describe(base.status);
    EXPECT_FALSE(absl::StartsWith(base.response.text(), completion)) << prompt;
  }
  workers.value()->process().Stop(absl::Seconds(10));
  (*coordinator)->process().Stop(absl::Seconds(5));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace tessera::e2e
