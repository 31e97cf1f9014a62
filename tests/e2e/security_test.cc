// Who may call the coordinator and who may register with it, with real processes on
// loopback: a `tessera coordinator` with API keys (--api-keys) and a join token
// (--join-token-file), a worker group that shows the token, and callers that do not.
// TESSERA_BINARY and TESSERA_MPIRUN_COMMAND come from CMake.

#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "httplib.h"
#include "nlohmann/json.hpp"
#include "tessera/v1/worker.grpc.pb.h"
#include "tests/e2e/inference_calls.h"
#include "tests/e2e/serve_harness.h"

namespace tessera::e2e {
namespace {

using ::grpc::StatusCode;

// Key files are polled every second.
constexpr absl::Duration kKeyReload = absl::Seconds(5);

// The processes of one suite: a coordinator and one single-rank worker group.
struct Processes {
  std::unique_ptr<ServeHarness> harness;
  std::unique_ptr<CoordinatorProcess> coordinator;
  std::unique_ptr<WorkerJob> workers;
  std::string group;  // the group's id, once it registered
};

// Starts the coordinator with `coordinator_flags`, then the group with `worker_flags`, and
// waits until the group has registered (fatal test failures otherwise).
void StartProcesses(Processes& p, const std::string& dir,
                    const std::vector<std::string>& coordinator_flags,
                    const std::vector<std::string>& worker_flags) {
  p.harness = std::make_unique<ServeHarness>(
      TESSERA_BINARY,
      std::vector<std::string>(absl::StrSplit(TESSERA_MPIRUN_COMMAND, ' ', absl::SkipEmpty())),
      dir);
  absl::StatusOr<std::unique_ptr<CoordinatorProcess>> coordinator =
      p.harness->StartCoordinator(coordinator_flags);
  ASSERT_TRUE(coordinator.ok()) << coordinator.status();
  p.coordinator = *std::move(coordinator);
  WorkerJobOptions options;
  options.extra_flags = worker_flags;
  absl::StatusOr<std::unique_ptr<WorkerJob>> workers =
      p.harness->StartWorkers(p.coordinator->grpc_port(), options);
  ASSERT_TRUE(workers.ok()) << workers.status();
  p.workers = *std::move(workers);
  absl::StatusOr<std::vector<std::string>> leaders = p.workers->WaitForLeaders(absl::Seconds(120));
  ASSERT_TRUE(leaders.ok()) << leaders.status();
  ASSERT_TRUE(
      WaitFor([&] { return p.coordinator->GroupIdOf(leaders->at(0)).ok(); }, absl::Seconds(30)))
      << Tail(p.coordinator->process().Log(), 20) << Tail(p.workers->process().Log(), 20);
  p.group = *p.coordinator->GroupIdOf(leaders->at(0));
}

class Security : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char pattern[] = "/tmp/tessera-security-e2e-XXXXXX";
    dir_ = mkdtemp(pattern);
    keys_file_ = dir_ + "/keys";
    // The harness runs `tessera api-key`: made first, before the key file is needed.
    processes_.harness =
        std::make_unique<ServeHarness>(TESSERA_BINARY, std::vector<std::string>{}, dir_);
    harness_ = processes_.harness.get();
    acme_key_ = NewKey("acme");
    std::ofstream(dir_ + "/join") << "join-token-of-this-test\n";
    StartProcesses(processes_, dir_,
                   {"--api-keys", keys_file_, "--join-token-file", dir_ + "/join",
                    "--heartbeat-interval", "500ms", "--http-listen", "127.0.0.1:0"},
                   {"--join-token-file", dir_ + "/join"});
    if (::testing::Test::HasFatalFailure()) return;
    harness_ = processes_.harness.get();
    coordinator_ = processes_.coordinator.get();
    workers_ = processes_.workers.get();
    group_ = processes_.group;
    coordinator_->set_api_key(acme_key_);
    absl::Status listed =
        coordinator_->WaitForHealthyGroups(kModel, {{"v1", 1}}, absl::Seconds(30));
    ASSERT_TRUE(listed.ok()) << listed;
  }

  static void TearDownTestSuite() {
    processes_ = Processes();
    if (!::testing::UnitTest::GetInstance()->Failed()) std::filesystem::remove_all(dir_);
  }

  void SetUp() override { ASSERT_NE(coordinator_, nullptr) << "the processes did not start"; }

  void TearDown() override {
    if (HasFailure() && coordinator_ != nullptr) {
      std::fprintf(stderr, "--- coordinator:\n%s\n--- workers:\n%s\n",
                   Tail(coordinator_->process().Log(), 30).c_str(),
                   Tail(workers_->process().Log(), 20).c_str());
    }
  }

  // `tessera api-key --tenant TENANT --file KEYS`: the key it printed.
  static std::string NewKey(const std::string& tenant) {
    ServeHarness::Outcome made =
        harness_->RunTessera({"api-key", "--tenant", tenant, "--file", keys_file_});
    EXPECT_EQ(made.exit_code, 0) << made.output;
    for (absl::string_view line : absl::StrSplit(made.output, '\n')) {
      if (absl::StartsWith(line, "tsk-")) return std::string(line);
    }
    ADD_FAILURE() << "no key printed: " << made.output;
    return "";
  }

  static v1::Inference::Stub& inference() { return coordinator_->inference(); }

  // A unary call with `key` (none when empty).
  static Unary GenerateWithKey(const std::string& key, v1::GenerateRequest request) {
    grpc::ClientContext context;
    SetDeadline(context, absl::Seconds(60));
    if (!key.empty()) context.AddMetadata("authorization", "Bearer " + key);
    Unary out;
    out.status = inference().Generate(&context, request, &out.response);
    return out;
  }

  static constexpr char kModel[] = "tessera-tiny-llama-random-v2";
  static inline Processes processes_;
  static inline std::string dir_, keys_file_, acme_key_, group_;
  static inline ServeHarness* harness_ = nullptr;
  static inline CoordinatorProcess* coordinator_ = nullptr;
  static inline WorkerJob* workers_ = nullptr;
};

TEST_F(Security, CallsWithoutAValidKeyAreUnauthenticated) {
  const v1::GenerateRequest request = Request(kModel, "Who goes there?", 4);
  for (const std::string& key : {std::string(), std::string("tsk-not-a-key"), acme_key_ + "0"}) {
    SCOPED_TRACE(key.empty() ? "no key" : key);
    Unary unary = GenerateWithKey(key, request);
    EXPECT_EQ(unary.status.error_code(), StatusCode::UNAUTHENTICATED) << Describe(unary.status);

    grpc::ClientContext stream_context, batch_context, list_context, tokenize_context;
    for (grpc::ClientContext* context :
         {&stream_context, &batch_context, &list_context, &tokenize_context}) {
      SetDeadline(*context, absl::Seconds(30));
      if (!key.empty()) context->AddMetadata("authorization", "Bearer " + key);
    }
    auto reader = inference().GenerateStream(&stream_context, request);
    v1::GenerateStreamResponse message;
    EXPECT_FALSE(reader->Read(&message));
    EXPECT_EQ(reader->Finish().error_code(), StatusCode::UNAUTHENTICATED);
    v1::GenerateBatchRequest batch;
    *batch.add_requests() = request;
    v1::GenerateBatchResponse batch_response;
    EXPECT_EQ(inference().GenerateBatch(&batch_context, batch, &batch_response).error_code(),
              StatusCode::UNAUTHENTICATED);
    v1::ListModelsResponse models;
    EXPECT_EQ(inference().ListModels(&list_context, {}, &models).error_code(),
              StatusCode::UNAUTHENTICATED);
    v1::TokenizeRequest tokenize;
    tokenize.set_model(kModel);
    tokenize.set_text("hello");
    v1::TokenizeResponse tokens;
    EXPECT_EQ(inference().Tokenize(&tokenize_context, tokenize, &tokens).error_code(),
              StatusCode::UNAUTHENTICATED);
  }
  // The key itself works.
  Unary ok = GenerateWithKey(acme_key_, request);
  ASSERT_TRUE(ok.status.ok()) << Describe(ok.status);
  EXPECT_EQ(ok.response.usage().completion_tokens(), 4);
  // And the command-line client sends it.
  std::ofstream(dir_ + "/acme.key") << acme_key_ << "\n";
  ServeHarness::Outcome client =
      harness_->RunTessera({"client", "generate", "--target", coordinator_->target(),
                            "--max-tokens", "3", "--api-key-file", dir_ + "/acme.key"});
  EXPECT_EQ(client.exit_code, 0) << client.output;
}

// The HTTP API takes the same keys: "Authorization: Bearer KEY", 401 in OpenAI's shape without.
TEST_F(Security, TheHttpApiNeedsAKeyToo) {
  ASSERT_GT(coordinator_->http_port(), 0);
  httplib::Client client("127.0.0.1", coordinator_->http_port());
  client.set_read_timeout(60, 0);
  const std::string body =
      nlohmann::json(
          {{"model", kModel}, {"prompt", "with a key"}, {"max_tokens", 3}, {"temperature", 0}})
          .dump();
  for (const std::string& header : {std::string(), std::string("Bearer tsk-guess")}) {
    httplib::Headers headers;
    if (!header.empty()) headers.emplace("Authorization", header);
    httplib::Result refused = client.Post("/v1/completions", headers, body, "application/json");
    ASSERT_TRUE(refused);
    EXPECT_EQ(refused->status, 401) << refused->body;
    nlohmann::json error = nlohmann::json::parse(refused->body)["error"];
    EXPECT_EQ(error["type"], "authentication_error");
    EXPECT_TRUE(absl::StrContains(error["message"].get<std::string>(), "API key")) << error;
    httplib::Result models = client.Get("/v1/models", headers);
    ASSERT_TRUE(models);
    EXPECT_EQ(models->status, 401);
  }
  httplib::Result served = client.Post(
      "/v1/completions", {{"Authorization", "Bearer " + acme_key_}}, body, "application/json");
  ASSERT_TRUE(served);
  EXPECT_EQ(served->status, 200) << served->body;
  EXPECT_EQ(nlohmann::json::parse(served->body)["usage"]["completion_tokens"], 3);
}

TEST_F(Security, TheTenantComesFromTheKey) {
  // Naming another tenant in the request is refused; naming none runs as the key's.
  v1::GenerateRequest spoofed = Request(kModel, "Charge it to someone else", 4);
  spoofed.set_tenant("bigcorp");
  Unary refused = GenerateWithKey(acme_key_, spoofed);
  EXPECT_EQ(refused.status.error_code(), StatusCode::PERMISSION_DENIED) << Describe(refused.status);
  EXPECT_TRUE(absl::StrContains(refused.status.error_message(), "acme"));

  absl::StatusOr<MetricsSnapshot> before = coordinator_->Metrics();
  ASSERT_TRUE(before.ok()) << before.status();
  Unary charged = GenerateWithKey(acme_key_, Request(kModel, "Charge it to me", 5));
  ASSERT_TRUE(charged.status.ok()) << Describe(charged.status);
  absl::StatusOr<MetricsSnapshot> after = coordinator_->Metrics();
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(
      after->Sum("tessera_tenant_tokens_total", {{"tenant", "acme"}, {"kind", "completion"}}) -
          before->Sum("tessera_tenant_tokens_total", {{"tenant", "acme"}, {"kind", "completion"}}),
      5);
  EXPECT_FALSE(after->Has("tessera_tenant_tokens_total", {{"tenant", "bigcorp"}}));
}

TEST_F(Security, KeysAreAddedAndRevokedWithoutARestart) {
  const std::string beta_key = NewKey("beta");
  EXPECT_TRUE(
      WaitFor([&] { return GenerateWithKey(beta_key, Request(kModel, "new key", 2)).status.ok(); },
              kKeyReload, absl::Milliseconds(200)))
      << "a key added to the file is not accepted";
  // Revoke beta: the file without its line.
  std::ifstream in(keys_file_);
  std::string kept, line;
  while (std::getline(in, line)) {
    if (!absl::StartsWith(line, "beta ")) kept += line + "\n";
  }
  in.close();
  std::ofstream(keys_file_ + ".new") << kept;
  std::filesystem::rename(keys_file_ + ".new", keys_file_);
  EXPECT_TRUE(WaitFor(
      [&] {
        return GenerateWithKey(beta_key, Request(kModel, "revoked", 2)).status.error_code() ==
               StatusCode::UNAUTHENTICATED;
      },
      kKeyReload, absl::Milliseconds(200)))
      << "a revoked key is still accepted";
  EXPECT_TRUE(GenerateWithKey(acme_key_, Request(kModel, "still here", 2)).status.ok());
}

TEST_F(Security, RogueRegistrationsAndForgedHeartbeatsAreRefused) {
  auto registry = v1::WorkerRegistry::NewStub(
      grpc::CreateChannel(coordinator_->target(), grpc::InsecureChannelCredentials()));
  auto call = [](grpc::ClientContext& context, const std::string& token = "") {
    SetDeadline(context, absl::Seconds(10));
    if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
  };
  // A group that would take every request: a huge KV, no token (or a wrong one).
  v1::RegisterRequest rogue;
  rogue.set_model(kModel);
  rogue.set_version("v1");
  rogue.set_endpoint("127.0.0.1:1");
  rogue.set_name("rogue");
  rogue.mutable_kv()->set_block_size(16);
  rogue.mutable_kv()->set_blocks(1 << 30);
  rogue.set_tokenizer_json("{}");
  for (const std::string& token : {std::string(), std::string("guess")}) {
    grpc::ClientContext context;
    call(context, token);
    v1::RegisterResponse response;
    EXPECT_EQ(registry->Register(&context, rogue, &response).error_code(),
              StatusCode::UNAUTHENTICATED);
  }
  // The real group's id is known (ids are sequential); its secret is not.
  v1::HeartbeatRequest heartbeat;
  heartbeat.set_group_id(group_);
  heartbeat.set_group_secret("0123456789abcdef0123456789abcdef");
  heartbeat.mutable_load()->set_kv_blocks_free(0);
  heartbeat.mutable_load()->set_kv_blocks_total(1);
  grpc::ClientContext heartbeat_context;
  call(heartbeat_context);
  v1::HeartbeatResponse heartbeat_response;
  EXPECT_EQ(registry->Heartbeat(&heartbeat_context, heartbeat, &heartbeat_response).error_code(),
            StatusCode::PERMISSION_DENIED);
  v1::DeregisterRequest deregister;
  deregister.set_group_id(group_);
  grpc::ClientContext deregister_context;
  call(deregister_context);
  v1::DeregisterResponse deregister_response;
  EXPECT_EQ(
      registry->Deregister(&deregister_context, deregister, &deregister_response).error_code(),
      StatusCode::PERMISSION_DENIED);

  // The real group serves on, alone.
  absl::SleepFor(absl::Seconds(2));  // past a few heartbeats
  Unary served = GenerateWithKey(acme_key_, Request(kModel, "still served", 3));
  ASSERT_TRUE(served.status.ok()) << Describe(served.status);
  EXPECT_EQ(served.response.placement().group(), group_);
  EXPECT_TRUE(coordinator_->WaitForHealthyGroups(kModel, {{"v1", 1}}, absl::Seconds(5)).ok());
  // Each refusal is in the coordinator's log.
  const std::string log = coordinator_->process().Log();
  const std::vector<nlohmann::json> refused = Events(log, "registry_call_refused");
  int registers = 0, heartbeats = 0, deregisters = 0;
  for (const nlohmann::json& event : refused) {
    const std::string what = event.value("call", "");
    registers += what == "Register";
    heartbeats += what == "Heartbeat";
    deregisters += what == "Deregister";
  }
  EXPECT_EQ(registers, 2);
  EXPECT_EQ(heartbeats, 1);
  EXPECT_EQ(deregisters, 1);
}

// `tessera serve` with a join token hands it to the workers it starts (through the
// environment), so they register, here on a listener of their own (--worker-listen); its
// client API takes the keys.
TEST_F(Security, ServeGivesItsWorkersTheJoinToken) {
  absl::StatusOr<std::unique_ptr<ChildProcess>> serve =
      ChildProcess::Start({TESSERA_BINARY,
                           "serve",
                           "--np",
                           "1",
                           "--tp",
                           "1",
                           "--listen",
                           "127.0.0.1:0",
                           "--metrics-listen",
                           "off",
                           "--http-listen",
                           "off",
                           "--kv-cache-memory",
                           "64M",
                           "--join-token-file",
                           dir_ + "/join",
                           "--api-keys",
                           keys_file_,
                           "--worker-listen",
                           "127.0.0.1:0"},
                          harness_->NewLogPath("serve"), harness_->ChildEnvironment());
  ASSERT_TRUE(serve.ok()) << serve.status();
  const std::regex ready("tessera serve: ready: gRPC on 127\\.0\\.0\\.1:(\\d+)");
  std::smatch match;
  std::string log;
  ASSERT_TRUE(WaitFor(
      [&] {
        log = (*serve)->Log();
        return std::regex_search(log, match, ready) || !(*serve)->Running();
      },
      absl::Seconds(120)))
      << Tail((*serve)->Log(), 30);
  ASSERT_TRUE(std::regex_search(log, match, ready)) << Tail(log, 30);
  auto stub = v1::Inference::NewStub(grpc::CreateChannel(absl::StrCat("127.0.0.1:", match[1].str()),
                                                         grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  SetDeadline(context, absl::Seconds(60));
  context.AddMetadata("authorization", "Bearer " + acme_key_);
  v1::GenerateResponse response;
  grpc::Status status = stub->Generate(&context, Request(kModel, "served", 3), &response);
  EXPECT_TRUE(status.ok()) << Describe(status);
  EXPECT_FALSE(absl::StrContains((*serve)->Log(), "registry_call_refused"));
  (*serve)->Stop();
}

// TLS on every link, with certificates made here by openssl: a coordinator and a worker group
// that require client certificates (mutual TLS) from the test's CA, so registration, requests
// to the group, and the client's calls all go over TLS.
class Tls : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // A client whose handshake the server refuses may still be writing when the server
    // closes: the refusal must come back as an error, not end the test with SIGPIPE.
    std::signal(SIGPIPE, SIG_IGN);
    char pattern[] = "/tmp/tessera-tls-e2e-XXXXXX";
    dir_ = mkdtemp(pattern);
    const std::string script = absl::StrCat(
        "set -e; cd ", dir_, "; key='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes'\n",
        // Two CAs: the cluster's, and a rogue one.
        "for ca in ca rogue; do openssl req -x509 $key -keyout $ca.key -out $ca.pem -days 2 "
        "-subj /CN=$ca 2>/dev/null; done\n",
        // A node certificate (servers and their clients), one client's, one from the rogue CA.
        "sign() { openssl req $key -keyout $1.key -out $1.csr -subj /CN=$1 2>/dev/null; "
        "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\nextendedKeyUsage=serverAuth,"
        "clientAuth\\n' > $1.ext; openssl x509 -req -in $1.csr -CA $2.pem -CAkey $2.key "
        "-CAcreateserial -out $1.pem -days 2 -extfile $1.ext 2>/dev/null; }\n",
        "sign node ca; sign client ca; sign intruder rogue\n");
    ASSERT_EQ(std::system(script.c_str()), 0) << "openssl failed";
    const std::vector<std::string> tls = {"--tls-cert",       dir_ + "/node.pem", "--tls-key",
                                          dir_ + "/node.key", "--tls-ca",         dir_ + "/ca.pem",
                                          "--tls-client-ca",  dir_ + "/ca.pem"};
    // The group registers over mutual TLS, since the coordinator takes nothing else.
    std::vector<std::string> coordinator_flags = tls;
    coordinator_flags.insert(coordinator_flags.end(), {"--http-listen", "127.0.0.1:0"});
    StartProcesses(processes_, dir_, coordinator_flags, tls);
    if (::testing::Test::HasFatalFailure()) return;
    harness_ = processes_.harness.get();
    coordinator_ = processes_.coordinator.get();
  }

  static void TearDownTestSuite() {
    processes_ = Processes();
    if (!::testing::UnitTest::GetInstance()->Failed()) std::filesystem::remove_all(dir_);
  }

  void SetUp() override { ASSERT_NE(coordinator_, nullptr) << "the processes did not start"; }

  // `tessera client generate` against the coordinator with `flags`.
  static ServeHarness::Outcome Client(const std::vector<std::string>& flags) {
    std::vector<std::string> args = {
        "client",       "generate", "--target",  coordinator_->target(),
        "--max-tokens", "4",        "--timeout", "20s"};
    args.insert(args.end(), flags.begin(), flags.end());
    return harness_->RunTessera(args, absl::Seconds(60));
  }

  static inline Processes processes_;
  static inline std::string dir_;
  static inline ServeHarness* harness_ = nullptr;
  static inline CoordinatorProcess* coordinator_ = nullptr;
};

// The HTTP API serves the same certificate and asks for the same client certificates.
TEST_F(Tls, TheHttpApiIsHttpsWithClientCertificates) {
  ASSERT_GT(coordinator_->http_port(), 0);
  httplib::SSLClient client("127.0.0.1", coordinator_->http_port(), dir_ + "/client.pem",
                            dir_ + "/client.key");
  client.set_ca_cert_path((dir_ + "/ca.pem").c_str());
  client.enable_server_certificate_verification(true);
  httplib::Result models = client.Get("/v1/models");
  ASSERT_TRUE(models) << httplib::to_string(models.error());
  EXPECT_EQ(models->status, 200) << models->body;
  httplib::SSLClient anonymous("127.0.0.1", coordinator_->http_port());
  anonymous.set_ca_cert_path((dir_ + "/ca.pem").c_str());
  EXPECT_FALSE(anonymous.Get("/v1/models")) << "served without a client certificate";
  httplib::Client plaintext("127.0.0.1", coordinator_->http_port());
  httplib::Result refused = plaintext.Get("/v1/models");
  EXPECT_TRUE(!refused || refused->status != 200) << "served over plaintext";
}

TEST_F(Tls, AClientWithACertificateFromTheClustersCaIsServed) {
  // Through the coordinator to the group and back: every hop over TLS.
  ServeHarness::Outcome served = Client({"--tls-ca", dir_ + "/ca.pem", "--tls-cert",
                                         dir_ + "/client.pem", "--tls-key", dir_ + "/client.key"});
  EXPECT_EQ(served.exit_code, 0) << served.output;
  EXPECT_TRUE(absl::StrContains(served.output, "4 generated")) << served.output;
}

TEST_F(Tls, PlaintextMissingOrForeignCertificatesAreRefused) {
  struct Case {
    const char* what;
    std::vector<std::string> flags;
  };
  for (const Case& c :
       std::vector<Case>{{"plaintext", {}},
                         {"no client certificate", {"--tls-ca", dir_ + "/ca.pem"}},
                         {"a client certificate from another CA",
                          {"--tls-ca", dir_ + "/ca.pem", "--tls-cert", dir_ + "/intruder.pem",
                           "--tls-key", dir_ + "/intruder.key"}},
                         {"a client that does not trust the server",
                          {"--tls-ca", dir_ + "/rogue.pem", "--tls-cert", dir_ + "/client.pem",
                           "--tls-key", dir_ + "/client.key"}}}) {
    ServeHarness::Outcome refused = Client(c.flags);
    EXPECT_NE(refused.exit_code, 0) << c.what << "\n" << refused.output;
    EXPECT_TRUE(absl::StrContains(refused.output, "UNAVAILABLE")) << c.what << "\n"
                                                                  << refused.output;
  }
  // A certificate without its key is a usage error, named.
  ServeHarness::Outcome half =
      Client({"--tls-ca", dir_ + "/ca.pem", "--tls-cert", dir_ + "/client.pem"});
  EXPECT_NE(half.exit_code, 0);
  EXPECT_TRUE(absl::StrContains(half.output, "--tls-cert and --tls-key")) << half.output;
}

// Limits: what one registration, request or batch may carry, with a coordinator that takes
// no keys, and a group whose tokenizer.json is 10 MB (as Llama-3's and Qwen2's nearly are).
class Limits : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char pattern[] = "/tmp/tessera-limits-e2e-XXXXXX";
    dir_ = mkdtemp(pattern);
    // The built-in model, copied with its tokenizer.json padded to 10 MB (whitespace between
    // JSON tokens: the same tokenizer).
    ServeHarness maker(TESSERA_BINARY, {}, dir_);
    ServeHarness::Outcome made =
        maker.RunTessera({"generate", "--max-tokens", "1", "--prompt", "hi"}, absl::Seconds(120));
    ASSERT_EQ(made.exit_code, 0) << made.output;
    model_dir_ = dir_ + "/big-tokenizer";
    std::filesystem::copy(dir_ + "/cache/" + kModel, model_dir_,
                          std::filesystem::copy_options::recursive);
    std::ifstream in(model_dir_ + "/tokenizer.json");
    std::string json((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    in.close();
    const size_t brace = json.rfind('}');
    ASSERT_NE(brace, std::string::npos);
    json.insert(brace, std::string(10 << 20, ' '));
    std::ofstream(model_dir_ + "/tokenizer.json") << json;
    StartProcesses(processes_, dir_, {"--max-batch-threads", "16"},
                   {"--model", model_dir_, "--model-name", kModel});
    if (::testing::Test::HasFatalFailure()) return;
    coordinator_ = processes_.coordinator.get();
  }

  static void TearDownTestSuite() {
    processes_ = Processes();
    if (!::testing::UnitTest::GetInstance()->Failed()) std::filesystem::remove_all(dir_);
  }

  void SetUp() override { ASSERT_NE(coordinator_, nullptr) << "the processes did not start"; }

  static v1::Inference::Stub& inference() { return coordinator_->inference(); }

  static constexpr char kModel[] = "tessera-tiny-llama-random-v2";
  static inline Processes processes_;
  static inline std::string dir_, model_dir_;
  static inline CoordinatorProcess* coordinator_ = nullptr;
};

TEST_F(Limits, AGroupWithATenMegabyteTokenizerRegistersAndServes) {
  Unary unary = Generate(inference(), Request(kModel, "big tokenizer", 4));
  ASSERT_TRUE(unary.status.ok()) << Describe(unary.status);
  EXPECT_EQ(unary.response.usage().completion_tokens(), 4);
}

TEST_F(Limits, StopListsNamesAndOversizedRequestsAreRefused) {
  struct Case {
    const char* what;
    std::function<void(v1::GenerateRequest&)> change;
    StatusCode code;
    const char* message;
  };
  for (const Case& c : std::vector<Case>{
           {"17 stop strings",
            [](v1::GenerateRequest& r) {
              for (int i = 0; i < 17; ++i) r.mutable_sampling()->add_stop(absl::StrCat("s", i));
            },
            StatusCode::INVALID_ARGUMENT, "sampling.stop: 17 strings; at most 16"},
           {"a 3 MB stop list",
            [](v1::GenerateRequest& r) {
              for (int i = 0; i < 12; ++i) {
                r.mutable_sampling()->add_stop(std::string(256 << 10, 'a' + i));
              }
            },
            StatusCode::INVALID_ARGUMENT, "sampling.stop[0]: 262144 bytes; at most 256"},
           {"a long stop string",
            [](v1::GenerateRequest& r) { r.mutable_sampling()->add_stop(std::string(300, 'x')); },
            StatusCode::INVALID_ARGUMENT, "sampling.stop[0]: 300 bytes; at most 256"},
           {"a long tenant", [](v1::GenerateRequest& r) { r.set_tenant(std::string(200, 't')); },
            StatusCode::INVALID_ARGUMENT, "tenant: 200 bytes; at most 128"},
           {"a 5 MB prompt",
            [](v1::GenerateRequest& r) { r.set_prompt(std::string(5 << 20, 'p')); },
            StatusCode::RESOURCE_EXHAUSTED, "(--max-message-bytes)"}}) {
    v1::GenerateRequest request = Request(kModel, "limits", 2);
    c.change(request);
    Unary refused = Generate(inference(), request);
    EXPECT_EQ(refused.status.error_code(), c.code) << c.what << ": " << Describe(refused.status);
    EXPECT_TRUE(absl::StrContains(refused.status.error_message(), c.message))
        << c.what << ": " << Describe(refused.status);
  }
  // The group serves on.
  EXPECT_TRUE(Generate(inference(), Request(kModel, "after", 2)).status.ok());
}

// The coordinator parses each distinct tokenizer.json once, shares it among the groups that
// sent it, and lets it go when the last of them leaves: registrations that come and go do
// not grow its memory.
TEST_F(Limits, TokenizersOfGroupsThatLeftAreReleased) {
  auto registry = v1::WorkerRegistry::NewStub(
      grpc::CreateChannel(coordinator_->target(), grpc::InsecureChannelCredentials()));
  std::ifstream in(dir_ + "/cache/" + kModel + "/tokenizer.json");
  const std::string tokenizer((std::istreambuf_iterator<char>(in)),
                              std::istreambuf_iterator<char>());
  ASSERT_FALSE(tokenizer.empty());
  auto held = [&] {
    absl::StatusOr<MetricsSnapshot> metrics = coordinator_->Metrics();
    EXPECT_TRUE(metrics.ok()) << metrics.status();
    return metrics.ok() ? static_cast<int>(metrics->Sum("tessera_tokenizers")) : -1;
  };
  const int before = held();
  EXPECT_EQ(before, 1);  // the real group's
  struct Registered {
    std::string id, secret;
  };
  std::vector<Registered> groups;
  // Six versions, each with a tokenizer.json of its own (the same tokenizer, spaced
  // differently), and a seventh group sending the sixth's file again.
  for (int i = 0; i < 7; ++i) {
    v1::RegisterRequest request;
    request.set_model("short-lived");
    request.set_version(absl::StrCat("v", std::min(i, 5)));
    request.set_endpoint(absl::StrCat("127.0.0.1:", 1 + i));
    request.set_name(absl::StrCat("short-lived-", i));
    request.mutable_kv()->set_block_size(16);
    request.mutable_kv()->set_blocks(64);
    request.set_tokenizer_json(tokenizer + std::string(std::min(i, 5) + 1, ' '));
    grpc::ClientContext context;
    SetDeadline(context, absl::Seconds(30));
    v1::RegisterResponse response;
    grpc::Status registered = registry->Register(&context, request, &response);
    ASSERT_TRUE(registered.ok()) << Describe(registered);
    groups.push_back({response.group_id(), response.group_secret()});
  }
  EXPECT_EQ(held(), before + 6);
  for (const Registered& group : groups) {
    v1::DeregisterRequest request;
    request.set_group_id(group.id);
    request.set_group_secret(group.secret);
    grpc::ClientContext context;
    SetDeadline(context, absl::Seconds(10));
    v1::DeregisterResponse response;
    grpc::Status left = registry->Deregister(&context, request, &response);
    ASSERT_TRUE(left.ok()) << Describe(left);
  }
  EXPECT_EQ(held(), before);
  // The real group's tokenizer stays: it serves on.
  Unary served = Generate(inference(), Request(kModel, "after the others left", 2));
  ASSERT_TRUE(served.status.ok()) << Describe(served.status);
}

// Threads of process `pid` (its /proc status).
int ThreadsOf(pid_t pid) {
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  for (std::string line; std::getline(status, line);) {
    if (absl::StartsWith(line, "Threads:")) return std::atoi(line.c_str() + 8);
  }
  return -1;
}

TEST_F(Limits, BatchesAreBoundedInSizeAndInThreads) {
  v1::GenerateBatchRequest too_many;
  for (int i = 0; i < 1025; ++i) *too_many.add_requests() = Request(kModel, "x", 1);
  grpc::ClientContext context;
  SetDeadline(context, absl::Seconds(30));
  v1::GenerateBatchResponse response;
  grpc::Status refused = inference().GenerateBatch(&context, too_many, &response);
  EXPECT_EQ(refused.error_code(), StatusCode::INVALID_ARGUMENT) << Describe(refused);
  EXPECT_TRUE(absl::StrContains(refused.error_message(), "1025 in one batch; at most 1024"));

  // Eight batches at once, sharing 16 helper threads (--max-batch-threads): all answered,
  // and the coordinator's threads stay near where they were (without the bound, each call
  // would start 127).
  const pid_t pid = coordinator_->process().pid();
  const int before = ThreadsOf(pid);
  std::atomic<bool> done{false};
  std::atomic<int> most{before};
  std::thread watcher([&] {
    while (!done) {
      most = std::max(most.load(), ThreadsOf(pid));
      absl::SleepFor(absl::Milliseconds(5));
    }
  });
  std::vector<std::thread> callers;
  std::atomic<int> answered{0};
  for (int c = 0; c < 8; ++c) {
    callers.emplace_back([&, c] {
      v1::GenerateBatchRequest batch;
      for (int i = 0; i < 200; ++i) {
        *batch.add_requests() = Request(kModel, absl::StrCat("batch ", c, " request ", i), 2);
      }
      grpc::ClientContext call;
      SetDeadline(call, absl::Seconds(120));
      v1::GenerateBatchResponse answers;
      if (!inference().GenerateBatch(&call, batch, &answers).ok()) return;
      for (const v1::BatchResult& result : answers.results()) answered += result.error_code() == 0;
    });
  }
  for (std::thread& caller : callers) caller.join();
  done = true;
  watcher.join();
  EXPECT_EQ(answered.load(), 8 * 200);
  std::fprintf(stderr, "[ info     ] coordinator threads: %d before, at most %d during\n", before,
               most.load());
  EXPECT_LE(most.load(), before + 16 + 48);  // the helpers, and gRPC's threads for 8 calls
}

}  // namespace
}  // namespace tessera::e2e
