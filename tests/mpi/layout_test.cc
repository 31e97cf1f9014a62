// Topology discovery and the TP x DP layout across real ranks. Run by ctest on 4 ranks of one
// host, on 2 simulated nodes x 2 ranks (mpirun MPMD with TESSERA_HOSTNAME=node-a/node-b), and
// by the cluster test on 2 real nodes (TESSERA_TEST_HOSTS names them); TESSERA_TEST_NODES
// tells the test how many nodes there are.

#include "comm/layout.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "comm/host_name.h"
#include "comm/topology.h"
#include "tests/mpi/mpi_test_environment.h"

namespace tessera::comm {
namespace {

using ::tessera::testing::World;

int SimulatedNodes() {
  const char* nodes = std::getenv("TESSERA_TEST_NODES");
  return nodes ? std::atoi(nodes) : 1;
}

// The host names of the two nodes: TESSERA_TEST_HOSTS ("a,b") on a real cluster, else the
// simulated ones.
std::vector<std::string> ExpectedHosts() {
  const char* hosts = std::getenv("TESSERA_TEST_HOSTS");
  if (hosts == nullptr) return {"node-a", "node-b"};
  return absl::StrSplit(hosts, ',');
}

// Sum of the world ranks of a group, through its communicator.
int64_t SumOfWorldRanks(Communicator& group) {
  absl::StatusOr<Tensor> value = Tensor::Empty(DType::kI64, {1});
  TESSERA_CHECK(value.ok(), "allocation");
  value->span<int64_t>()[0] = World().rank();
  Stream cpu = Stream::Cpu();
  absl::Status status = group.AllReduce(*value, ReduceOp::kSum, cpu);
  TESSERA_CHECK(status.ok(), status.ToString());
  return value->span<int64_t>()[0];
}

TEST(Topology, DiscoversHostsAndLocalRanks) {
  absl::StatusOr<Topology> topology = Topology::Discover(World());
  ASSERT_TRUE(topology.ok()) << topology.status();
  ASSERT_EQ(topology->world_size(), World().size());
  int nodes = SimulatedNodes();
  ASSERT_EQ(static_cast<int>(topology->hosts().size()), nodes) << topology->ToString();
  int per_node = World().size() / nodes;
  for (int r = 0; r < World().size(); ++r) {
    const RankPlacement& placement = topology->rank(r);
    EXPECT_EQ(placement.node, r / per_node) << topology->ToString();
    EXPECT_EQ(placement.local_rank, r % per_node);
    EXPECT_EQ(placement.local_size, per_node);
  }
  EXPECT_EQ(topology->rank(World().rank()).host, LocalHostName());
  if (nodes == 2) {
    EXPECT_EQ(topology->hosts(), ExpectedHosts());
  }
}

TEST(Layout, TensorParallelGroupsOfTwoStayInsideNodes) {
  if (World().size() % 2 != 0) GTEST_SKIP() << "needs an even world";
  absl::StatusOr<Topology> topology = Topology::Discover(World());
  ASSERT_TRUE(topology.ok()) << topology.status();
  absl::StatusOr<Layout> layout = Layout::Create(World(), *topology, LayoutOptions{.tp = 2});
  ASSERT_TRUE(layout.ok()) << layout.status();
  int rank = World().rank();
  EXPECT_EQ(layout->tp_size(), 2);
  EXPECT_EQ(layout->tp_rank(), rank % 2);
  EXPECT_EQ(layout->dp_size(), World().size() / 2);
  EXPECT_EQ(layout->dp_rank(), rank / 2);
  EXPECT_EQ(layout->tp().size(), 2);
  EXPECT_EQ(layout->tp().name(), absl::StrCat("tp", rank / 2));
  EXPECT_EQ(layout->dp().name(), absl::StrCat("dp", rank % 2));
  EXPECT_EQ(layout->tp().world_ranks(), (std::vector<int>{rank / 2 * 2, rank / 2 * 2 + 1}));
  for (int member : layout->tp().world_ranks()) {
    EXPECT_EQ(topology->rank(member).node, topology->rank(rank).node) << "TP group spans nodes";
  }
  // Closed forms: a TP pair {2k, 2k+1} sums to 4k+1; a DP group {t, t+2, ...} to
  // t*dp + 2*(0+1+...+dp-1).
  EXPECT_EQ(SumOfWorldRanks(layout->tp()), 4 * (rank / 2) + 1);
  int dp = layout->dp_size();
  EXPECT_EQ(SumOfWorldRanks(layout->dp()), (rank % 2) * dp + dp * (dp - 1));
}

TEST(Layout, RefusesTensorParallelGroupsThatSpanNodes) {
  if (SimulatedNodes() != 2) GTEST_SKIP() << "needs two nodes";
  absl::StatusOr<Topology> topology = Topology::Discover(World());
  ASSERT_TRUE(topology.ok()) << topology.status();
  absl::StatusOr<Layout> refused =
      Layout::Create(World(), *topology, LayoutOptions{.tp = World().size()});
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("span nodes"), absl::string_view::npos)
      << refused.status();
  EXPECT_NE(refused.status().message().find(ExpectedHosts()[0]), absl::string_view::npos)
      << refused.status();

  // Allowed explicitly, the same request gives one group over both nodes.
  absl::StatusOr<Layout> allowed = Layout::Create(
      World(), *topology, LayoutOptions{.tp = World().size(), .allow_cross_node_tp = true});
  ASSERT_TRUE(allowed.ok()) << allowed.status();
  EXPECT_EQ(allowed->tp().size(), World().size());
  EXPECT_EQ(allowed->dp().size(), 1);
  int n = World().size();
  EXPECT_EQ(SumOfWorldRanks(allowed->tp()), n * (n - 1) / 2);
}

}  // namespace
}  // namespace tessera::comm
