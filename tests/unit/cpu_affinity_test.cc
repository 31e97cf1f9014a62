#include "kernels/cpu/cpu_affinity.h"

#include <gtest/gtest.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "kernels/cpu/parallel.h"

namespace tessera::kernels {
namespace {

// The cores the calling thread may run on.
std::vector<int> ThreadCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  EXPECT_EQ(pthread_getaffinity_np(pthread_self(), sizeof(set), &set), 0);
  std::vector<int> cpus;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (CPU_ISSET(cpu, &set)) cpus.push_back(cpu);
  }
  return cpus;
}

// First in the file: the setup is fixed at the first kernel, before the tests below change
// the environment (they restore it).
TEST(CpuAffinityTest, PoolThreadsFollowThePlan) {
  const CpuSetup& setup = CurrentCpuSetup();
  EXPECT_EQ(setup.cpus, AllowedCpus());
  EXPECT_EQ(CpuKernelThreads(), setup.plan.threads);
  EXPECT_FALSE(SetRanksSharingCpus(2));  // too late: the setup is fixed
  if (setup.inputs.override_threads == 0) {
    EXPECT_LE(CpuKernelThreads(), static_cast<int>(setup.cpus.size()));
  }
  const std::thread::id caller = std::this_thread::get_id();
  std::mutex mutex;
  std::set<std::vector<int>> worker_masks;
  std::atomic<int64_t> done{0};
  for (int round = 0; round < 200; ++round) {
    ParallelFor(
        4096, 1,
        [&](int64_t begin, int64_t end) {
          volatile double sink = 0;
          for (int i = 0; i < 2000; ++i) sink = sink + i;
          done += end - begin;
          if (std::this_thread::get_id() == caller) return;
          std::vector<int> cpus = ThreadCpus();
          std::lock_guard<std::mutex> lock(mutex);
          worker_masks.insert(cpus);
        },
        1);
  }
  EXPECT_EQ(done.load(), 200 * 4096);
  for (const std::vector<int>& mask : worker_masks) {
    if (setup.plan.pin) {
      ASSERT_EQ(mask.size(), 1u);
      EXPECT_NE(mask[0], setup.cpus[0]) << "core 0 of the mask is left to the caller";
    } else {
      EXPECT_EQ(mask, setup.cpus);
    }
  }
  std::printf("setup: %s\n", DescribeCpuSetup(setup).c_str());
}

TEST(CpuAffinityTest, PinCurrentThread) {
  const std::vector<int> cpus = AllowedCpus();
  std::vector<int> seen;
  std::thread t([&] {
    EXPECT_TRUE(PinCurrentThread(cpus.back()));
    seen = ThreadCpus();
  });
  t.join();
  EXPECT_EQ(seen, std::vector<int>{cpus.back()});
  EXPECT_FALSE(PinCurrentThread(-1));
}

// Sets the named variables for one test and restores the environment after it.
class ScopedEnv {
 public:
  ScopedEnv() {
    for (const char* name : kNames) {
      const char* value = getenv(name);
      saved_.push_back(value == nullptr ? nullptr : new std::string(value));
      unsetenv(name);
    }
  }
  ~ScopedEnv() {
    for (size_t i = 0; i < saved_.size(); ++i) {
      if (saved_[i] == nullptr) {
        unsetenv(kNames[i]);
      } else {
        setenv(kNames[i], saved_[i]->c_str(), 1);
        delete saved_[i];
      }
    }
  }
  void Set(const char* name, const char* value) { setenv(name, value, 1); }

 private:
  static constexpr const char* kNames[] = {"OMPI_COMM_WORLD_LOCAL_RANK",
                                           "OMPI_COMM_WORLD_LOCAL_SIZE",
                                           "PMIX_LOCAL_RANK",
                                           "PMIX_LOCAL_SIZE",
                                           "SLURM_LOCALID",
                                           "SLURM_NTASKS_PER_NODE",
                                           "SLURM_STEP_TASKS_PER_NODE",
                                           "SLURM_NODEID"};
  std::vector<std::string*> saved_;
};

void ExpectLocal(const LocalRanks& got, int rank, int size, const std::string& source) {
  EXPECT_EQ(got.rank, rank);
  EXPECT_EQ(got.size, size);
  EXPECT_EQ(got.source, source);
}

TEST(CpuAffinityTest, LocalRanksFromEachLauncher) {
  {
    ScopedEnv env;
    ExpectLocal(LocalRanksFromEnvironment(), 0, 1, "none");
  }
  {
    ScopedEnv env;
    env.Set("OMPI_COMM_WORLD_LOCAL_RANK", "1");
    env.Set("OMPI_COMM_WORLD_LOCAL_SIZE", "4");
    env.Set("PMIX_LOCAL_RANK", "0");
    env.Set("PMIX_LOCAL_SIZE", "2");
    ExpectLocal(LocalRanksFromEnvironment(), 1, 4, "openmpi");  // Open MPI first
  }
  {
    ScopedEnv env;
    env.Set("PMIX_LOCAL_RANK", "3");
    env.Set("PMIX_LOCAL_SIZE", "8");
    ExpectLocal(LocalRanksFromEnvironment(), 3, 8, "pmix");
  }
  {
    ScopedEnv env;
    env.Set("SLURM_LOCALID", "2");
    env.Set("SLURM_NTASKS_PER_NODE", "4");
    env.Set("SLURM_STEP_TASKS_PER_NODE", "7");
    ExpectLocal(LocalRanksFromEnvironment(), 2, 4, "slurm");
  }
  {
    ScopedEnv env;  // 2 tasks on nodes 0-2, 1 on node 3
    env.Set("SLURM_LOCALID", "0");
    env.Set("SLURM_STEP_TASKS_PER_NODE", "2(x3),1");
    env.Set("SLURM_NODEID", "3");
    ExpectLocal(LocalRanksFromEnvironment(), 0, 1, "slurm");
    env.Set("SLURM_NODEID", "2");
    ExpectLocal(LocalRanksFromEnvironment(), 0, 2, "slurm");
    env.Set("SLURM_NODEID", "4");  // past the list
    ExpectLocal(LocalRanksFromEnvironment(), 0, 1, "none");
  }
  {
    ScopedEnv env;  // malformed or inconsistent values fall through to the next launcher
    env.Set("OMPI_COMM_WORLD_LOCAL_RANK", "2");
    env.Set("OMPI_COMM_WORLD_LOCAL_SIZE", "2");  // rank outside [0, size)
    env.Set("PMIX_LOCAL_RANK", "x");
    env.Set("PMIX_LOCAL_SIZE", "2");
    env.Set("SLURM_LOCALID", "1");
    env.Set("SLURM_STEP_TASKS_PER_NODE", "3");
    ExpectLocal(LocalRanksFromEnvironment(), 1, 3, "slurm");
  }
}

CpuThreadPlan Plan(int allowed, int node, int local, int sharing = 0, int override_threads = 0,
                   bool pin = true) {
  CpuThreadInputs in;
  in.allowed_cpus = allowed;
  in.node_cpus = node;
  in.local_ranks = local;
  in.ranks_sharing = sharing;
  in.override_threads = override_threads;
  in.pin_allowed = pin;
  return PlanCpuThreads(in);
}

void ExpectPlan(const CpuThreadPlan& plan, int threads, int sharing, bool pin) {
  EXPECT_EQ(plan.threads, threads);
  EXPECT_EQ(plan.ranks_sharing, sharing);
  EXPECT_EQ(plan.pin, pin);
}

TEST(CpuAffinityTest, ThreadCountRule) {
  // mpirun -np 1, default binding on 2 cores: one core, one thread (it was two).
  ExpectPlan(Plan(1, 2, 1), 1, 1, false);
  // Unbound single rank: every core, pinned.
  ExpectPlan(Plan(2, 2, 1), 2, 1, true);
  // --bind-to none, 2 ranks on 2 cores: both masks are the node; divide, no pinning.
  ExpectPlan(Plan(2, 2, 2), 1, 2, false);
  ExpectPlan(Plan(2, 2, 2, /*sharing=*/2), 1, 2, false);
  // A rank bound to 2 of 8 cores, 4 ranks: its own 2 cores, pinned.
  ExpectPlan(Plan(2, 8, 4), 2, 1, true);
  // 4 ranks bound by NUMA domain (2 domains of 8 cores): 2 ranks share 8 cores.
  ExpectPlan(Plan(8, 16, 4), 4, 2, false);
  // srun without binding: 4 ranks on 64 cores.
  ExpectPlan(Plan(64, 64, 4), 16, 4, false);
  // The launcher's exact count wins over the estimate.
  ExpectPlan(Plan(8, 16, 4, /*sharing=*/1), 8, 1, true);
  // Never more threads than cores, at least one.
  ExpectPlan(Plan(3, 4, 4, /*sharing=*/4), 1, 4, false);
  // TESSERA_CPU_THREADS overrides; no pinning past the mask; TESSERA_PIN_THREADS=0.
  ExpectPlan(Plan(1, 2, 1, 0, /*override=*/2), 2, 1, false);
  ExpectPlan(Plan(8, 8, 1, 0, /*override=*/3), 3, 1, true);
  ExpectPlan(Plan(8, 8, 1, 0, 0, /*pin=*/false), 8, 1, false);
}

CpuSetup MakeSetup(std::vector<int> cpus, int node, int local, int override_threads = 0) {
  CpuSetup setup;
  setup.cpus = cpus;
  setup.inputs.allowed_cpus = static_cast<int>(cpus.size());
  setup.inputs.node_cpus = node;
  setup.inputs.local_ranks = local;
  setup.inputs.override_threads = override_threads;
  setup.plan = PlanCpuThreads(setup.inputs);
  return setup;
}

TEST(CpuAffinityTest, ProblemsNameTheFix) {
  EXPECT_EQ(CpuSetupProblem(MakeSetup({0, 1}, 2, 1), false), "");
  EXPECT_EQ(CpuSetupProblem(MakeSetup({1}, 2, 2), false), "");  // default binding, 2 ranks
  EXPECT_EQ(CpuSetupProblem(MakeSetup({0, 1}, 2, 2), false), "");
  const std::string mpirun = CpuSetupProblem(MakeSetup({0}, 2, 1), false);
  EXPECT_NE(mpirun.find("mpirun --bind-to none"), std::string::npos) << mpirun;
  EXPECT_NE(mpirun.find("--bind-to numa"), std::string::npos) << mpirun;
  const std::string srun = CpuSetupProblem(MakeSetup({0, 1}, 16, 2), true);
  EXPECT_NE(srun.find("srun --cpu-bind=cores --cpus-per-task=8"), std::string::npos) << srun;
  const std::string threads = CpuSetupProblem(MakeSetup({0}, 1, 1, /*override=*/4), false);
  EXPECT_NE(threads.find("4 kernel threads on one core"), std::string::npos) << threads;
  // More local ranks than cores share one mask: oversubscribed. CI's 4 ranks on 2 cores
  // (--bind-to none): the node is too small, so the fix is fewer ranks.
  const std::string crowded = CpuSetupProblem(MakeSetup({0, 1}, 2, 4), false);
  EXPECT_EQ(crowded,
            "4 local ranks share these 2 core(s), so some cores run the kernel threads of "
            "several ranks: the node has 2 cores for 4 ranks; start at most 2 ranks on it "
            "(mpirun --map-by ppr:2:node, or fewer -np)");
  EXPECT_NE(CpuSetupProblem(MakeSetup({0, 1}, 2, 4), true).find("srun --ntasks-per-node=2"),
            std::string::npos);
  // A big enough node whose ranks were all bound to the same 2 cores (counted exactly by the
  // launcher): each rank needs cores of its own.
  CpuSetup overlapping = MakeSetup({0, 1}, 16, 8);
  overlapping.inputs.ranks_sharing = 8;
  overlapping.plan = PlanCpuThreads(overlapping.inputs);
  const std::string own = CpuSetupProblem(overlapping, false);
  EXPECT_NE(own.find("8 local ranks share these 2 core(s)"), std::string::npos) << own;
  EXPECT_NE(own.find("mpirun --map-by slot:PE=2 --bind-to core"), std::string::npos) << own;
  EXPECT_NE(CpuSetupProblem(overlapping, true).find("srun --cpu-bind=cores --cpus-per-task=2"),
            std::string::npos);
  // As many ranks as cores sharing them: one thread each, nothing to say.
  overlapping.inputs.ranks_sharing = 2;
  overlapping.plan = PlanCpuThreads(overlapping.inputs);
  EXPECT_EQ(CpuSetupProblem(overlapping, false), "");
  EXPECT_EQ(DescribeCpuSetup(MakeSetup({0, 1, 2, 3}, 8, 2)),
            "cores 0-3 (4 of 8 on the node, 1 local rank(s) of 2 share them), 4 kernel "
            "thread(s), pinned");
}

TEST(CpuAffinityTest, FormatCpuList) {
  EXPECT_EQ(FormatCpuList({}), "");
  EXPECT_EQ(FormatCpuList({3}), "3");
  EXPECT_EQ(FormatCpuList({0, 1, 2, 3, 8, 10, 11}), "0-3,8,10-11");
}

}  // namespace
}  // namespace tessera::kernels
