// Multi-node for real on one machine: a cluster of network namespaces (deploy/local-cluster.sh)
// with its own host names and addresses on a bridge. mpirun, run on node 0, starts its remote
// daemons on the other nodes through the script's `rsh` agent, and Open MPI's TCP transport
// carries the ranks' traffic over the bridge; the coordinator listens on node 0 and workers
// reach it by name. Links are faulted with the script's `link` command (loss, down, delay).
//
// Nodes: 0 runs mpirun, the coordinator and the `tessera client`; 1 and 2 run the ranks. This
// test process stays outside the cluster and calls the coordinator over the bridge. Skipped,
// with the reason, when this machine cannot create namespaces (not root, no iproute2).
// TESSERA_BINARY, TESSERA_CLUSTER_SCRIPT and TESSERA_LAYOUT_TEST come from CMake.

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "nlohmann/json.hpp"
#include "tests/e2e/inference_calls.h"
#include "tests/e2e/serve_harness.h"
#include "tests/mpi/process_runner.h"

namespace tessera::e2e {
namespace {

namespace fs = std::filesystem;
using ::tessera::testing::ProcessOutcome;
using ::tessera::testing::RunCommand;

constexpr int kNodes = 3;
constexpr int kCoordinatorPort = 50051;  // each node has its own ports
constexpr absl::Duration kStartTimeout = absl::Seconds(120);

// 'text' for a POSIX shell.
std::string Quote(const std::string& text) {
  return absl::StrCat("'", absl::StrReplaceAll(text, {{"'", "'\\''"}}), "'");
}

// The cluster the whole run shares: made once, removed at the end (and by the script's next
// `up` when this process is killed first).
class Cluster {
 public:
  static Cluster& Get() {
    static Cluster* cluster = new Cluster();
    return *cluster;
  }

  // Empty when the cluster is up; else why it could not be made.
  const std::string& unavailable() const { return unavailable_; }
  const std::string& name() const { return name_; }
  const std::string& dir() const { return dir_; }
  std::string Host(int node) const { return absl::StrCat(name_, "-n", node); }
  const std::string& Address(int node) const { return addresses_.at(node); }

  // The shell command that runs `command` (a shell command line) on `node`.
  std::string On(int node, const std::string& command) const {
    return absl::StrCat(TESSERA_CLUSTER_SCRIPT, " exec ", name_, " ", node, " sh -c ",
                        Quote(command));
  }
  // Runs `command` on `node`, killed after `timeout`; stdout and stderr together.
  ProcessOutcome Run(int node, const std::string& command,
                     absl::Duration timeout = absl::Seconds(240)) const {
    return RunCommand(absl::StrCat("timeout -s KILL ", absl::ToInt64Seconds(timeout), " ",
                                   On(node, command), " 2>&1"));
  }
  // Starts `command` on `node` in the background, its output in dir/<log>.log.
  std::unique_ptr<ChildProcess> Start(int node, const std::string& command,
                                      const std::string& log) const {
    // Each step execs the next, so that the child is `command` itself (its signals, its exit
    // status).
    absl::StatusOr<std::unique_ptr<ChildProcess>> child =
        ChildProcess::Start({TESSERA_CLUSTER_SCRIPT, "exec", name_, absl::StrCat(node), "sh", "-c",
                             absl::StrCat("exec ", command)},
                            absl::StrCat(dir_, "/", log, ".log"));
    EXPECT_TRUE(child.ok()) << child.status();
    return child.ok() ? std::move(*child) : nullptr;
  }
  // mpirun on node 0 over `slots` ranks on each of `nodes`: its words up to the program.
  std::string Mpirun(const std::vector<int>& nodes, int slots) const {
    const std::string hostfile =
        absl::StrCat(dir_, "/hosts-", absl::StrJoin(nodes, "-"), "-x", slots);
    std::ofstream file(hostfile);
    for (int node : nodes) file << Host(node) << " slots=" << slots << "\n";
    return absl::StrCat(
        "env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun --mca plm_rsh_agent ",
        Quote(absl::StrCat(TESSERA_CLUSTER_SCRIPT, " rsh")), " --hostfile ", hostfile,
        " --oversubscribe --bind-to none --mca mpi_yield_when_idle 1 -np ", nodes.size() * slots);
  }
  // `tessera` with the run's model cache, for a command line on any node.
  std::string Tessera() const {
    return absl::StrCat("env TESSERA_CACHE_DIR=", dir_, "/cache ", TESSERA_BINARY);
  }
  // Faults or restores `node`'s link: "down", "up", "loss 5", "delay 1", "clear".
  ProcessOutcome Link(int node, const std::string& change) const {
    return RunCommand(
        absl::StrCat(TESSERA_CLUSTER_SCRIPT, " link ", name_, " ", node, " ", change, " 2>&1"));
  }

  void Down() {
    if (!unavailable_.empty()) return;
    RunCommand(absl::StrCat(TESSERA_CLUSTER_SCRIPT, " down ", name_));
    if (::testing::UnitTest::GetInstance()->Failed()) {
      std::fprintf(stderr, "cluster_test: logs kept in %s\n", dir_.c_str());
    } else {
      fs::remove_all(dir_);
    }
  }

 private:
  Cluster() {
    name_ = absl::StrCat("t", getpid() % 10'000'000);
    ProcessOutcome check = RunCommand(absl::StrCat(TESSERA_CLUSTER_SCRIPT, " check 2>&1"));
    if (check.exit_code != 0) {
      unavailable_ = absl::StrCat("this machine cannot build a namespace cluster: ",
                                  absl::StripAsciiWhitespace(check.output));
      return;
    }
    // Where the kernel has no netem, the script delays packets with link_delay.
    setenv("TESSERA_LINK_DELAY", TESSERA_LINK_DELAY, /*overwrite=*/0);
    char pattern[] = "/tmp/tessera-cluster-test-XXXXXX";
    dir_ = mkdtemp(pattern);
    ProcessOutcome up =
        RunCommand(absl::StrCat("TESSERA_CLUSTER_OWNER=", getpid(), " ", TESSERA_CLUSTER_SCRIPT,
                                " up ", name_, " ", kNodes, " 2>&1"));
    if (up.exit_code != 0) {
      unavailable_ = absl::StrCat("local-cluster.sh up failed: ", up.output);
      return;
    }
    for (absl::string_view line : absl::StrSplit(up.output, '\n', absl::SkipEmpty())) {
      std::vector<std::string> words = absl::StrSplit(line, ' ');
      if (words.size() == 2) addresses_.push_back(words[1]);
    }
    if (addresses_.size() != kNodes) unavailable_ = absl::StrCat("unexpected: ", up.output);
  }

  std::string name_, dir_, unavailable_;
  std::vector<std::string> addresses_;
};

class ClusterEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    Cluster& cluster = Cluster::Get();
    if (!cluster.unavailable().empty()) {
      std::fprintf(stderr, "cluster_test: SKIPPED: %s\n", cluster.unavailable().c_str());
      return;
    }
    // The built-in model, made once before ranks on several nodes look for it.
    ProcessOutcome made =
        cluster.Run(0, absl::StrCat(cluster.Tessera(), " generate --max-tokens 1 --prompt hi"));
    ASSERT_EQ(made.exit_code, 0) << made.output;
  }
  void TearDown() override { Cluster::Get().Down(); }
};

// A coordinator on node 0 and one single-rank worker group on each of `nodes`, zone
// "zone-<node>"; stopped when it goes.
class Serving {
 public:
  explicit Serving(const std::vector<int>& nodes) : cluster_(Cluster::Get()) {
    coordinator_ = cluster_.Start(
        0,
        absl::StrCat(cluster_.Tessera(), " coordinator --listen 0.0.0.0:", kCoordinatorPort,
                     " --metrics-listen off --http-listen off --heartbeat-interval 500ms"),
        absl::StrCat("coordinator-", ++runs_));
    for (int node : nodes) {
      workers_.push_back(cluster_.Start(
          0,
          absl::StrCat(cluster_.Mpirun({node}, 1), " ", cluster_.Tessera(),
                       " worker --coordinator ", cluster_.Host(0), ":", kCoordinatorPort,
                       " --listen 0.0.0.0:50061 --metrics-listen off --kv-cache-memory 64M",
                       " --timeout 5s --zone zone-", node),
          absl::StrCat("workers-", runs_, "-node", node)));
    }
    channel_ = grpc::CreateChannel(absl::StrCat(cluster_.Address(0), ":", kCoordinatorPort),
                                   grpc::InsecureChannelCredentials());
    inference_ = v1::Inference::NewStub(channel_);
  }
  ~Serving() {
    for (auto& worker : workers_) {
      if (worker) worker->Stop();
    }
    if (coordinator_) coordinator_->Stop();
  }

  v1::Inference::Stub& inference() { return *inference_; }

  // Waits until the model is listed with `groups` healthy groups; its name.
  std::string WaitForGroups(int groups) {
    std::string model;
    bool ready = WaitFor(
        [&] {
          grpc::ClientContext context;
          SetDeadline(context, absl::Seconds(2));
          v1::ListModelsResponse models;
          if (!inference_->ListModels(&context, {}, &models).ok()) return false;
          if (models.models_size() != 1 || models.models(0).versions_size() != 1) return false;
          model = models.models(0).name();
          return models.models(0).versions(0).healthy_groups() == groups;
        },
        kStartTimeout, absl::Milliseconds(200));
    EXPECT_TRUE(ready) << "no " << groups << " healthy groups; coordinator log:\n"
                       << Tail(coordinator_->Log(), 30);
    return model;
  }

  // Group id -> the host its leader runs on, from the coordinator's registrations.
  std::map<std::string, std::string> GroupHosts() const {
    std::map<std::string, std::string> hosts;
    for (const nlohmann::json& event : Events(coordinator_->Log(), "group_registered")) {
      const std::string name = event.value("name", "");
      hosts[event.value("group", "")] = name.substr(0, name.find('/'));
    }
    return hosts;
  }

  std::string Logs() const {
    std::string logs = absl::StrCat("--- coordinator:\n", Tail(coordinator_->Log(), 30));
    for (const auto& worker : workers_) {
      absl::StrAppend(&logs, "--- ", worker->log_path(), ":\n", Tail(worker->Log(), 20));
    }
    return logs;
  }

 private:
  static inline int runs_ = 0;
  const Cluster& cluster_;
  std::unique_ptr<ChildProcess> coordinator_;
  std::vector<std::unique_ptr<ChildProcess>> workers_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Inference::Stub> inference_;
};

class ClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cluster().unavailable().empty()) GTEST_SKIP() << cluster().unavailable();
  }
  void TearDown() override {
    for (int node = 1; node < kNodes; ++node) cluster().Link(node, "clear");
  }
  static Cluster& cluster() { return Cluster::Get(); }
};

// What a killed run leaves (its owner gone) is removed by the next `prune` or `up`: no
// namespace, link or state left, and the name can be used again.
TEST_F(ClusterTest, AClusterWhoseOwnerIsGoneIsRemoved) {
  const std::string name = absl::StrCat("x", getpid() % 10'000'000);
  ProcessOutcome owner = RunCommand("sh -c 'echo $$'");  // a pid that has exited
  ProcessOutcome up =
      RunCommand(absl::StrCat("TESSERA_CLUSTER_OWNER=", absl::StripAsciiWhitespace(owner.output),
                              " ", TESSERA_CLUSTER_SCRIPT, " up ", name, " 2 2>&1"));
  ASSERT_EQ(up.exit_code, 0) << up.output;
  auto leftovers = [&] {
    return RunCommand(
               absl::StrCat("{ ip netns list; ip -o link show; ls /run/tessera-cluster; } | ",
                            "grep -c -e tsc-", name, "- -e '^", name, "$'"))
        .output;
  };
  EXPECT_NE(absl::StripAsciiWhitespace(leftovers()), "0");  // namespaces, links, state
  ProcessOutcome prune = RunCommand(absl::StrCat(TESSERA_CLUSTER_SCRIPT, " prune 2>&1"));
  EXPECT_EQ(prune.exit_code, 0) << prune.output;
  EXPECT_EQ(absl::StripAsciiWhitespace(leftovers()), "0");
  // This run's own cluster, whose owner lives, is still there.
  EXPECT_EQ(cluster().Run(1, "hostname").output, cluster().Host(1) + "\n");
}

TEST_F(ClusterTest, TensorParallelGroupsStayInsideRealHosts) {
  const std::string hosts = absl::StrCat(cluster().Host(1), ",", cluster().Host(2));
  ProcessOutcome layout =
      cluster().Run(0, absl::StrCat(cluster().Mpirun({1, 2}, 2),
                                    " env TESSERA_TEST_NODES=2 TESSERA_TEST_HOSTS=", hosts, " ",
                                    TESSERA_LAYOUT_TEST));
  EXPECT_EQ(layout.exit_code, 0) << layout.output;

  // TP 4 over the two nodes is refused, naming them.
  ProcessOutcome refused =
      cluster().Run(0,
                    absl::StrCat(cluster().Mpirun({1, 2}, 2), " ", cluster().Tessera(),
                                 " worker --tp 4 --coordinator ", cluster().Host(0), ":",
                                 kCoordinatorPort, " --metrics-listen off"),
                    absl::Seconds(120));
  EXPECT_NE(refused.exit_code, 0) << refused.output;
  EXPECT_TRUE(absl::StrContains(refused.output, "span nodes")) << refused.output;
  EXPECT_TRUE(absl::StrContains(refused.output, cluster().Host(1))) << refused.output;
}

TEST_F(ClusterTest, ServesAcrossNodes) {
  Serving serving({1, 2});
  const std::string model = serving.WaitForGroups(2);
  ASSERT_FALSE(model.empty()) << serving.Logs();
  const std::map<std::string, std::string> hosts = serving.GroupHosts();

  // A client on node 0, by host name.
  ProcessOutcome health =
      cluster().Run(0, absl::StrCat(cluster().Tessera(), " client health --target ",
                                    cluster().Host(0), ":", kCoordinatorPort));
  EXPECT_EQ(health.exit_code, 0) << health.output;

  Unary unary = Generate(serving.inference(), Request(model, "Across the bridge", 12));
  ASSERT_TRUE(unary.status.ok()) << Describe(unary.status) << serving.Logs();
  EXPECT_EQ(unary.response.usage().completion_tokens(), 12);
  Streamed stream = Stream(serving.inference(), Request(model, "Across the bridge", 12));
  ASSERT_TRUE(stream.status.ok()) << Describe(stream.status);
  EXPECT_EQ(stream.Text(), unary.response.text());

  // A batch is sharded over both nodes' groups; each answer equals the request sent alone.
  v1::GenerateBatchRequest batch;
  for (int i = 0; i < 16; ++i) *batch.add_requests() = Request(model, absl::StrCat("req ", i), 8);
  grpc::ClientContext context;
  SetDeadline(context, absl::Seconds(120));
  v1::GenerateBatchResponse answers;
  ASSERT_TRUE(serving.inference().GenerateBatch(&context, batch, &answers).ok());
  ASSERT_EQ(answers.results_size(), 16);
  std::set<std::string> used_hosts;
  for (int i = 0; i < 16; ++i) {
    const v1::BatchResult& result = answers.results(i);
    ASSERT_EQ(result.error_code(), 0) << i << ": " << result.error_message();
    used_hosts.insert(hosts.at(result.response().placement().group()));
    Unary alone = Generate(serving.inference(), batch.requests(i));
    ASSERT_TRUE(alone.status.ok()) << Describe(alone.status);
    EXPECT_EQ(result.response().text(), alone.response.text()) << i;
  }
  EXPECT_EQ(used_hosts, (std::set<std::string>{cluster().Host(1), cluster().Host(2)}));

  // A request from zone-2 goes to node 2's group, and one from zone-1 to node 1's.
  for (int node : {1, 2}) {
    for (int i = 0; i < 4; ++i) {
      v1::GenerateRequest request = Request(model, absl::StrCat("zone ", i), 4);
      request.mutable_locality()->set_zone(absl::StrCat("zone-", node));
      Unary routed = Generate(serving.inference(), request);
      ASSERT_TRUE(routed.status.ok()) << Describe(routed.status);
      EXPECT_EQ(hosts.at(routed.response.placement().group()), cluster().Host(node));
    }
  }
}

TEST_F(ClusterTest, LaunchServesFromAHostfile) {
  const std::string hostfile = absl::StrCat(cluster().dir(), "/launch-hosts");
  std::ofstream(hostfile) << cluster().Host(1) << " slots=1\n" << cluster().Host(2) << " slots=1\n";
  std::unique_ptr<ChildProcess> launch = cluster().Start(
      0,
      absl::StrCat("env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 ",
                   "OMPI_MCA_plm_rsh_agent=", Quote(absl::StrCat(TESSERA_CLUSTER_SCRIPT, " rsh")),
                   " TESSERA_CACHE_DIR=", cluster().dir(), "/cache ", TESSERA_BINARY,
                   " launch --hostfile ", hostfile,
                   " --tp 1 --backend cpu --bind-to none --env TESSERA_CACHE_DIR",
                   " --coordinator-metrics-listen off --coordinator-http-listen off",
                   " -- --metrics-listen off --kv-cache-memory 64M"),
      "launch");
  ASSERT_NE(launch, nullptr);
  auto stub = v1::Inference::NewStub(
      grpc::CreateChannel(absl::StrCat(cluster().Address(0), ":", kCoordinatorPort),
                          grpc::InsecureChannelCredentials()));
  std::string model;
  ASSERT_TRUE(WaitFor(
      [&] {
        grpc::ClientContext context;
        SetDeadline(context, absl::Seconds(2));
        v1::ListModelsResponse models;
        if (!stub->ListModels(&context, {}, &models).ok() || models.models_size() != 1) {
          return false;
        }
        model = models.models(0).name();
        return models.models(0).versions(0).healthy_groups() == 2;
      },
      kStartTimeout, absl::Milliseconds(200)))
      << Tail(launch->Log(), 40);
  Unary unary = Generate(*stub, Request(model, "launched", 6));
  ASSERT_TRUE(unary.status.ok()) << Describe(unary.status);
  EXPECT_EQ(unary.response.usage().completion_tokens(), 6);
  launch->Terminate();
  std::optional<int> exit_status = launch->Wait(absl::Seconds(60));
  ASSERT_TRUE(exit_status.has_value()) << "tessera launch did not stop\n"
                                       << Tail(launch->Log(), 40);
  EXPECT_EQ(*exit_status, 128 + SIGTERM) << Tail(launch->Log(), 40);  // stopped by the signal
  EXPECT_TRUE(absl::StrContains(launch->Log(), "stopping the workers and the coordinator"));
}

// step -> loss of a training run's log.jsonl.
std::map<int64_t, double> Losses(const std::string& run) {
  std::map<int64_t, double> losses;
  std::ifstream log(run + "/log.jsonl");
  for (std::string line; std::getline(log, line);) {
    nlohmann::json entry = nlohmann::json::parse(line);
    if (entry.contains("loss")) losses[entry["step"].get<int64_t>()] = entry["loss"].get<double>();
  }
  return losses;
}

TEST_F(ClusterTest, FineTuneOverTwoNodesMatchesOneNode) {
  const std::string data = absl::StrCat(cluster().dir(), "/pairs.jsonl");
  {
    std::ofstream file(data);
    for (int i = 0; i < 8; ++i) {
      file << nlohmann::json{{"prompt", absl::StrCat("Question ", i, "? ")},
                             {"completion", absl::StrCat("Answer number ", i * 7)}}
                  .dump()
           << "\n";
    }
  }
  auto train = [&](const std::vector<int>& nodes, int slots, const std::string& run) {
    return cluster().Run(
        0, absl::StrCat(cluster().Mpirun(nodes, slots), " ", cluster().Tessera(),
                        " train --tp 2 --data ", data, " --output ", run,
                        " --steps 6 --seq-len 64 --micro-batch 2 --lr 1e-3 --warmup 1",
                        " --timeout 30s --no-export"));
  };
  const std::string one_node = cluster().dir() + "/one-node", two_nodes = cluster().dir() + "/two";
  ProcessOutcome local = train({1}, 4, one_node);
  ASSERT_EQ(local.exit_code, 0) << local.output;
  ProcessOutcome spread = train({1, 2}, 2, two_nodes);
  ASSERT_EQ(spread.exit_code, 0) << spread.output;
  const std::map<int64_t, double> expected = Losses(one_node), got = Losses(two_nodes);
  ASSERT_EQ(expected.size(), 6u);
  ASSERT_EQ(got.size(), 6u);
  for (const auto& [step, loss] : expected) {
    // The TP and DP sums go over TCP instead of shared memory, but a sum of two is the same
    // whichever way it is taken: bitwise the same losses.
    EXPECT_EQ(got.at(step), loss) << "step " << step;
  }
}

// comm-bench between nodes 1 and 2: every size checked against its closed form.
ProcessOutcome CommBench(const std::string& flags, absl::Duration timeout = absl::Seconds(240)) {
  Cluster& cluster = Cluster::Get();
  return cluster.Run(
      0, absl::StrCat(cluster.Mpirun({1, 2}, 1), " ", TESSERA_BINARY, " comm-bench ", flags),
      timeout);
}

// The time(us) column of comm-bench's row for `bytes`; -1 when there is none.
double RowMicroseconds(const std::string& output, int64_t bytes) {
  for (absl::string_view line : absl::StrSplit(output, '\n')) {
    std::vector<absl::string_view> words = absl::StrSplit(line, ' ', absl::SkipEmpty());
    double micros = 0;
    if (words.size() >= 5 && words[0] == absl::StrCat(bytes) &&
        absl::SimpleAtod(words[4], &micros)) {
      return micros;
    }
  }
  return -1;
}

TEST_F(ClusterTest, CollectivesAreCorrectOverALossyLink) {
  ProcessOutcome loss = cluster().Link(2, "loss 5");
  ASSERT_EQ(loss.exit_code, 0) << loss.output;
  // Each lost packet costs TCP a retransmission timeout (200 ms or more): few calls.
  ProcessOutcome bench = CommBench("-b 8 -e 512K -f 8 -n 20 -w 2 --rounds 1 --timeout 60s");
  EXPECT_EQ(bench.exit_code, 0) << bench.output;
  EXPECT_TRUE(absl::StrContains(bench.output, "out of bounds values: 0 OK")) << bench.output;
  std::fprintf(stderr, "%s", bench.output.c_str());
  // Packets were lost on the way: the drop rule's counter.
  ProcessOutcome rules = cluster().Run(2, "nft list table inet tessera_link");
  int64_t dropped = 0;
  if (size_t at = rules.output.find("packets "); at != std::string::npos) {
    dropped = std::atoll(rules.output.c_str() + at + 8);
  }
  std::fprintf(stderr, "[ info     ] %lld packets dropped\n", static_cast<long long>(dropped));
  EXPECT_GT(dropped, 0) << rules.output;
}

TEST_F(ClusterTest, CollectivesAreCorrectOverASlowLink) {
  ProcessOutcome delay = cluster().Link(2, "delay 1");
  if (delay.exit_code != 0) GTEST_SKIP() << delay.output;
  ProcessOutcome bench = CommBench("-b 8 -e 1M -f 16 -n 20 -w 2 --rounds 1 --timeout 60s");
  EXPECT_EQ(bench.exit_code, 0) << bench.output;
  EXPECT_TRUE(absl::StrContains(bench.output, "out of bounds values: 0 OK")) << bench.output;
  std::fprintf(stderr, "%s", bench.output.c_str());
  // Two ranks exchange once per all-reduce, and node 2's half of it waits 1 ms.
  EXPECT_GE(RowMicroseconds(bench.output, 8), 1000) << bench.output;
}

TEST_F(ClusterTest, ALinkDownMidCollectiveFailsTheJobWithinItsDeadline) {
  std::atomic<bool> taken_down{false};
  std::thread fault([&] {
    absl::SleepFor(absl::Seconds(4));  // well into the timed loop
    taken_down = cluster().Link(2, "down").exit_code == 0;
  });
  // Raw MPI has no deadline, so only Tessera's collective runs.
  ProcessOutcome bench = CommBench("-b 1M -e 1M -n 1000 --rounds 1000 --timeout 3s --raw-mpi=false",
                                   absl::Seconds(120));
  fault.join();
  ASSERT_TRUE(taken_down);
  EXPECT_NE(bench.exit_code, 0) << bench.output;
  EXPECT_NE(bench.exit_code, 128 + SIGKILL) << "the job hung\n" << bench.output;
  // Rank 0 names the rank it lost and where it ran.
  EXPECT_TRUE(absl::StrContains(bench.output, "DEADLINE_EXCEEDED")) << bench.output;
  EXPECT_TRUE(absl::StrContains(bench.output, absl::StrCat("rank 1 (world 1, ", cluster().Host(2),
                                                           ") did not "
                                                           "arrive")))
      << bench.output;
  // The deadline (3 s) after the fault, plus mpirun giving up on the lost node's daemon (its
  // TCP retries: about 12 s on the cluster's nodes).
  std::fprintf(stderr,
               "[ info     ] the job ended %.1f s after it started, the link went down at 4 s\n",
               bench.seconds);
  EXPECT_LT(bench.seconds, 4 + 3 + 40) << bench.output;
}

TEST_F(ClusterTest, AWorkerNodeLosingItsLinkLosesNoRequest) {
  Serving serving({1, 2});
  const std::string model = serving.WaitForGroups(2);
  ASSERT_FALSE(model.empty()) << serving.Logs();
  // Clients send streams back to back; node 2's link goes down while they run.
  constexpr int kClients = 4;
  std::atomic<bool> stop{false};
  std::atomic<int> sent{0}, ok{0};
  std::vector<std::string> failures;
  absl::Mutex failures_mutex;
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      for (int i = 0; !stop; ++i) {
        ++sent;
        Streamed stream = Stream(serving.inference(),
                                 Request(model, absl::StrCat("client ", c, " request ", i), 48),
                                 absl::Seconds(60));
        if (stream.status.ok() && stream.Tokens().size() == 48) {
          ++ok;
        } else {
          absl::MutexLock lock(&failures_mutex);
          failures.push_back(absl::StrCat("client ", c, " request ", i, ": ",
                                          Describe(stream.status), ", ", stream.Tokens().size(),
                                          " tokens"));
        }
      }
    });
  }
  absl::SleepFor(absl::Seconds(2));
  ASSERT_EQ(cluster().Link(2, "down").exit_code, 0);
  const absl::Time down_at = absl::Now();
  // The coordinator declares node 2's group dead after 3 missed heartbeats (1.5 s).
  const bool dead = WaitFor(
      [&] {
        grpc::ClientContext context;
        SetDeadline(context, absl::Seconds(2));
        v1::ListModelsResponse models;
        return serving.inference().ListModels(&context, {}, &models).ok() &&
               models.models_size() == 1 && models.models(0).versions(0).healthy_groups() == 1;
      },
      absl::Seconds(30), absl::Milliseconds(100));
  const double dead_after = absl::ToDoubleSeconds(absl::Now() - down_at);
  absl::SleepFor(absl::Seconds(3));  // requests go on with one group
  stop = true;
  for (std::thread& client : clients) client.join();
  EXPECT_TRUE(dead) << serving.Logs();
  std::fprintf(stderr,
               "[ info     ] group dead %.2f s after the link went down; %d of %d requests "
               "complete\n",
               dead_after, ok.load(), sent.load());
  EXPECT_EQ(ok.load(), sent.load()) << absl::StrJoin(failures, "\n") << "\n" << serving.Logs();
}

}  // namespace
}  // namespace tessera::e2e

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  ::testing::AddGlobalTestEnvironment(new tessera::e2e::ClusterEnvironment());
  return RUN_ALL_TESTS();
}
