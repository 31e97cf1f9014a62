// The NUMA side of the read-bandwidth probe (launcher/numa_nodes.h, launcher/read_bandwidth.h):
// CPU lists, sysfs's node directories and where a process's readers go, as pure functions;
// then the probe itself over nodes laid on this host, which may have one. Nothing here is
// timed as a pass or a fail: the figures only have to exist.

#include "launcher/read_bandwidth.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_affinity.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/parallel.h"
#include "launcher/numa_nodes.h"

namespace tessera::launcher {
namespace {

// A rank whose cores lie on two NUMA nodes is warned about, naming the flags that fix it.
TEST(NumaSpanTest, ARankOnSeveralNodesIsNamedWithItsFix) {
  const std::vector<NumaNode> nodes = {{0, {0, 1, 2, 3}}, {1, {4, 5, 6, 7}}, {3, {8, 9}}};
  EXPECT_EQ(NumaNodesOf(nodes, {1, 2}), (std::vector<int>{0}));
  EXPECT_EQ(NumaNodesOf(nodes, {3, 4, 9}), (std::vector<int>{0, 1, 3}));
  EXPECT_EQ(NumaNodesOf(nodes, {12}), (std::vector<int>{}));
  EXPECT_EQ(NumaSpanProblem({0}, false), "");
  EXPECT_EQ(NumaSpanProblem({}, true), "");
  const std::string mpirun = NumaSpanProblem({0, 1}, false);
  EXPECT_NE(mpirun.find("span NUMA nodes 0, 1"), std::string::npos) << mpirun;
  EXPECT_NE(mpirun.find("mpirun --map-by ppr:1:numa --bind-to numa"), std::string::npos);
  EXPECT_NE(NumaSpanProblem({0, 3}, true).find("srun --cpu-bind=ldoms"), std::string::npos);
}

TEST(ParseCpuListTest, RangesAndSingles) {
  EXPECT_EQ(ParseCpuList("0-3,8-11"), (std::vector<int>{0, 1, 2, 3, 8, 9, 10, 11}));
  EXPECT_EQ(ParseCpuList("5"), (std::vector<int>{5}));
  EXPECT_EQ(ParseCpuList("0-1,4\n"), (std::vector<int>{0, 1, 4}));
  EXPECT_EQ(ParseCpuList("7-7"), (std::vector<int>{7}));
  // taskset may repeat and disorder: ascending, each once.
  EXPECT_EQ(ParseCpuList("8,0-2,1"), (std::vector<int>{0, 1, 2, 8}));
}

TEST(ParseCpuListTest, EmptyIsNoCpu) {
  EXPECT_EQ(ParseCpuList(""), std::vector<int>{});
  EXPECT_EQ(ParseCpuList("\n"), std::vector<int>{});
}

TEST(ParseCpuListTest, MalformedIsRefused) {
  for (const char* text :
       {"3-1", "a", "1,,2", "1,", ",1", "-1", "1-", "0-3;8", "1 2", "0x3", "99999999"}) {
    EXPECT_EQ(ParseCpuList(text), std::nullopt) << text;
  }
}

class FakeSysfs : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = std::filesystem::path(::testing::TempDir()) /
            ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(root_);
    std::filesystem::create_directories(root_);
  }
  void TearDown() override { std::filesystem::remove_all(root_); }

  void Write(const std::string& relative, const std::string& text) {
    const std::filesystem::path path = root_ / relative;
    std::filesystem::create_directories(path.parent_path());
    std::ofstream(path) << text;
  }

  std::filesystem::path root_;
};

TEST_F(FakeSysfs, TwoSocketsAndAMemoryOnlyNode) {
  Write("node1/cpulist", "4-7,12-15\n");
  Write("node0/cpulist", "0-3,8-11\n");
  Write("node2/cpulist", "\n");  // CXL memory: no CPU runs there
  Write("node10/cpulist", "16\n");
  Write("online", "0-2,10\n");
  Write("possible", "0-15\n");
  Write("has_cpu", "0-1,10\n");
  const std::vector<NumaNode> nodes = ReadNumaNodes(root_.string());
  ASSERT_EQ(nodes.size(), 3u);
  EXPECT_EQ(nodes[0].id, 0);
  EXPECT_EQ(nodes[0].cpus, (std::vector<int>{0, 1, 2, 3, 8, 9, 10, 11}));
  EXPECT_EQ(nodes[1].id, 1);
  EXPECT_EQ(nodes[1].cpus, (std::vector<int>{4, 5, 6, 7, 12, 13, 14, 15}));
  EXPECT_EQ(nodes[2].id, 10);
  EXPECT_EQ(nodes[2].cpus, (std::vector<int>{16}));
}

TEST_F(FakeSysfs, OneNodeAndNone) {
  Write("node0/cpulist", "0-1\n");
  const std::vector<NumaNode> nodes = ReadNumaNodes(root_.string());
  ASSERT_EQ(nodes.size(), 1u);
  EXPECT_EQ(nodes[0].cpus, (std::vector<int>{0, 1}));
  EXPECT_TRUE(ReadNumaNodes((root_ / "absent").string()).empty());
  Write("node1/cpulist", "garbage\n");  // left out, as a node it cannot place
  EXPECT_EQ(ReadNumaNodes(root_.string()).size(), 1u);
}

TEST(ReadNumaNodesTest, ThisHostsNodesHaveCpus) {
  for (const NumaNode& node : ReadNumaNodes()) EXPECT_FALSE(node.cpus.empty()) << node.id;
}

const std::vector<NumaNode> kTwoSockets = {{0, {0, 1, 2, 3, 8, 9, 10, 11}},
                                           {1, {4, 5, 6, 7, 12, 13, 14, 15}}};

TEST(PlaceReadersOnNodesTest, OneNodeHostPlacesNothing) {
  EXPECT_TRUE(PlaceReadersOnNodes({}, {0, 1}, 2).empty());
  EXPECT_TRUE(PlaceReadersOnNodes({{0, {0, 1}}}, {0, 1}, 2).empty());
}

TEST(PlaceReadersOnNodesTest, MaskOverBothSockets) {
  std::vector<int> all(16);
  for (int cpu = 0; cpu < 16; ++cpu) all[cpu] = cpu;
  const std::vector<NodeReaders> placed = PlaceReadersOnNodes(kTwoSockets, all, 16);
  ASSERT_EQ(placed.size(), 2u);
  EXPECT_EQ(placed[0].node, 0);
  EXPECT_EQ(placed[0].readers, 8);
  EXPECT_EQ(placed[0].cpus, kTwoSockets[0].cpus);
  EXPECT_EQ(placed[1].node, 1);
  EXPECT_EQ(placed[1].readers, 8);
  EXPECT_EQ(placed[1].cpus, kTwoSockets[1].cpus);
}

TEST(PlaceReadersOnNodesTest, RankBoundToOneSocket) {
  // mpirun --bind-to numa: the rank's kernel threads, and so its readers, on node 1 alone.
  const std::vector<NodeReaders> placed =
      PlaceReadersOnNodes(kTwoSockets, {4, 5, 6, 7, 12, 13, 14, 15}, 8);
  ASSERT_EQ(placed.size(), 1u);
  EXPECT_EQ(placed[0].node, 1);
  EXPECT_EQ(placed[0].readers, 8);
  EXPECT_EQ(placed[0].cpus, (std::vector<int>{4, 5, 6, 7, 12, 13, 14, 15}));
}

TEST(PlaceReadersOnNodesTest, PinnedThreadsFollowTheirCores) {
  // A pool pinned to the first 6 cores of the mask 0-15: 0-3 on node 0, 4-5 on node 1.
  const std::vector<NodeReaders> placed = PlaceReadersOnNodes(kTwoSockets, {0, 1, 2, 3, 4, 5}, 6);
  ASSERT_EQ(placed.size(), 2u);
  EXPECT_EQ(placed[0].readers, 4);
  EXPECT_EQ(placed[0].cpus, (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(placed[1].readers, 2);
  EXPECT_EQ(placed[1].cpus, (std::vector<int>{4, 5}));
}

TEST(PlaceReadersOnNodesTest, LargestRemainderAndTies) {
  // 12 CPUs on node 0, 4 on node 1, 5 readers: quotas 3.75 and 1.25.
  const std::vector<NumaNode> uneven = {{0, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}},
                                        {1, {12, 13, 14, 15}}};
  std::vector<int> all(16);
  for (int cpu = 0; cpu < 16; ++cpu) all[cpu] = cpu;
  std::vector<NodeReaders> placed = PlaceReadersOnNodes(uneven, all, 5);
  ASSERT_EQ(placed.size(), 2u);
  EXPECT_EQ(placed[0].readers, 4);
  EXPECT_EQ(placed[1].readers, 1);
  // Equal quotas 1.5 and 1.5: the reader left goes to the lower id.
  placed = PlaceReadersOnNodes(kTwoSockets, all, 3);
  ASSERT_EQ(placed.size(), 2u);
  EXPECT_EQ(placed[0].readers, 2);
  EXPECT_EQ(placed[1].readers, 1);
  // One reader over two equal nodes: node 0 alone is listed.
  placed = PlaceReadersOnNodes(kTwoSockets, all, 1);
  ASSERT_EQ(placed.size(), 1u);
  EXPECT_EQ(placed[0].node, 0);
  EXPECT_EQ(placed[0].readers, 1);
}

TEST(PlaceReadersOnNodesTest, RanksSharingAMaskSpreadTheirOddReaders) {
  std::vector<int> all(16);
  for (int cpu = 0; cpu < 16; ++cpu) all[cpu] = cpu;
  // Local ranks 0 and 1, one reader each, on both sockets: one node each.
  std::vector<NodeReaders> placed = PlaceReadersOnNodes(kTwoSockets, all, 1, /*rotation=*/1);
  ASSERT_EQ(placed.size(), 1u);
  EXPECT_EQ(placed[0].node, 1);
  placed = PlaceReadersOnNodes(kTwoSockets, all, 3, /*rotation=*/3);
  ASSERT_EQ(placed.size(), 2u);
  EXPECT_EQ(placed[0].readers, 1);
  EXPECT_EQ(placed[1].readers, 2);
  // A larger remainder still comes first: 12 and 4 CPUs, 5 readers (3.75 and 1.25).
  const std::vector<NumaNode> uneven = {{0, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}},
                                        {1, {12, 13, 14, 15}}};
  placed = PlaceReadersOnNodes(uneven, all, 5, /*rotation=*/1);
  ASSERT_EQ(placed.size(), 2u);
  EXPECT_EQ(placed[0].readers, 4);
  EXPECT_EQ(placed[1].readers, 1);
}

TEST(PlaceReadersOnNodesTest, CpusOnNoNodeAreIgnored) {
  // Unsorted, with a CPU sysfs does not place (99).
  const std::vector<NodeReaders> placed = PlaceReadersOnNodes(kTwoSockets, {99, 5, 0}, 4);
  ASSERT_EQ(placed.size(), 2u);
  EXPECT_EQ(placed[0].readers, 2);
  EXPECT_EQ(placed[0].cpus, (std::vector<int>{0}));
  EXPECT_EQ(placed[1].readers, 2);
  EXPECT_EQ(placed[1].cpus, (std::vector<int>{5}));
  EXPECT_TRUE(PlaceReadersOnNodes(kTwoSockets, {99}, 4).empty());
  EXPECT_TRUE(PlaceReadersOnNodes(kTwoSockets, {0, 4}, 0).empty());
}

// The CPUs this process's kernel threads run on, as the probe places them.
std::vector<int> KernelCpus() {
  const kernels::CpuSetup& setup = kernels::CurrentCpuSetup();
  std::vector<int> cpus = setup.cpus;
  if (setup.plan.pin && setup.plan.threads < static_cast<int>(cpus.size())) {
    cpus.resize(setup.plan.threads);
  }
  return cpus;
}

TEST(ProcessReadBandwidthTest, OneNodeMeasuresOnce) {
  // No node or one: PlaceReadersOnNodes places nothing, and the probe is what it always was.
  const int threads = kernels::CpuKernelThreads();
  const ReadBandwidth read =
      MeasureProcessReadBandwidth(threads, kernels::CpuVectorPath(), {{0, KernelCpus()}});
  EXPECT_GT(read.bytes_per_second, 0);
  EXPECT_EQ(read.threads, threads);
  EXPECT_EQ(read.ranks, 1);
  EXPECT_TRUE(read.numa_nodes.empty());
  EXPECT_EQ(read.host_numa_nodes, 1);
  EXPECT_EQ(DescribeReadBandwidth(read).find("NUMA"), std::string::npos);
}

TEST(ProcessReadBandwidthTest, TwoNodesEachAloneThenTogether) {
  const int threads = kernels::CpuKernelThreads();
  const std::vector<int> cpus = KernelCpus();
  if (threads < 2 || cpus.size() < 2) GTEST_SKIP() << "needs two kernel threads on two cores";
  // Two nodes laid over this host: the first core, and the others.
  const std::vector<NumaNode> nodes = {{0, {cpus[0]}}, {3, {cpus.begin() + 1, cpus.end()}}};
  const ReadBandwidth read = MeasureProcessReadBandwidth(threads, kernels::CpuVectorPath(), nodes);
  ASSERT_EQ(read.numa_nodes.size(), 2u);
  EXPECT_EQ(read.host_numa_nodes, 2);
  EXPECT_EQ(read.numa_nodes[0].node, 0);
  EXPECT_EQ(read.numa_nodes[1].node, 3);
  EXPECT_EQ(read.numa_nodes[0].threads + read.numa_nodes[1].threads, threads);
  EXPECT_GT(read.numa_nodes[0].bytes_per_second, 0);
  EXPECT_GT(read.numa_nodes[1].bytes_per_second, 0);
  // The figure is all readers at once.
  EXPECT_EQ(read.threads, threads);
  EXPECT_GT(read.bytes_per_second, 0);
  const std::string described = DescribeReadBandwidth(read);
  EXPECT_NE(described.find("NUMA nodes 0, 3 of the host's 2"), std::string::npos) << described;
  EXPECT_NE(described.find("node 3 "), std::string::npos) << described;
}

TEST(ProcessReadBandwidthTest, ReadersOnOneOfTwoNodes) {
  // The kernel threads' cores all on node 0; node 1 holds none of them.
  const std::vector<NumaNode> nodes = {{0, KernelCpus()}, {1, {1 << 19}}};
  const int threads = kernels::CpuKernelThreads();
  const ReadBandwidth read = MeasureProcessReadBandwidth(threads, kernels::CpuVectorPath(), nodes);
  ASSERT_EQ(read.numa_nodes.size(), 1u);
  EXPECT_EQ(read.numa_nodes[0].node, 0);
  EXPECT_EQ(read.numa_nodes[0].threads, threads);
  // The node's figure is the limit: measured once.
  EXPECT_EQ(read.numa_nodes[0].bytes_per_second, read.bytes_per_second);
  EXPECT_EQ(read.host_numa_nodes, 2);
  EXPECT_NE(DescribeReadBandwidth(read).find("on NUMA node 0 of the host's 2"), std::string::npos);
}

}  // namespace
}  // namespace tessera::launcher
