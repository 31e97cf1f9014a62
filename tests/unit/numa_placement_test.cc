// Tests of launcher/numa_placement.h: which NUMA node's memory a rank prefers, which cores it
// keeps near its GPU or as its slot of a shared node, on hosts of two nodes written as sysfs
// trees; and the system calls that apply them, for real, on this host's node 0.

#include "launcher/numa_placement.h"

#include <sched.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_affinity.h"
#include "launcher/numa_nodes.h"
#include "tests/unit/status_test_util.h"

namespace tessera::launcher {
namespace {

using ::tessera::testing::IsError;

// Two-socket hosts as sysfs lists them, read through ReadNumaNodes like the real one.
class FakeHost : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = std::filesystem::path(::testing::TempDir()) /
            ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(root_);
  }
  void TearDown() override { std::filesystem::remove_all(root_); }

  // `cpulists[i]` is node i's cpulist file.
  std::vector<NumaNode> Host(const std::vector<std::string>& cpulists) {
    for (size_t i = 0; i < cpulists.size(); ++i) {
      const std::filesystem::path dir = root_ / ("node" + std::to_string(i));
      std::filesystem::create_directories(dir);
      std::ofstream(dir / "cpulist") << cpulists[i] << "\n";
    }
    return ReadNumaNodes(root_.string());
  }

  std::filesystem::path root_;
};

std::vector<int> Range(int first, int last) {
  std::vector<int> cpus;
  for (int cpu = first; cpu <= last; ++cpu) cpus.push_back(cpu);
  return cpus;
}

TEST_F(FakeHost, MemoryGoesToTheOneNodeOfTheCores) {
  // Hyperthreads interleaved as on many servers: node 0 holds 0-3 and 8-11.
  const std::vector<NumaNode> nodes = Host({"0-3,8-11", "4-7,12-15"});
  ASSERT_EQ(nodes.size(), 2u);
  EXPECT_EQ(PreferredMemoryNode(nodes, {0, 1, 2, 3, 8, 9, 10, 11}), 0);  // --bind-to numa
  EXPECT_EQ(PreferredMemoryNode(nodes, {13}), 1);                        // --bind-to core
  // Spanning both: no node is right for every thread (NumaSpanProblem warns).
  EXPECT_EQ(PreferredMemoryNode(nodes, Range(0, 15)), -1);
  EXPECT_EQ(PreferredMemoryNode(nodes, {3, 4}), -1);
  // Cores sysfs puts on no node, and a host of one node: nothing to choose.
  EXPECT_EQ(PreferredMemoryNode(nodes, {40}), -1);
  EXPECT_EQ(PreferredMemoryNode(nodes, {}), -1);
  EXPECT_EQ(PreferredMemoryNode({{0, Range(0, 15)}}, Range(0, 3)), -1);
  EXPECT_EQ(PreferredMemoryNode({}, {0}), -1);
}

TEST_F(FakeHost, GpuRankKeepsTheCoresOfItsGpusNode) {
  const std::vector<NumaNode> nodes = Host({"0-7", "8-15"});
  // Unbound (mpirun --bind-to none): the GPU's node only.
  GpuHostPlacement near = PlaceNearGpu(nodes, Range(0, 15), 1, 5);
  EXPECT_EQ(near.cpus, Range(8, 15));
  EXPECT_EQ(near.problem, "");
  // Its memory then follows its cores to the GPU's node.
  EXPECT_EQ(PreferredMemoryNode(nodes, near.cpus), 1);
  // A mask across both nodes keeps only its part on the GPU's node.
  near = PlaceNearGpu(nodes, {6, 7, 8, 9}, 0, 0);
  EXPECT_EQ(near.cpus, (std::vector<int>{6, 7}));
  // Already there: nothing to change.
  near = PlaceNearGpu(nodes, Range(8, 11), 1, 4);
  EXPECT_TRUE(near.cpus.empty());
  EXPECT_EQ(near.problem, "");
  // Unknown node (a VM's -1), a node sysfs does not list, one node: nothing to change.
  for (const GpuHostPlacement& none :
       {PlaceNearGpu(nodes, Range(0, 15), -1, 0), PlaceNearGpu(nodes, Range(0, 15), 3, 0),
        PlaceNearGpu({{0, Range(0, 15)}}, Range(0, 15), 0, 0)}) {
    EXPECT_TRUE(none.cpus.empty());
    EXPECT_EQ(none.problem, "");
  }
  // Bound by someone else to the other socket: left so, and named with its fix.
  near = PlaceNearGpu(nodes, Range(0, 7), 1, 6);
  EXPECT_TRUE(near.cpus.empty());
  EXPECT_EQ(near.problem,
            "GPU 6 is on NUMA node 1 but this rank may run only on cores 0-7, none of them on "
            "that node: its host threads and pinned buffers are a socket away from the GPU; "
            "start it with mpirun --bind-to none (Tessera then binds each rank to its GPU's "
            "node) or srun --cpu-bind=none");
}

TEST(NodeBindingTest, ParsesWhatTheLauncherWrites) {
  for (const char* text : {"numa", "core:1", "core:12", "none"}) {
    ASSERT_OK_AND_ASSIGN(NodeBinding binding, ParseNodeBinding(text));
    EXPECT_EQ(FormatNodeBinding(binding), text);
  }
  ASSERT_OK_AND_ASSIGN(NodeBinding unset, ParseNodeBinding(""));
  EXPECT_EQ(unset.kind, NodeBinding::Kind::kNone);
  for (const char* text : {"socket", "core", "core:", "core:0", "core:-2", "core:2x", "NUMA"}) {
    EXPECT_TRUE(IsError(ParseNodeBinding(text), absl::StatusCode::kInvalidArgument,
                        {"TESSERA_NODE_BIND", text}))
        << text;
  }
}

// Every slot's cores, checking that no two slots share one.
std::vector<std::vector<int>> AllSlots(const std::vector<NumaNode>& nodes,
                                       const std::vector<int>& mask, const NodeBinding& binding,
                                       int slots) {
  std::vector<std::vector<int>> all;
  std::set<int> taken;
  for (int slot = 0; slot < slots; ++slot) {
    all.push_back(SlotCpus(nodes, mask, binding, slot, slots));
    for (int cpu : all.back()) EXPECT_TRUE(taken.insert(cpu).second) << "cpu " << cpu << " twice";
  }
  return all;
}

TEST_F(FakeHost, JobsSharingANodeGetDisjointDomains) {
  const std::vector<NumaNode> nodes = Host({"0-3,8-11", "4-7,12-15"});
  const NodeBinding numa{NodeBinding::Kind::kNuma, 0};
  // The cpu backend's two groups of tp 1 on a node of two domains: one domain each.
  EXPECT_EQ(
      AllSlots(nodes, Range(0, 15), numa, 2),
      (std::vector<std::vector<int>>{{0, 1, 2, 3, 8, 9, 10, 11}, {4, 5, 6, 7, 12, 13, 14, 15}}));
  // Four slots on two domains: each domain's two slots halve it, never straddling.
  EXPECT_EQ(AllSlots(nodes, Range(0, 15), numa, 4),
            (std::vector<std::vector<int>>{
                {0, 1, 2, 3}, {8, 9, 10, 11}, {4, 5, 6, 7}, {12, 13, 14, 15}}));
  // Three slots on two domains: two on the first, one on the second.
  EXPECT_EQ(
      AllSlots(nodes, Range(0, 15), numa, 3),
      (std::vector<std::vector<int>>{{0, 1, 2, 3}, {8, 9, 10, 11}, {4, 5, 6, 7, 12, 13, 14, 15}}));
  // One slot on a host of four domains takes them all; two take two each.
  const std::vector<NumaNode> four = {{0, {0, 1}}, {1, {2, 3}}, {2, {4, 5}}, {3, {6, 7}}};
  EXPECT_EQ(AllSlots(four, Range(0, 7), numa, 1), (std::vector<std::vector<int>>{Range(0, 7)}));
  EXPECT_EQ(AllSlots(four, Range(0, 7), numa, 2),
            (std::vector<std::vector<int>>{Range(0, 3), Range(4, 7)}));
  // Only the mask's cores are divided (a cgroup that hides some).
  EXPECT_EQ(AllSlots(nodes, {0, 1, 4, 5}, numa, 2),
            (std::vector<std::vector<int>>{{0, 1}, {4, 5}}));
  // A host of one node: its cores in equal parts.
  EXPECT_EQ(AllSlots({{0, Range(0, 5)}}, Range(0, 5), numa, 3),
            (std::vector<std::vector<int>>{{0, 1}, {2, 3}, {4, 5}}));
  EXPECT_EQ(AllSlots({}, Range(0, 3), numa, 2), (std::vector<std::vector<int>>{{0, 1}, {2, 3}}));
}

TEST_F(FakeHost, JobsSharingANodeGetDisjointCores) {
  const std::vector<NumaNode> nodes = Host({"0-3,8-11", "4-7,12-15"});
  // --bind-to core --cores-per-rank 3: by NUMA node, so a slot straddles only where it must.
  const NodeBinding cores{NodeBinding::Kind::kCores, 3};
  EXPECT_EQ(AllSlots(nodes, Range(0, 15), cores, 4),
            (std::vector<std::vector<int>>{{0, 1, 2}, {3, 8, 9}, {10, 11, 4}, {5, 6, 7}}));
  // Past the node's last core: nothing of its own (the rank keeps its mask, and warns).
  EXPECT_EQ(SlotCpus(nodes, Range(0, 15), cores, 5, 6), std::vector<int>{});
  EXPECT_EQ(SlotCpus(nodes, Range(0, 15), cores, 4, 6), (std::vector<int>{12, 13, 14}));
}

TEST(SlotCpusTest, NothingToDoIsEmpty) {
  const std::vector<NumaNode> nodes = {{0, {0, 1}}, {1, {2, 3}}};
  EXPECT_TRUE(SlotCpus(nodes, Range(0, 3), NodeBinding{}, 0, 2).empty());
  const NodeBinding numa{NodeBinding::Kind::kNuma, 0};
  EXPECT_TRUE(SlotCpus(nodes, Range(0, 3), numa, 2, 2).empty());
  EXPECT_TRUE(SlotCpus(nodes, Range(0, 3), numa, -1, 2).empty());
  EXPECT_TRUE(SlotCpus(nodes, Range(0, 3), numa, 0, 0).empty());
}

// The system calls, on this host. set_mempolicy and sched_setaffinity change the calling
// thread only (and the threads it starts), so each test runs them on a thread of its own and
// leaves the test binary as it was.
template <typename Body>
void OnOwnThread(Body body) {
  std::thread thread(body);
  thread.join();
}

// The system refuses NUMA calls in some containers (seccomp without CAP_SYS_NICE): the
// placement then warns and goes on, and these tests have nothing to measure.
bool Refused(const absl::Status& status) {
  return status.code() == absl::StatusCode::kFailedPrecondition;
}

TEST(NumaSystemTest, PreferNodeZeroAndFindTheTouchedPageThere) {
  const std::vector<NumaNode> nodes = ReadNumaNodes();
  if (nodes.empty() || nodes[0].id != 0) GTEST_SKIP() << "this host lists no NUMA node 0";
  bool refused = false;
  OnOwnThread([&] {
    ASSERT_OK_AND_ASSIGN(MemoryPolicy before, CurrentMemoryPolicy());
    EXPECT_EQ(before.mode, "default");
    EXPECT_EQ(before.node, -1);
    const absl::Status set = PreferMemoryNode(0);
    if (Refused(set)) {
      refused = true;
      return;
    }
    ASSERT_TRUE(set.ok()) << set;
    ASSERT_OK_AND_ASSIGN(MemoryPolicy after, CurrentMemoryPolicy());
    EXPECT_EQ(after.mode, "preferred");
    EXPECT_EQ(after.node, 0);
    // A page allocated and touched after the call, on a thread started after it (as the
    // kernel threads and weight loaders are), is on node 0.
    OnOwnThread([] {
      ASSERT_OK_AND_ASSIGN(MemoryPolicy inherited, CurrentMemoryPolicy());
      EXPECT_EQ(inherited.node, 0);
      constexpr size_t kBytes = 4 << 20;
      std::unique_ptr<char[]> buffer(new char[kBytes]);
      std::memset(buffer.get(), 1, kBytes);
      for (size_t offset : {size_t{0}, kBytes / 2, kBytes - 1}) {
        ASSERT_OK_AND_ASSIGN(int node, NodeOfPage(buffer.get() + offset));
        EXPECT_EQ(node, 0) << offset;
      }
    });
  });
  if (refused) GTEST_SKIP() << "set_mempolicy is refused here";
  ASSERT_OK_AND_ASSIGN(MemoryPolicy untouched, CurrentMemoryPolicy());
  EXPECT_EQ(untouched.mode, "default");  // the test's own thread kept its policy
}

TEST(NumaSystemTest, ErrorsNameTheCall) {
  EXPECT_TRUE(IsError(PreferMemoryNode(-1), absl::StatusCode::kInvalidArgument, {"-1"}));
  // A node this host lacks: the kernel refuses it (EINVAL), and the error names the call.
  const absl::Status absent = PreferMemoryNode(1000);
  if (Refused(absent)) GTEST_SKIP() << absent;
  EXPECT_TRUE(IsError(absent, absl::StatusCode::kInvalidArgument, {"set_mempolicy", "node 1000"}));
  EXPECT_TRUE(IsError(RestrictProcessCpus({}), absl::StatusCode::kInvalidArgument, {"no CPU"}));
}

TEST(NumaSystemTest, RestrictingTheProcessReachesItsOtherThreads) {
  const std::vector<int> allowed = kernels::AllowedCpus();
  // Run as a child process: the restriction is process-wide by design.
  const pid_t child = fork();
  ASSERT_GE(child, 0) << std::strerror(errno);
  if (child == 0) {
    // A thread that runs already, then the restriction, then a check from that thread.
    std::atomic<int> stage{0};
    std::vector<int> seen;
    std::thread other([&] {
      stage = 1;
      while (stage.load() != 2) std::this_thread::yield();
      seen = kernels::AllowedCpus();
      stage = 3;
    });
    while (stage.load() != 1) std::this_thread::yield();
    const absl::Status restricted = RestrictProcessCpus({allowed.back()});
    stage = 2;
    other.join();
    const bool ok = restricted.ok() && seen == std::vector<int>{allowed.back()} &&
                    kernels::AllowedCpus() == std::vector<int>{allowed.back()};
    _exit(ok ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "a running thread kept its mask after RestrictProcessCpus";
}

}  // namespace
}  // namespace tessera::launcher
