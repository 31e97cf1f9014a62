// LoRA adapters served through the coordinator, end to end: a `tessera coordinator` and
// `tessera worker` jobs under mpirun on loopback, serving the tiny checkpoint
// tests/golden/models/llama (with the built-in model's byte-level tokenizer beside it, as
// tests/mpi/generate_test.cc does) and the PEFT adapters a and b of tests/golden/lora_serving.
//
// The references are outside the serving path: `tessera generate --adapters` (the offline
// engine, started with both adapters) for whole generations, and transformers + peft (the
// goldens' logits at the prompt's last position) for the first token. The worker starts with
// b (--adapters), which its registration reports before any heartbeat; a arrives through the
// coordinator's LoadAdapter, or `tessera client adapters load`. A second job, of another
// version and at TP 2, registers after the load and must get a from its registration.
// TESSERA_BINARY, TESSERA_MPIRUN_COMMAND, TESSERA_GOLDEN_MODELS and TESSERA_GOLDEN_LORA come
// from CMake.

#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "grpcpp/client_context.h"
#include "httplib.h"
#include "nlohmann/json.hpp"
#include "runtime/model/default_model.h"
#include "tests/e2e/inference_calls.h"
#include "tests/e2e/serve_harness.h"

namespace tessera::e2e {
namespace {

using ::grpc::StatusCode;
using Json = nlohmann::json;

constexpr absl::Duration kStartTimeout = absl::Seconds(120);
constexpr char kModel[] = "llama-lora";  // the model directory's name
// tests/golden/lora_serving's prompt (make_lora_goldens.py).
const std::vector<int32_t> kPrompt = {1, 17, 200, 35, 99, 4, 250, 63, 128, 7, 42, 3};
constexpr int kMaxTokens = 8;

const std::string kAdapters = TESSERA_GOLDEN_LORA;

// The argmax of the golden logits of adapter `name` at the prompt's last position: the
// greedy first token under transformers + peft.
int32_t GoldenFirstToken(const std::string& name) {
  std::ifstream file(kAdapters + "/" + name + "/golden.json");
  const Json golden = Json::parse(file);
  const Json& last = golden["logits"].back();
  int32_t best = 0;
  for (size_t i = 1; i < last.size(); ++i) {
    if (last[i].get<double>() > last[best].get<double>()) best = static_cast<int32_t>(i);
  }
  return best;
}

v1::GenerateRequest PromptRequest(const std::string& adapter, const std::string& version = "") {
  v1::GenerateRequest request;
  request.set_model(kModel);
  request.set_version(version);
  request.set_adapter(adapter);
  request.mutable_prompt_tokens()->Add(kPrompt.begin(), kPrompt.end());
  request.mutable_sampling()->set_max_tokens(kMaxTokens);
  request.mutable_sampling()->set_ignore_eos(true);
  return request;
}

std::vector<int32_t> Tokens(const v1::GenerateResponse& response) {
  return {response.tokens().begin(), response.tokens().end()};
}

// The keys of `listed`, for messages.
std::string Names(const std::map<std::string, v1::AdapterInfo>& listed) {
  std::vector<std::string> names;
  for (const auto& [name, info] : listed) names.push_back(name);
  return absl::StrJoin(names, ", ");
}

class AdapterServing : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char pattern[] = "/tmp/tessera-adapter-e2e-XXXXXX";
    dir_ = mkdtemp(pattern);
    harness_ = std::make_unique<ServeHarness>(
        TESSERA_BINARY,
        std::vector<std::string>(absl::StrSplit(TESSERA_MPIRUN_COMMAND, ' ', absl::SkipEmpty())),
        dir_);
    model_dir_ = dir_ + "/" + kModel;
    std::filesystem::create_directories(model_dir_);
    absl::Status written = model::WriteDefaultModel(model_dir_);
    ASSERT_TRUE(written.ok()) << written;
    // Text prompts (the command-line client's) without the tokenizer's BOS, id 256: the
    // checkpoint's vocabulary is the 256 bytes alone.
    const std::string tokenizer_config = model_dir_ + "/tokenizer_config.json";
    Json config = Json::parse(std::ifstream(tokenizer_config));
    config["add_bos_token"] = false;
    std::ofstream(tokenizer_config) << config.dump(2);
    for (const char* file : {"config.json", "generation_config.json", "model.safetensors"}) {
      std::filesystem::copy_file(std::string(TESSERA_GOLDEN_MODELS) + "/llama/" + file,
                                 model_dir_ + "/" + file,
                                 std::filesystem::copy_options::overwrite_existing);
    }
    reference_ = Reference();
    if (::testing::Test::HasFatalFailure()) return;

    absl::StatusOr<std::unique_ptr<CoordinatorProcess>> coordinator = harness_->StartCoordinator(
        {"--heartbeat-interval", "500ms", "--http-listen", "127.0.0.1:0"});
    ASSERT_TRUE(coordinator.ok()) << coordinator.status();
    coordinator_ = *std::move(coordinator);
    WorkerJobOptions job;
    job.extra_flags = WorkerFlags({"--adapters", "b=" + kAdapters + "/b"});
    absl::StatusOr<ServingGroup> serving =
        StartServingGroup(*harness_, *coordinator_, job, kModel, kStartTimeout);
    ASSERT_TRUE(serving.ok()) << serving.status();
    workers_ = std::move(serving->workers);
    // The adapters a worker starts with come with its registration: listed at once, with no
    // heartbeat awaited (AWorkersOwnAdaptersAreServedBeforeItsFirstHeartbeat).
    std::map<std::string, v1::AdapterInfo> listed = Listed();
    ASSERT_TRUE(listed.contains("v1/b")) << Names(listed) << Logs();
    ASSERT_EQ(listed["v1/b"].groups(), 1);
    group_ = serving->group;
  }

  static void TearDownTestSuite() {
    EndSuite("adapter_serving_test", ::testing::UnitTest::GetInstance()->Failed(), workers_,
             coordinator_, harness_, dir_);
  }

  void SetUp() override {
    ASSERT_NE(workers_, nullptr) << "the processes did not start";
    ASSERT_FALSE(group_.empty());
  }
  void TearDown() override {
    if (HasFailure()) std::fprintf(stderr, "%s", Logs().c_str());
  }

  static std::string Logs() { return SuiteLogs(coordinator_.get(), workers_.get()); }

  // The model, a small cache of blocks of 8 (a prompt of 12 tokens fills one), and `more`.
  static std::vector<std::string> WorkerFlags(std::vector<std::string> more = {}) {
    std::vector<std::string> flags = {"--model", model_dir_, "--block-size", "8"};
    flags.insert(flags.end(), more.begin(), more.end());
    return flags;
  }

  // `tessera generate --adapters a=...,b=...` on the prompt, with no adapter, a and b: their
  // tokens by adapter ("" the base).
  static std::map<std::string, std::vector<int32_t>> Reference() {
    const std::string requests = dir_ + "/requests.jsonl", output = dir_ + "/reference.jsonl";
    {
      std::ofstream out(requests);
      for (const std::string adapter : {"", "a", "b"}) {
        Json line = {{"id", adapter.empty() ? "base" : adapter},
                     {"prompt_token_ids", kPrompt},
                     {"max_tokens", kMaxTokens},
                     {"ignore_eos", true}};
        if (!adapter.empty()) line["adapter"] = adapter;
        out << line.dump() << "\n";
      }
    }
    ServeHarness::Outcome run =
        harness_->RunTessera({"generate", "--model", model_dir_, "--adapters",
                              absl::StrCat("a=", kAdapters, "/a,b=", kAdapters, "/b"), "--requests",
                              requests, "--output", output},
                             kStartTimeout);
    EXPECT_EQ(run.exit_code, 0) << run.output;
    std::map<std::string, std::vector<int32_t>> tokens;
    std::ifstream in(output);
    for (std::string text; std::getline(in, text);) {
      const Json line = Json::parse(text);
      const std::string id = line["id"].get<std::string>();
      tokens[id == "base" ? "" : id] = line["token_ids"].get<std::vector<int32_t>>();
    }
    EXPECT_EQ(tokens.size(), 3u) << run.output;
    for (const auto& [adapter, ids] : tokens) {
      EXPECT_EQ(ids.size(), static_cast<size_t>(kMaxTokens)) << "adapter " << adapter;
    }
    return tokens;
  }

  static v1::Inference::Stub& inference() { return coordinator_->inference(); }

  static grpc::Status Load(const std::string& name, const std::string& dir,
                           const std::string& version = "",
                           v1::LoadAdapterResponse* response = nullptr) {
    v1::LoadAdapterRequest request;
    request.set_model(kModel);
    request.set_version(version);
    request.mutable_adapter()->set_name(name);
    request.mutable_adapter()->set_dir(dir);
    grpc::ClientContext context;
    SetDeadline(context, absl::Seconds(60));
    v1::LoadAdapterResponse ignored;
    return inference().LoadAdapter(&context, request, response != nullptr ? response : &ignored);
  }

  static grpc::Status Unload(const std::string& name,
                             v1::UnloadAdapterResponse* response = nullptr) {
    v1::UnloadAdapterRequest request;
    request.set_model(kModel);
    request.set_name(name);
    grpc::ClientContext context;
    SetDeadline(context, absl::Seconds(60));
    v1::UnloadAdapterResponse ignored;
    return inference().UnloadAdapter(&context, request, response != nullptr ? response : &ignored);
  }

  // ListAdapters' entries of the model, by "version/name".
  static std::map<std::string, v1::AdapterInfo> Listed() {
    v1::ListAdaptersRequest request;
    request.set_model(kModel);
    v1::ListAdaptersResponse response;
    grpc::ClientContext context;
    SetDeadline(context, absl::Seconds(10));
    grpc::Status status = inference().ListAdapters(&context, request, &response);
    EXPECT_TRUE(status.ok()) << Describe(status);
    std::map<std::string, v1::AdapterInfo> listed;
    for (const v1::AdapterInfo& info : response.adapters()) {
      listed[absl::StrCat(info.version(), "/", info.name())] = info;
    }
    return listed;
  }

  static std::string dir_;
  static std::string model_dir_;
  static std::unique_ptr<ServeHarness> harness_;
  static std::map<std::string, std::vector<int32_t>> reference_;
  static std::unique_ptr<CoordinatorProcess> coordinator_;
  static std::unique_ptr<WorkerJob> workers_;
  static std::string group_;
};

std::string AdapterServing::dir_;
std::string AdapterServing::model_dir_;
std::unique_ptr<ServeHarness> AdapterServing::harness_;
std::map<std::string, std::vector<int32_t>> AdapterServing::reference_;
std::unique_ptr<CoordinatorProcess> AdapterServing::coordinator_;
std::unique_ptr<WorkerJob> AdapterServing::workers_;
std::string AdapterServing::group_;

TEST_F(AdapterServing, TheReferencesAgreeWithPeft) {
  ASSERT_EQ(reference_.size(), 3u);
  EXPECT_EQ(reference_["a"].front(), GoldenFirstToken("a"));
  EXPECT_EQ(reference_["b"].front(), GoldenFirstToken("b"));
  EXPECT_NE(reference_["a"], reference_[""]);
  EXPECT_NE(reference_["a"], reference_["b"]);
}

TEST_F(AdapterServing, AnAdapterLoadedThroughTheCoordinatorServesItsTokens) {
  // b came with the worker: listed from its heartbeats, and served.
  std::map<std::string, v1::AdapterInfo> listed = Listed();
  ASSERT_TRUE(listed.contains("v1/b")) << Names(listed);
  EXPECT_EQ(listed["v1/b"].dir(), kAdapters + "/b");
  EXPECT_EQ(listed["v1/b"].groups(), 1);
  EXPECT_FALSE(listed.contains("v1/a"));
  EXPECT_EQ(Generate(inference(), PromptRequest("a")).status.error_code(), StatusCode::NOT_FOUND);

  absl::StatusOr<MetricsSnapshot> before = coordinator_->Metrics();
  ASSERT_TRUE(before.ok()) << before.status();
  auto served = [](const MetricsSnapshot& metrics, const std::string& family,
                   const std::string& adapter) {
    return metrics.Sum(family, {{"model", kModel}, {"adapter", adapter}});
  };
  v1::LoadAdapterResponse loaded;
  grpc::Status status = Load("a", kAdapters + "/a", "", &loaded);
  ASSERT_TRUE(status.ok()) << Describe(status);
  EXPECT_EQ(std::vector<std::string>(loaded.groups().begin(), loaded.groups().end()),
            std::vector<std::string>{group_});
  // At once, with no heartbeat awaited.
  Unary with_a = Generate(inference(), PromptRequest("a"));
  ASSERT_TRUE(with_a.status.ok()) << Describe(with_a.status);
  EXPECT_EQ(Tokens(with_a.response), reference_["a"]);
  EXPECT_EQ(with_a.response.placement().adapter(), "a");
  EXPECT_EQ(with_a.response.placement().group(), group_);
  Unary with_b = Generate(inference(), PromptRequest("b"));
  ASSERT_TRUE(with_b.status.ok()) << Describe(with_b.status);
  EXPECT_EQ(Tokens(with_b.response), reference_["b"]);
  Unary base = Generate(inference(), PromptRequest(""));
  ASSERT_TRUE(base.status.ok()) << Describe(base.status);
  EXPECT_EQ(Tokens(base.response), reference_[""]);
  EXPECT_EQ(base.response.placement().adapter(), "");
  // Streamed, the same.
  Streamed streamed = Stream(inference(), PromptRequest("a"));
  ASSERT_TRUE(streamed.status.ok()) << Describe(streamed.status);
  EXPECT_EQ(streamed.Tokens(), reference_["a"]);

  listed = Listed();
  ASSERT_TRUE(listed.contains("v1/a"));
  EXPECT_EQ(listed["v1/a"].model(), kModel);
  EXPECT_EQ(listed["v1/a"].dir(), kAdapters + "/a");
  EXPECT_EQ(listed["v1/a"].groups(), 1);
  EXPECT_EQ(listed["v1/a"].resident(), 1);

  // Loading the name again replaces it: a now runs b's weights.
  status = Load("a", kAdapters + "/b");
  ASSERT_TRUE(status.ok()) << Describe(status);
  Unary replaced = Generate(inference(), PromptRequest("a"));
  ASSERT_TRUE(replaced.status.ok()) << Describe(replaced.status);
  EXPECT_EQ(Tokens(replaced.response), reference_["b"]);

  // Per adapter: a's three requests (the refused one never ran), b's and the base's one.
  absl::StatusOr<MetricsSnapshot> after = coordinator_->Metrics();
  ASSERT_TRUE(after.ok()) << after.status();
  constexpr char kRequests[] = "tessera_adapter_requests_total";
  constexpr char kTokens[] = "tessera_adapter_completion_tokens_total";
  EXPECT_EQ(served(*after, kRequests, "a") - served(*before, kRequests, "a"), 3);
  EXPECT_EQ(served(*after, kTokens, "a") - served(*before, kTokens, "a"), 3 * kMaxTokens);
  EXPECT_EQ(served(*after, kRequests, "b") - served(*before, kRequests, "b"), 1);
  EXPECT_EQ(served(*after, kRequests, "") - served(*before, kRequests, ""), 1);

  status = Unload("a");
  EXPECT_TRUE(status.ok()) << Describe(status);
}

TEST_F(AdapterServing, AnUnloadedAdapterIsRefused) {
  grpc::Status status = Load("a", kAdapters + "/a");
  ASSERT_TRUE(status.ok()) << Describe(status);
  ASSERT_TRUE(Generate(inference(), PromptRequest("a")).status.ok());
  v1::UnloadAdapterResponse unloaded;
  status = Unload("a", &unloaded);
  ASSERT_TRUE(status.ok()) << Describe(status);
  EXPECT_EQ(std::vector<std::string>(unloaded.groups().begin(), unloaded.groups().end()),
            std::vector<std::string>{group_});
  Unary refused = Generate(inference(), PromptRequest("a"));
  EXPECT_EQ(refused.status.error_code(), StatusCode::NOT_FOUND) << Describe(refused.status);
  EXPECT_TRUE(absl::StrContains(
      refused.status.error_message(),
      absl::StrCat("adapter: \"a\" is not loaded for model ", kModel, "; loaded: b")))
      << Describe(refused.status);
  EXPECT_FALSE(Listed().contains("v1/a"));
  // Still so after the heartbeats that follow.
  absl::SleepFor(absl::Seconds(1.5));
  EXPECT_EQ(Generate(inference(), PromptRequest("a")).status.error_code(), StatusCode::NOT_FOUND);
  EXPECT_EQ(Unload("a").error_code(), StatusCode::NOT_FOUND);
  // The base and b are untouched.
  EXPECT_TRUE(Generate(inference(), PromptRequest("b")).status.ok());
  EXPECT_TRUE(Generate(inference(), PromptRequest("")).status.ok());
}

TEST_F(AdapterServing, BadLoadsAreRefusedAndAFailedLoadLeavesNothing) {
  auto refused = [](const grpc::Status& status, StatusCode code, const std::string& part) {
    EXPECT_EQ(status.error_code(), code) << Describe(status);
    EXPECT_TRUE(absl::StrContains(status.error_message(), part)) << Describe(status);
  };
  refused(Load("a:b", kAdapters + "/a"), StatusCode::INVALID_ARGUMENT, "adapter.name");
  refused(Load("", kAdapters + "/a"), StatusCode::INVALID_ARGUMENT, "adapter.name: required");
  refused(Load("a", ""), StatusCode::INVALID_ARGUMENT, "adapter.dir: required");
  refused(Load("a", kAdapters + "/a", "v9"), StatusCode::NOT_FOUND, "version");
  v1::LoadAdapterRequest other;
  other.set_model("no-such-model");
  other.mutable_adapter()->set_name("a");
  other.mutable_adapter()->set_dir(kAdapters + "/a");
  grpc::ClientContext context;
  v1::LoadAdapterResponse response;
  refused(inference().LoadAdapter(&context, other, &response), StatusCode::NOT_FOUND, "model");

  // A directory the group cannot read: the group's error, named; nothing loaded.
  grpc::Status broken = Load("broken", dir_ + "/no-such-adapter");
  EXPECT_FALSE(broken.ok());
  EXPECT_TRUE(absl::StrContains(broken.error_message(), absl::StrCat("group ", group_)))
      << Describe(broken);
  EXPECT_FALSE(Listed().contains("v1/broken"));
  EXPECT_EQ(Generate(inference(), PromptRequest("broken")).status.error_code(),
            StatusCode::NOT_FOUND);
}

TEST_F(AdapterServing, OperatorsCallsNeedTheJoinTokenWhereThereIsOne) {
  // Coordinators of their own, with no groups: what is checked comes before any group.
  std::ofstream(dir_ + "/join") << "join-token-of-this-test\n";
  absl::StatusOr<std::unique_ptr<CoordinatorProcess>> guarded =
      harness_->StartCoordinator({"--join-token-file", dir_ + "/join"});
  ASSERT_TRUE(guarded.ok()) << guarded.status();
  auto load = [](CoordinatorProcess& coordinator, const std::string& token) {
    v1::LoadAdapterRequest request;
    request.set_model(kModel);
    request.mutable_adapter()->set_name("a");
    request.mutable_adapter()->set_dir(kAdapters + "/a");
    grpc::ClientContext context;
    SetDeadline(context, absl::Seconds(10));
    if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
    v1::LoadAdapterResponse response;
    return coordinator.inference().LoadAdapter(&context, request, &response);
  };
  EXPECT_EQ(load(**guarded, "").error_code(), StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(load(**guarded, "guess").error_code(), StatusCode::PERMISSION_DENIED);
  // The token lets the call through to its checks: no group serves the model there.
  grpc::Status through = load(**guarded, "join-token-of-this-test");
  EXPECT_EQ(through.error_code(), StatusCode::NOT_FOUND) << Describe(through);
  // The command-line client shows it from --join-token-file.
  auto client_load = [&](std::vector<std::string> flags) {
    std::vector<std::string> args = {
        "client", "adapters", "load", "--target", (*guarded)->target(), "--model",
        kModel,   "--name",   "a",    "--dir",    kAdapters + "/a"};
    args.insert(args.end(), flags.begin(), flags.end());
    return harness_->RunTessera(args);
  };
  ServeHarness::Outcome without = client_load({});
  EXPECT_NE(without.exit_code, 0) << without.output;
  EXPECT_TRUE(absl::StrContains(without.output, "UNAUTHENTICATED")) << without.output;
  ServeHarness::Outcome with = client_load({"--join-token-file", dir_ + "/join"});
  EXPECT_NE(with.exit_code, 0) << with.output;
  EXPECT_TRUE(absl::StrContains(with.output, "NOT_FOUND: model: no worker group serves"))
      << with.output;

  // API keys without a join token: no one is an operator.
  ServeHarness::Outcome key =
      harness_->RunTessera({"api-key", "--tenant", "acme", "--file", dir_ + "/keys"});
  ASSERT_EQ(key.exit_code, 0) << key.output;
  absl::StatusOr<std::unique_ptr<CoordinatorProcess>> keyed =
      harness_->StartCoordinator({"--api-keys", dir_ + "/keys"});
  ASSERT_TRUE(keyed.ok()) << keyed.status();
  grpc::Status refused = load(**keyed, "");
  EXPECT_EQ(refused.error_code(), StatusCode::PERMISSION_DENIED) << Describe(refused);
  EXPECT_TRUE(absl::StrContains(refused.error_message(), "--join-token-file")) << Describe(refused);
  grpc::ClientContext context;
  v1::ListAdaptersResponse listed;
  EXPECT_EQ((*keyed)->inference().ListAdapters(&context, {}, &listed).error_code(),
            StatusCode::UNAUTHENTICATED);
  (*guarded)->process().Stop(absl::Seconds(5));
  (*keyed)->process().Stop(absl::Seconds(5));
}

TEST_F(AdapterServing, OpenAiModelBaseColonAdapter) {
  grpc::Status status = Load("a", kAdapters + "/a");
  ASSERT_TRUE(status.ok()) << Describe(status);
  Unary grpc_answer = Generate(inference(), PromptRequest("a"));
  ASSERT_TRUE(grpc_answer.status.ok()) << Describe(grpc_answer.status);

  httplib::Client client("127.0.0.1", coordinator_->http_port());
  client.set_read_timeout(60, 0);
  httplib::Result models = client.Get("/v1/models");
  ASSERT_TRUE(models);
  ASSERT_EQ(models->status, 200) << models->body;
  const Json listed = Json::parse(models->body);
  std::map<std::string, Json> by_id;
  for (const Json& model : listed["data"]) by_id[model["id"].get<std::string>()] = model;
  ASSERT_TRUE(by_id.contains(kModel)) << listed.dump();
  const std::string with_a = absl::StrCat(kModel, ":a");
  ASSERT_TRUE(by_id.contains(with_a)) << listed.dump();
  EXPECT_EQ(by_id[with_a]["parent"], kModel);
  EXPECT_TRUE(by_id.contains(absl::StrCat(kModel, ":b"))) << listed.dump();

  auto complete = [&](const std::string& model) {
    Json body = {{"model", model},
                 {"prompt", kPrompt},
                 {"max_tokens", kMaxTokens},
                 {"temperature", 0},
                 {"ignore_eos", true}};
    return client.Post("/v1/completions", body.dump(), "application/json");
  };
  httplib::Result answer = complete(with_a);
  ASSERT_TRUE(answer);
  ASSERT_EQ(answer->status, 200) << answer->body;
  const Json completion = Json::parse(answer->body);
  EXPECT_EQ(completion["model"], with_a);
  EXPECT_EQ(completion["choices"][0]["text"], grpc_answer.response.text());
  EXPECT_EQ(completion["usage"]["completion_tokens"], kMaxTokens);

  httplib::Result unknown = complete(absl::StrCat(kModel, ":nope"));
  ASSERT_TRUE(unknown);
  EXPECT_EQ(unknown->status, 404) << unknown->body;
  EXPECT_TRUE(absl::StrContains(unknown->body, "\\\"nope\\\" is not loaded")) << unknown->body;

  status = Unload("a");
  EXPECT_TRUE(status.ok()) << Describe(status);
}

// A coordinator of its own whose groups send their first heartbeat only after ten minutes:
// what it knows of a new group's adapters is what the registration said.
TEST_F(AdapterServing, AWorkersOwnAdaptersAreServedBeforeItsFirstHeartbeat) {
  absl::StatusOr<std::unique_ptr<CoordinatorProcess>> quiet =
      harness_->StartCoordinator({"--heartbeat-interval", "10m", "--engine-stall-timeout", "off"});
  ASSERT_TRUE(quiet.ok()) << quiet.status();
  WorkerJobOptions job;
  job.extra_flags = WorkerFlags({"--adapters", "b=" + kAdapters + "/b"});
  absl::StatusOr<ServingGroup> serving =
      StartServingGroup(*harness_, **quiet, job, kModel, kStartTimeout);
  ASSERT_TRUE(serving.ok()) << serving.status();
  std::unique_ptr<WorkerJob>& workers = serving->workers;

  Unary with_b = Generate((*quiet)->inference(), PromptRequest("b"));
  ASSERT_TRUE(with_b.status.ok()) << Describe(with_b.status) << Tail((*quiet)->process().Log(), 30);
  EXPECT_EQ(Tokens(with_b.response), reference_["b"]);
  EXPECT_EQ(with_b.response.placement().adapter(), "b");
  v1::ListAdaptersRequest request;
  v1::ListAdaptersResponse response;
  grpc::ClientContext context;
  SetDeadline(context, absl::Seconds(10));
  grpc::Status status = (*quiet)->inference().ListAdapters(&context, request, &response);
  ASSERT_TRUE(status.ok()) << Describe(status);
  ASSERT_EQ(response.adapters_size(), 1) << response.ShortDebugString();
  EXPECT_EQ(response.adapters(0).name(), "b");
  EXPECT_EQ(response.adapters(0).dir(), kAdapters + "/b");
  EXPECT_EQ(response.adapters(0).groups(), 1);
  // An adapter the worker does not have is still refused.
  EXPECT_EQ(Generate((*quiet)->inference(), PromptRequest("a")).status.error_code(),
            StatusCode::NOT_FOUND);
  workers->process().Terminate();
  workers->process().Stop(absl::Seconds(10));
  (*quiet)->process().Stop(absl::Seconds(5));
}

// `tessera client adapters load|list|unload` and `tessera client generate --adapter`.
TEST_F(AdapterServing, TheCommandLineClientLoadsListsUnloadsAndNamesAdapters) {
  const std::string target = coordinator_->target();
  auto client = [&](std::vector<std::string> args) {
    args.insert(args.begin(), "client");
    args.insert(args.end(), {"--target", target, "--timeout", "60s"});
    return harness_->RunTessera(args, absl::Seconds(90));
  };
  // The rows of `adapters list`, split at their spaces, by "version/name".
  auto table = [&]() {
    ServeHarness::Outcome listed = client({"adapters", "list", "--model", kModel});
    EXPECT_EQ(listed.exit_code, 0) << listed.output;
    std::map<std::string, std::vector<std::string>> rows;
    for (absl::string_view line : absl::StrSplit(listed.output, '\n', absl::SkipEmpty())) {
      std::vector<std::string> cells = absl::StrSplit(line, ' ', absl::SkipEmpty());
      if (cells.size() == 6 && cells[0] == kModel) rows[cells[1] + "/" + cells[2]] = cells;
    }
    return rows;
  };

  ServeHarness::Outcome loaded = client({"adapters", "load", "--model", kModel, "--version", "v1",
                                         "--name", "a", "--dir", kAdapters + "/a"});
  ASSERT_EQ(loaded.exit_code, 0) << loaded.output;
  EXPECT_TRUE(absl::StrContains(loaded.output, "on groups " + group_)) << loaded.output;

  std::map<std::string, std::vector<std::string>> rows = table();
  ASSERT_TRUE(rows.contains("v1/a")) << Names(Listed());
  EXPECT_EQ(rows["v1/a"],
            (std::vector<std::string>{kModel, "v1", "a", kAdapters + "/a", "1", "1"}));
  ASSERT_TRUE(rows.contains("v1/b"));  // the worker's own
  EXPECT_EQ(rows["v1/b"][3], kAdapters + "/b");

  // The client's text is that of a gRPC request naming a (which differs from the base's).
  v1::GenerateRequest request = Request(kModel, "Hello", kMaxTokens);
  request.set_adapter("a");
  Unary with_a = Generate(inference(), request);
  ASSERT_TRUE(with_a.status.ok()) << Describe(with_a.status);
  ASSERT_FALSE(with_a.response.text().empty());
  request.clear_adapter();
  Unary base = Generate(inference(), request);
  ASSERT_TRUE(base.status.ok()) << Describe(base.status);
  EXPECT_NE(with_a.response.text(), base.response.text());
  ServeHarness::Outcome generated =
      client({"generate", "--model", kModel, "--adapter", "a", "--prompt", "Hello", "--max-tokens",
              absl::StrCat(kMaxTokens), "--ignore-eos"});
  ASSERT_EQ(generated.exit_code, 0) << generated.output;
  // Streamed to stdout (flushed as it comes), then the summary on stderr.
  EXPECT_TRUE(absl::StartsWith(generated.output, with_a.response.text())) << generated.output;
  EXPECT_TRUE(absl::StrContains(generated.output, "(adapter a) on group " + group_))
      << generated.output;

  ServeHarness::Outcome unloaded =
      client({"adapters", "unload", "--model", kModel, "--version", "v1", "--name", "a"});
  ASSERT_EQ(unloaded.exit_code, 0) << unloaded.output;
  EXPECT_TRUE(absl::StrContains(unloaded.output, "from groups " + group_)) << unloaded.output;
  EXPECT_FALSE(table().contains("v1/a"));

  // Refusals: the coordinator's message, and a failing exit status.
  ServeHarness::Outcome again = client({"adapters", "unload", "--model", kModel, "--name", "a"});
  EXPECT_NE(again.exit_code, 0) << again.output;
  EXPECT_TRUE(absl::StrContains(again.output, "NOT_FOUND")) << again.output;
  ServeHarness::Outcome refused =
      client({"generate", "--model", kModel, "--adapter", "a", "--max-tokens", "2"});
  EXPECT_NE(refused.exit_code, 0) << refused.output;
  EXPECT_TRUE(absl::StrContains(refused.output, "\"a\" is not loaded")) << refused.output;
  ServeHarness::Outcome no_dir = client({"adapters", "load", "--model", kModel, "--name", "a"});
  EXPECT_NE(no_dir.exit_code, 0) << no_dir.output;
  EXPECT_TRUE(absl::StrContains(no_dir.output, "--dir: required")) << no_dir.output;
}

TEST_F(AdapterServing, AGroupRegisteringLaterLoadsTheAdaptersLoadedBefore) {
  grpc::Status status = Load("a", kAdapters + "/a");  // every version, those to come included
  ASSERT_TRUE(status.ok()) << Describe(status);
  WorkerJobOptions job;
  job.np = 2;
  job.tp = 2;
  job.version = "v2";
  job.extra_flags = WorkerFlags();
  absl::StatusOr<std::unique_ptr<WorkerJob>> late =
      harness_->StartWorkers(coordinator_->grpc_port(), job);
  ASSERT_TRUE(late.ok()) << late.status();
  absl::StatusOr<std::vector<std::string>> leaders = (*late)->WaitForLeaders(kStartTimeout);
  ASSERT_TRUE(leaders.ok()) << leaders.status() << Tail((*late)->process().Log(), 30);
  ASSERT_TRUE(
      WaitFor([&] { return coordinator_->GroupIdOf(leaders->at(0)).ok(); }, absl::Seconds(30)));
  const std::string late_group = *coordinator_->GroupIdOf(leaders->at(0));
  // Its heartbeats list a once it has loaded it.
  EXPECT_TRUE(WaitFor(
      [&] {
        std::map<std::string, v1::AdapterInfo> listed = Listed();
        return listed.contains("v2/a") && listed["v2/a"].groups() == 1;
      },
      absl::Seconds(60), absl::Milliseconds(200)))
      << Tail((*late)->process().Log(), 30);
  EXPECT_FALSE(Listed().contains("v2/b"));  // b came with the first job's command line

  Unary served = Generate(inference(), PromptRequest("a", "v2"));
  ASSERT_TRUE(served.status.ok()) << Describe(served.status) << Tail((*late)->process().Log(), 30);
  EXPECT_EQ(served.response.placement().group(), late_group);
  EXPECT_EQ(Tokens(served.response), reference_["a"]) << "at tp 2";
  // b is v1's alone: a request for it that names no version goes there.
  Unary b = Generate(inference(), PromptRequest("b"));
  ASSERT_TRUE(b.status.ok()) << Describe(b.status);
  EXPECT_EQ(b.response.placement().group(), group_);
  EXPECT_EQ(Generate(inference(), PromptRequest("b", "v2")).status.error_code(),
            StatusCode::NOT_FOUND);

  v1::UnloadAdapterResponse unloaded;
  status = Unload("a", &unloaded);
  EXPECT_TRUE(status.ok()) << Describe(status);
  EXPECT_EQ(unloaded.groups_size(), 2);
  (*late)->process().Terminate();
  (*late)->process().Stop(absl::Seconds(10));
}

}  // namespace
}  // namespace tessera::e2e
