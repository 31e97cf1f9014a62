// Tests of launcher/launch.h: the hostfile parser, the mapping from `tessera launch` flags to
// the coordinator command line and the mpirun command line of each replica, and the
// validation errors, each naming its flag.

#include "launcher/launch.h"

#include <stdlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "tests/unit/status_test_util.h"

namespace tessera::launcher {
namespace {

using ::tessera::testing::IsError;

// Whether `args` holds `flag` immediately followed by `value`.
::testing::AssertionResult HasPair(const std::vector<std::string>& args, const std::string& flag,
                                   const std::string& value) {
  for (size_t i = 0; i + 1 < args.size(); ++i) {
    if (args[i] == flag && args[i + 1] == value) return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure()
         << "'" << flag << " " << value << "' not in: " << absl::StrJoin(args, " ");
}

// Replica `replica`'s mpirun command.
const std::vector<std::string>& Job(const LaunchCommands& commands, int replica = 0) {
  static const std::vector<std::string> kNone;
  EXPECT_LT(replica, static_cast<int>(commands.replicas.size()));
  if (replica >= static_cast<int>(commands.replicas.size())) return kNone;
  return commands.replicas[replica].command;
}

// The arguments after the worker binary in replica 0's job: what `tessera worker` parses.
std::vector<std::string> WorkerArgs(const LaunchCommands& commands, const std::string& binary) {
  const std::vector<std::string>& job = Job(commands);
  auto at = std::find(job.begin(), job.end(), binary);
  EXPECT_NE(at, job.end()) << absl::StrJoin(job, " ");
  if (at == job.end()) return {};
  return std::vector<std::string>(at + 1, job.end());
}

class LaunchTest : public ::testing::Test {
 protected:
  LaunchTest() {
    char pattern[] = "/tmp/tessera-launch-test-XXXXXX";
    dir_ = mkdtemp(pattern);
    config_.hostfile = Hostfile("node-a slots=8\nnode-b slots=8\n");
    config_.tessera = "/opt/tessera/bin/tessera";
    config_.coordinator_binary = "/usr/local/bin/tessera";
    config_.local_host = "head";
  }
  ~LaunchTest() override { std::filesystem::remove_all(dir_); }

  std::string Hostfile(const std::string& text) {
    std::string path = dir_ + "/hosts" + std::to_string(files_++);
    std::ofstream(path) << text;
    return path;
  }

  std::string dir_;
  int files_ = 0;
  LaunchConfig config_;
};

TEST(ParseHostfileTest, ReadsHostsSlotsCommentsAndRepeats) {
  ASSERT_OK_AND_ASSIGN(std::vector<HostSlots> hosts,
                       ParseHostfile("# cluster\n\nnode-a slots=4 max_slots=8  # big\n"
                                     "node-b\tslots=2\nnode-a slots=4\n",
                                     "hosts"));
  ASSERT_EQ(hosts.size(), 2u);
  EXPECT_EQ(hosts[0].host, "node-a");
  EXPECT_EQ(hosts[0].slots, 8);  // listed twice: added, as mpirun does
  EXPECT_EQ(hosts[0].line, 3);
  EXPECT_EQ(hosts[1].host, "node-b");
  EXPECT_EQ(hosts[1].slots, 2);
  EXPECT_EQ(hosts[1].line, 4);
}

TEST(ParseHostfileTest, ErrorsNameTheFileAndLine) {
  EXPECT_TRUE(IsError(ParseHostfile("node-a slots=2\nnode-b\n", "hosts"),
                      absl::StatusCode::kInvalidArgument,
                      {"hosts line 2", "'node-b' has no slots=N"}));
  EXPECT_TRUE(IsError(ParseHostfile("node-a slots=two\n", "hosts"),
                      absl::StatusCode::kInvalidArgument, {"hosts line 1", "'slots=two'"}));
  EXPECT_TRUE(IsError(ParseHostfile("node-a slots=0\n", "hosts"),
                      absl::StatusCode::kInvalidArgument, {"line 1", "positive"}));
  EXPECT_TRUE(IsError(ParseHostfile("\n\nnode-a cpus=4 slots=4\n", "hosts"),
                      absl::StatusCode::kInvalidArgument, {"hosts line 3", "unknown key 'cpus'"}));
  EXPECT_TRUE(IsError(ParseHostfile("slots=4\n", "hosts"), absl::StatusCode::kInvalidArgument,
                      {"line 1", "not a host name"}));
  EXPECT_TRUE(IsError(ParseHostfile("# nothing\n", "hosts"), absl::StatusCode::kInvalidArgument,
                      {"hosts lists no host"}));
}

TEST_F(LaunchTest, DefaultsFillEverySlotAndStartTheCoordinatorHere) {
  config_.tp = 4;
  config_.model = "/models/glm-4-9b";
  config_.environment_names = {"HOME", "PATH"};
  ASSERT_OK_AND_ASSIGN(LaunchCommands commands, BuildLaunchCommands(config_));
  EXPECT_EQ(commands.np, 16);
  EXPECT_EQ(commands.coordinator_port, 50051);
  EXPECT_EQ(commands.coordinator, (std::vector<std::string>{"/usr/local/bin/tessera", "coordinator",
                                                            "--listen", "0.0.0.0:50051"}));
  // One job per replica: two groups of 4 on each node of 8 slots. Jobs sharing a node are
  // not bound, and each starts at its own GPU (comm/node_share.h).
  ASSERT_EQ(commands.replicas.size(), 4u);
  for (int r = 0; r < 4; ++r) {
    const std::string host = r < 2 ? "node-a" : "node-b";
    EXPECT_EQ(commands.replicas[r].groups,
              std::vector<std::string>{absl::StrCat(host, "/replica", r)});
    EXPECT_EQ(Job(commands, r),
              (std::vector<std::string>{"mpirun",
                                        "--host",
                                        host + ":4",
                                        "-np",
                                        "4",
                                        "--map-by",
                                        "slot",
                                        "--bind-to",
                                        "none",
                                        "-x",
                                        absl::StrCat("TESSERA_NODE_FIRST_SLOT=", 4 * (r % 2)),
                                        "-x",
                                        "TESSERA_NODE_RANKS=8",
                                        "-x",
                                        "NCCL_DEBUG=WARN",
                                        "/opt/tessera/bin/tessera",
                                        "worker",
                                        "--coordinator",
                                        "head:50051",
                                        "--tp",
                                        "4",
                                        "--replica-offset",
                                        absl::StrCat(r),
                                        "--device",
                                        "cuda",
                                        "--model",
                                        "/models/glm-4-9b"}));
  }
}

TEST_F(LaunchTest, RanksPerNodeSetsTheDefaultNp) {
  config_.ranks_per_node = 4;
  config_.tp = 2;
  ASSERT_OK_AND_ASSIGN(LaunchCommands commands, BuildLaunchCommands(config_));
  EXPECT_EQ(commands.np, 8);
  ASSERT_EQ(commands.replicas.size(), 4u);
  for (int r = 0; r < 4; ++r) {
    EXPECT_TRUE(HasPair(Job(commands, r), "--host", r < 2 ? "node-a:2" : "node-b:2"));
    EXPECT_TRUE(HasPair(Job(commands, r), "-np", "2"));
    EXPECT_TRUE(HasPair(Job(commands, r), "-x", "TESSERA_NODE_RANKS=4"));
    EXPECT_TRUE(HasPair(Job(commands, r), "--replica-offset", absl::StrCat(r)));
  }
}

TEST_F(LaunchTest, BindToCoreReservesCoresPerRank) {
  config_.ranks_per_node = 2;
  config_.tp = 2;
  config_.bind_to = "core";
  config_.cores_per_rank = 6;
  ASSERT_OK_AND_ASSIGN(LaunchCommands commands, BuildLaunchCommands(config_));
  EXPECT_TRUE(HasPair(Job(commands), "--map-by", "slot:PE=6"));
  EXPECT_TRUE(HasPair(Job(commands), "--bind-to", "core"));
  EXPECT_TRUE(HasPair(Job(commands), "-x", "TESSERA_CPU_THREADS=6"));

  // Several jobs on a node are not bound (each would take the node's first cores); the
  // thread cap stays.
  config_.ranks_per_node = 0;
  config_.cores_per_rank = 1;
  ASSERT_OK_AND_ASSIGN(commands, BuildLaunchCommands(config_));
  EXPECT_TRUE(HasPair(Job(commands), "--map-by", "slot"));
  EXPECT_TRUE(HasPair(Job(commands), "--bind-to", "none"));
  EXPECT_TRUE(HasPair(Job(commands), "-x", "TESSERA_CPU_THREADS=1"));
}

TEST_F(LaunchTest, GpuLayoutRunsOneRankPerGpuBoundToItsNumaDomain) {
  // Two nodes of 8 GPUs, tensor-parallel groups of 8: one job on each node. mpirun does not
  // know which GPU a rank takes or where it hangs, so it binds nothing: each rank binds
  // itself to its GPU's NUMA domain (--device cuda, launcher/numa_placement.h).
  config_.ranks_per_node = 8;
  config_.tp = 8;
  ASSERT_OK_AND_ASSIGN(LaunchCommands commands, BuildLaunchCommands(config_));
  ASSERT_EQ(commands.replicas.size(), 2u);
  EXPECT_EQ(std::vector<std::string>(Job(commands, 1).begin(), Job(commands, 1).begin() + 9),
            (std::vector<std::string>{"mpirun", "--host", "node-b:8", "-np", "8", "--map-by",
                                      "slot", "--bind-to", "none"}));
  EXPECT_TRUE(HasPair(Job(commands, 1), "--device", "cuda"));
  EXPECT_FALSE(HasPair(Job(commands), "-x", "TESSERA_CPU_THREADS=1"));
  EXPECT_FALSE(HasPair(Job(commands), "-x", "TESSERA_NODE_FIRST_SLOT=0"));
  for (const std::string& arg : Job(commands)) {
    EXPECT_EQ(arg.find("TESSERA_NODE_BIND"), std::string::npos) << arg;
  }
}

// The value of `-x NAME=VALUE` in `job`; "" when absent.
std::string Exported(const std::vector<std::string>& job, const std::string& name) {
  for (size_t i = 0; i + 1 < job.size(); ++i) {
    if (job[i] == "-x" && job[i + 1].rfind(name + "=", 0) == 0) {
      return job[i + 1].substr(name.size() + 1);
    }
  }
  return "";
}

TEST_F(LaunchTest, JobsSharingANodeTakeDisjointSlotsOfIt) {
  // The cpu backend on nodes of four NUMA domains, groups of two ranks: two jobs a node. Each
  // rank binds itself to the domain of its node slot, first_slot + local rank
  // (launcher/numa_placement.h: SlotCpus): job 0 domains 0-1, job 1 domains 2-3.
  config_.hostfile = Hostfile("node-a slots=4\nnode-b slots=4\n");
  config_.backend = "cpu";
  config_.tp = 2;
  ASSERT_OK_AND_ASSIGN(LaunchCommands commands, BuildLaunchCommands(config_));
  ASSERT_EQ(commands.replicas.size(), 4u);
  std::set<std::pair<std::string, int>> slots;  // (node, slot) of every rank
  for (int r = 0; r < 4; ++r) {
    const std::vector<std::string>& job = Job(commands, r);
    EXPECT_TRUE(HasPair(job, "--bind-to", "none"));
    EXPECT_TRUE(HasPair(job, "--map-by", "slot"));
    EXPECT_EQ(Exported(job, "TESSERA_NODE_BIND"), "numa");
    EXPECT_EQ(Exported(job, "TESSERA_NODE_RANKS"), "4");
    const int first = std::stoi(Exported(job, "TESSERA_NODE_FIRST_SLOT"));
    for (int local = 0; local < config_.tp; ++local) {
      EXPECT_TRUE(slots.emplace(r < 2 ? "node-a" : "node-b", first + local).second)
          << "replica " << r << " takes slot " << first + local << " twice";
      EXPECT_LT(first + local, 4);
    }
  }
  EXPECT_EQ(slots.size(), 8u);

  // --bind-to core: slots of K cores (TESSERA_NODE_BIND=core:K), threads capped at K.
  config_.bind_to = "core";
  config_.cores_per_rank = 6;
  ASSERT_OK_AND_ASSIGN(commands, BuildLaunchCommands(config_));
  EXPECT_EQ(Exported(Job(commands, 1), "TESSERA_NODE_BIND"), "core:6");
  EXPECT_EQ(Exported(Job(commands, 1), "TESSERA_CPU_THREADS"), "6");
  EXPECT_TRUE(HasPair(Job(commands, 1), "--bind-to", "none"));

  // GPUs: each rank goes to its GPU's domain, whichever job it is in; none: nothing.
  config_.backend = "nccl";
  config_.bind_to = "numa";
  ASSERT_OK_AND_ASSIGN(commands, BuildLaunchCommands(config_));
  EXPECT_EQ(Exported(Job(commands, 1), "TESSERA_NODE_BIND"), "");
  EXPECT_EQ(Exported(Job(commands, 1), "TESSERA_NODE_FIRST_SLOT"), "2");
  config_.backend = "cpu";
  config_.bind_to = "none";
  ASSERT_OK_AND_ASSIGN(commands, BuildLaunchCommands(config_));
  EXPECT_EQ(Exported(Job(commands, 1), "TESSERA_NODE_BIND"), "");
}

TEST_F(LaunchTest, CpuLayoutRunsOneRankPerNumaDomain) {
  // Two nodes of two NUMA domains (sockets): slots=2 each, one rank bound to each domain.
  config_.hostfile = Hostfile("node-a slots=2\nnode-b slots=2\n");
  config_.backend = "cpu";
  config_.tp = 2;
  ASSERT_OK_AND_ASSIGN(LaunchCommands commands, BuildLaunchCommands(config_));
  EXPECT_EQ(commands.np, 4);
  EXPECT_EQ(std::vector<std::string>(Job(commands).begin(), Job(commands).begin() + 9),
            (std::vector<std::string>{"mpirun", "--host", "node-a:2", "-np", "2", "--map-by",
                                      "ppr:1:numa", "--bind-to", "numa"}));
  // The threads follow the binding (kernels/cpu/cpu_affinity.h): no count is imposed.
  for (const std::string& arg : Job(commands)) {
    EXPECT_EQ(arg.find("TESSERA_CPU_THREADS"), std::string::npos) << arg;
  }

  // --ranks-per-node gives the domains per node; the mapping is still one per domain.
  config_.ranks_per_node = 2;
  ASSERT_OK_AND_ASSIGN(commands, BuildLaunchCommands(config_));
  EXPECT_TRUE(HasPair(Job(commands, 1), "--map-by", "ppr:1:numa"));
  EXPECT_TRUE(HasPair(Job(commands, 1), "--host", "node-b:2"));

  // An explicit core or none binding is kept as asked.
  config_.bind_to = "core";
  config_.cores_per_rank = 16;
  ASSERT_OK_AND_ASSIGN(commands, BuildLaunchCommands(config_));
  EXPECT_TRUE(HasPair(Job(commands), "--map-by", "slot:PE=16"));
  EXPECT_TRUE(HasPair(Job(commands), "--bind-to", "core"));
  config_.bind_to = "none";
  ASSERT_OK_AND_ASSIGN(commands, BuildLaunchCommands(config_));
  EXPECT_TRUE(HasPair(Job(commands), "--map-by", "slot"));
  EXPECT_TRUE(HasPair(Job(commands), "--bind-to", "none"));
}

TEST_F(LaunchTest, BindToNoneBindsNothing) {
  config_.bind_to = "none";
  ASSERT_OK_AND_ASSIGN(LaunchCommands commands, BuildLaunchCommands(config_));
  EXPECT_TRUE(HasPair(Job(commands), "--bind-to", "none"));
  EXPECT_TRUE(HasPair(Job(commands), "--map-by", "slot"));
}

TEST_F(LaunchTest, NcclBackendForwardsNcclSettingsAndUserEnv) {
  config_.environment_names = {"NCCL_SOCKET_IFNAME",   "NCCL_IB_DISABLE",  "HOME",
                               "TESSERA_COMM_TIMEOUT", "TESSERA_HOSTNAME", "TESSERA_PARSE_ONLY"};
  config_.env = {"FOO=bar baz", "LD_LIBRARY_PATH"};
  ASSERT_OK_AND_ASSIGN(LaunchCommands commands, BuildLaunchCommands(config_));
  EXPECT_TRUE(HasPair(Job(commands), "-x", "NCCL_DEBUG=WARN"));
  EXPECT_TRUE(HasPair(Job(commands), "-x", "NCCL_IB_DISABLE"));
  EXPECT_TRUE(HasPair(Job(commands), "-x", "NCCL_SOCKET_IFNAME"));
  EXPECT_TRUE(HasPair(Job(commands), "-x", "TESSERA_COMM_TIMEOUT"));
  EXPECT_TRUE(HasPair(Job(commands), "-x", "FOO=bar baz"));
  EXPECT_TRUE(HasPair(Job(commands), "-x", "LD_LIBRARY_PATH"));
  for (const char* kept : {"HOME", "TESSERA_HOSTNAME", "TESSERA_PARSE_ONLY"}) {
    EXPECT_FALSE(HasPair(Job(commands), "-x", kept)) << kept;
  }
}

TEST_F(LaunchTest, UserNcclDebugReplacesTheDefault) {
  config_.env = {"NCCL_DEBUG=INFO"};
  ASSERT_OK_AND_ASSIGN(LaunchCommands commands, BuildLaunchCommands(config_));
  EXPECT_TRUE(HasPair(Job(commands), "-x", "NCCL_DEBUG=INFO"));
  EXPECT_FALSE(HasPair(Job(commands), "-x", "NCCL_DEBUG=WARN"));

  config_.env.clear();
  config_.environment_names = {"NCCL_DEBUG"};
  ASSERT_OK_AND_ASSIGN(commands, BuildLaunchCommands(config_));
  EXPECT_TRUE(HasPair(Job(commands), "-x", "NCCL_DEBUG"));
  EXPECT_FALSE(HasPair(Job(commands), "-x", "NCCL_DEBUG=WARN"));
}

TEST_F(LaunchTest, CpuBackendSetsNoNcclEnvironment) {
  config_.backend = "cpu";
  config_.environment_names = {"NCCL_IB_DISABLE", "TESSERA_CPU_THREADS"};
  ASSERT_OK_AND_ASSIGN(LaunchCommands commands, BuildLaunchCommands(config_));
  for (const std::string& arg : Job(commands)) {
    EXPECT_EQ(arg.find("NCCL"), std::string::npos) << arg;
  }
  EXPECT_TRUE(HasPair(Job(commands), "-x", "TESSERA_CPU_THREADS"));
}

TEST_F(LaunchTest, WorkerFlagsAndPassThroughArguments) {
  config_.tp = 2;
  config_.model = "/m";
  config_.model_name = "glm";
  config_.version = "v2";
  config_.zone = "rack-1";
  config_.coordinator = "10.0.0.1:6000";
  config_.policy = "least-load";
  config_.coordinator_metrics_listen = "0.0.0.0:9500";
  config_.join_token_file = "/etc/tessera/join";
  config_.api_keys_file = "/etc/tessera/keys";
  config_.tls = {"/etc/tessera/tls.crt", "/etc/tessera/tls.key", "/etc/tessera/ca.crt", ""};
  config_.mpirun = "/opt/ompi/bin/mpirun";
  config_.worker_args = {"--dtype", "bf16", "--kv-cache-memory", "8G"};
  ASSERT_OK_AND_ASSIGN(LaunchCommands commands, BuildLaunchCommands(config_));
  EXPECT_EQ(Job(commands).front(), "/opt/ompi/bin/mpirun");
  EXPECT_EQ(commands.coordinator_port, 6000);
  EXPECT_EQ(
      commands.coordinator,
      (std::vector<std::string>{
          "/usr/local/bin/tessera", "coordinator", "--listen", "0.0.0.0:6000", "--metrics-listen",
          "0.0.0.0:9500", "--policy", "least-load", "--join-token-file", "/etc/tessera/join",
          "--api-keys", "/etc/tessera/keys", "--tls-cert", "/etc/tessera/tls.crt", "--tls-key",
          "/etc/tessera/tls.key", "--tls-ca", "/etc/tessera/ca.crt"}));
  EXPECT_EQ(WorkerArgs(commands, "/opt/tessera/bin/tessera"),
            (std::vector<std::string>{"worker",
                                      "--coordinator",
                                      "10.0.0.1:6000",
                                      "--tp",
                                      "2",
                                      "--replica-offset",
                                      "0",
                                      "--device",
                                      "cuda",
                                      "--model",
                                      "/m",
                                      "--model-name",
                                      "glm",
                                      "--version",
                                      "v2",
                                      "--zone",
                                      "rack-1",
                                      "--join-token-file",
                                      "/etc/tessera/join",
                                      "--tls-cert",
                                      "/etc/tessera/tls.crt",
                                      "--tls-key",
                                      "/etc/tessera/tls.key",
                                      "--tls-ca",
                                      "/etc/tessera/ca.crt",
                                      "--dtype",
                                      "bf16",
                                      "--kv-cache-memory",
                                      "8G"}));
}

TEST_F(LaunchTest, NoStartCoordinatorBuildsOnlyTheWorkers) {
  config_.start_coordinator = false;
  config_.coordinator = "tessera-coordinator:50051";
  ASSERT_OK_AND_ASSIGN(LaunchCommands commands, BuildLaunchCommands(config_));
  EXPECT_TRUE(commands.coordinator.empty());
  EXPECT_TRUE(HasPair(Job(commands), "--coordinator", "tessera-coordinator:50051"));
}

TEST_F(LaunchTest, ExplicitNpFillsHostsInOrder) {
  config_.hostfile = Hostfile("a slots=4\nb slots=4\nc slots=4\n");
  config_.np = 6;
  config_.tp = 2;
  ASSERT_OK_AND_ASSIGN(LaunchCommands commands, BuildLaunchCommands(config_));
  EXPECT_EQ(commands.np, 6);
  ASSERT_EQ(commands.replicas.size(), 3u);  // two groups on a, one on b, none on c
  EXPECT_TRUE(HasPair(Job(commands, 1), "--host", "a:2"));
  EXPECT_TRUE(HasPair(Job(commands, 2), "--host", "b:2"));
  EXPECT_TRUE(HasPair(Job(commands, 2), "--replica-offset", "2"));
  // b's only group is alone on its node: no node share (its ranks bind themselves to their
  // GPUs' domains, as every GPU rank does).
  EXPECT_TRUE(HasPair(Job(commands, 2), "--bind-to", "none"));
  EXPECT_FALSE(HasPair(Job(commands, 2), "-x", "TESSERA_NODE_FIRST_SLOT=0"));
}

TEST_F(LaunchTest, TensorParallelGroupsMayNotSpanNodes) {
  config_.ranks_per_node = 6;
  config_.tp = 4;
  EXPECT_TRUE(IsError(BuildLaunchCommands(config_), absl::StatusCode::kInvalidArgument,
                      {"--tp 4 does not divide --ranks-per-node 6"}));

  config_.ranks_per_node = 0;
  config_.hostfile = Hostfile("a slots=4\nb slots=6\n");
  EXPECT_TRUE(IsError(BuildLaunchCommands(config_), absl::StatusCode::kInvalidArgument,
                      {"--tp 4", "host 'b'", "line 2", "would run 6 ranks"}));

  config_.hostfile = Hostfile("a slots=4\nb slots=4\n");
  config_.np = 6;  // b would run 2
  EXPECT_TRUE(IsError(BuildLaunchCommands(config_), absl::StatusCode::kInvalidArgument,
                      {"--tp 4", "host 'b'", "would run 2 ranks"}));
  config_.ranks_per_node = 4;
  EXPECT_TRUE(IsError(BuildLaunchCommands(config_), absl::StatusCode::kInvalidArgument,
                      {"--tp 4 does not divide --np 6"}));
}

TEST_F(LaunchTest, RankCountsMustFitTheHostfile) {
  config_.np = 17;
  EXPECT_TRUE(IsError(BuildLaunchCommands(config_), absl::StatusCode::kInvalidArgument,
                      {"--np 17", "room for 16 ranks"}));
  config_.np = 0;
  config_.ranks_per_node = 10;
  config_.tp = 2;
  EXPECT_TRUE(IsError(BuildLaunchCommands(config_), absl::StatusCode::kInvalidArgument,
                      {"--ranks-per-node 10", "host 'node-a'", "line 1", "only 8 slots"}));
}

TEST_F(LaunchTest, HostfileErrorsNameTheFlagAndLine) {
  config_.hostfile = dir_ + "/missing";
  EXPECT_TRUE(IsError(BuildLaunchCommands(config_), absl::StatusCode::kInvalidArgument,
                      {"--hostfile", "cannot read", "missing"}));
  config_.hostfile = "";
  EXPECT_TRUE(IsError(BuildLaunchCommands(config_), absl::StatusCode::kInvalidArgument,
                      {"--hostfile: required"}));
  config_.hostfile = dir_;
  EXPECT_TRUE(IsError(BuildLaunchCommands(config_), absl::StatusCode::kInvalidArgument,
                      {"--hostfile", "cannot read"}));
  config_.hostfile = Hostfile("a slots=2\nb slots=x\n");
  EXPECT_TRUE(IsError(BuildLaunchCommands(config_), absl::StatusCode::kInvalidArgument,
                      {"--hostfile", "line 2", "'slots=x'"}));
}

TEST_F(LaunchTest, BadFlagValuesNameTheFlag) {
  struct Case {
    void (*change)(LaunchConfig&);
    std::string flag;
  };
  const Case cases[] = {
      {[](LaunchConfig& c) { c.bind_to = "socket"; }, "--bind-to: 'socket'"},
      {[](LaunchConfig& c) { c.backend = "gloo"; }, "--backend: 'gloo'"},
      {[](LaunchConfig& c) { c.tp = 0; }, "--tp"},
      {[](LaunchConfig& c) { c.np = -1; }, "--np"},
      {[](LaunchConfig& c) { c.ranks_per_node = -2; }, "--ranks-per-node"},
      {[](LaunchConfig& c) {
         c.bind_to = "core";
         c.cores_per_rank = 0;
       },
       "--cores-per-rank"},
      {[](LaunchConfig& c) { c.coordinator = "head"; }, "--coordinator: 'head'"},
      {[](LaunchConfig& c) { c.coordinator = "head:99999"; }, "--coordinator"},
      {[](LaunchConfig& c) { c.coordinator = ":50051"; }, "--coordinator"},
      {[](LaunchConfig& c) { c.env = {"1BAD=x"}; }, "--env: '1BAD=x'"},
      {[](LaunchConfig& c) { c.env = {"=x"}; }, "--env"},
      {[](LaunchConfig& c) { c.tessera = ""; }, "--tessera"},
      {[](LaunchConfig& c) { c.mpirun = ""; }, "--mpirun"},
      {[](LaunchConfig& c) { c.supervision.max_failed_starts = 0; }, "--max-failed-starts"},
      {[](LaunchConfig& c) {
         c.local_host = "";
         c.coordinator = "";
       },
       "--coordinator: required"},
  };
  for (const Case& test : cases) {
    LaunchConfig config = config_;
    test.change(config);
    EXPECT_TRUE(
        IsError(BuildLaunchCommands(config), absl::StatusCode::kInvalidArgument, {test.flag}))
        << test.flag;
  }
}

TEST(ShellJoinTest, QuotesOnlyWhatNeedsIt) {
  EXPECT_EQ(ShellJoin({"mpirun", "-x", "NCCL_DEBUG=WARN", "--map-by", "ppr:4:node:PE=2",
                       "/a/b-c_d.e", "x@y%z+1,2"}),
            "mpirun -x NCCL_DEBUG=WARN --map-by ppr:4:node:PE=2 /a/b-c_d.e x@y%z+1,2");
  EXPECT_EQ(ShellJoin({"echo", "a b", "", "it's", "$HOME", "*"}),
            "echo 'a b' '' 'it'\\''s' '$HOME' '*'");
}

}  // namespace
}  // namespace tessera::launcher
