#ifndef TESSERA_KERNELS_CPU_CPU_AFFINITY_H_
#define TESSERA_KERNELS_CPU_CPU_AFFINITY_H_

// How many kernel threads a process runs, and on which cores: the rule behind
// CpuKernelThreads() (kernels/cpu/parallel.h).
//
// A rank may run only on the cores of its affinity mask (what mpirun --bind-to, srun
// --cpu-bind or taskset gave it). Those cores are divided among the local ranks whose masks
// overlap it; when the mask is the rank's alone, each pool thread is pinned to its own core
// of it. Linux only for masks and pinning; elsewhere every core counts as allowed and
// nothing is pinned.
//
// Environment:
//   TESSERA_CPU_THREADS=N   N threads, whatever the mask (an override; may exceed the mask)
//   TESSERA_PIN_THREADS=0   never pin threads

#include <string>
#include <vector>

namespace tessera::kernels {

// This process's place among the job's processes on its node.
struct LocalRanks {
  int rank = 0;
  int size = 1;
  // The launcher whose variables gave them: "openmpi", "pmix", "slurm", or "none" (then
  // rank 0 of 1).
  std::string source = "none";
};

// From the environment, the first launcher that set both values: Open MPI
// (OMPI_COMM_WORLD_LOCAL_RANK, OMPI_COMM_WORLD_LOCAL_SIZE), PMIx (PMIX_LOCAL_RANK,
// PMIX_LOCAL_SIZE), Slurm (SLURM_LOCALID with SLURM_NTASKS_PER_NODE, or else this node's
// entry of SLURM_STEP_TASKS_PER_NODE such as "2(x3),1", indexed by SLURM_NODEID). Values
// that do not parse, or a rank outside [0, size), are skipped.
LocalRanks LocalRanksFromEnvironment();

// The cores this process may run on (sched_getaffinity), ascending; every online core when
// the mask cannot be read.
std::vector<int> AllowedCpus();

// Cores online on this machine (at least 1).
int NodeCpus();

// "0-3,8,10-11".
std::string FormatCpuList(const std::vector<int>& cpus);

struct CpuThreadInputs {
  int allowed_cpus = 1;  // cores in this process's mask
  int node_cpus = 1;     // cores online on the node
  int local_ranks = 1;   // ranks on this node: the job's, or every job's (SetRanksSharingCpus)
  // Local ranks whose masks overlap this one, this one included, when known (the launcher
  // exchanges masks: SetRanksSharingCpus); 0: estimated, as if every local rank had a mask
  // of this size and the masks tiled the node: ceil(local_ranks * allowed / node), within
  // [1, local_ranks].
  int ranks_sharing = 0;
  int override_threads = 0;  // TESSERA_CPU_THREADS; 0 when unset
  bool pin_allowed = true;   // false when TESSERA_PIN_THREADS=0
};

struct CpuThreadPlan {
  int threads = 1;        // kernel threads, the calling thread included
  int ranks_sharing = 1;  // the local ranks this one divides its mask with
  bool pin = false;       // pin each pool thread to its own core of the mask
};

// The rule: threads = override when set, else max(1, allowed / ranks_sharing), so never
// more threads than allowed cores. Pinned only when no other rank shares the mask, pinning
// is allowed, and there are at least 2 threads and no more threads than cores.
CpuThreadPlan PlanCpuThreads(const CpuThreadInputs& in);

// What this process runs: its mask, the inputs read from the environment and the plan.
// Fixed at the first call (of this or CpuKernelThreads()); thread-safe.
struct CpuSetup {
  std::vector<int> cpus;  // the mask, ascending
  CpuThreadInputs inputs;
  LocalRanks local;
  CpuThreadPlan plan;
};
const CpuSetup& CurrentCpuSetup();

// Tells the rule how many local ranks share this process's cores (counted exactly by the
// launcher, which sees every rank's mask), and, when other jobs run on the node too
// (comm/node_share.h), how many ranks all of them run there (0: only this job's, from the
// environment). Must come before the first kernel; returns false, and changes nothing, once
// the setup is fixed.
bool SetRanksSharingCpus(int ranks, int node_ranks = 0);

// What is wrong with this setup, as one sentence that names the fix; empty when nothing is.
// Wrong, in this order: a rank bound to fewer cores than its fair share of the node (node
// cores / local ranks); several kernel threads on one core (TESSERA_CPU_THREADS); more local
// ranks sharing the mask than it has cores (oversubscription: the fix is fewer ranks on the
// node when it has fewer cores than ranks, else cores of each rank's own). `slurm`: the job
// was started by srun (the fix names srun's flags rather than mpirun's).
std::string CpuSetupProblem(const CpuSetup& setup, bool slurm);

// "cores 0-3 (4 of 8 on the node, 2 local ranks share them), 2 kernel threads, pinned".
std::string DescribeCpuSetup(const CpuSetup& setup);

// Pins the calling thread to `cpu`; false if the system refuses.
bool PinCurrentThread(int cpu);

}  // namespace tessera::kernels

#endif  // TESSERA_KERNELS_CPU_CPU_AFFINITY_H_
