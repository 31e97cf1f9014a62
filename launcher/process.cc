#include "launcher/process.h"

#include <mpi.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "comm/mpi/mpi_runtime.h"
#include "comm/node_share.h"
#include "comm/topology.h"
#include "kernels/cpu/cpu_affinity.h"
#include "launcher/numa_nodes.h"
#include "launcher/numa_placement.h"
#include "runtime/core/check.h"
#include "runtime/core/gpu_info.h"
#include "runtime/core/status_macros.h"
#include "runtime/serve/log.h"

namespace tessera::launcher {
namespace {

bool Slurm(const kernels::LocalRanks& local) {
  return local.source == "slurm" || std::getenv("SLURM_JOB_ID") != nullptr;
}

// Restricts the process to `cpus` for `why`; a refusal becomes a problem to print. Whether
// it did.
bool Restrict(const std::vector<int>& cpus, const std::string& why,
              std::vector<std::string>& problems) {
  if (absl::Status restricted = RestrictProcessCpus(cpus); !restricted.ok()) {
    problems.push_back(absl::StrCat("cannot keep to cores ", kernels::FormatCpuList(cpus), " (",
                                    why, "): ", restricted.message()));
    return false;
  }
  return true;
}

// The memory policy of a rank whose cores are `cpus` (launcher/numa_placement.h), as the
// start line tells it; a failure to set it becomes a problem.
std::string PlaceMemory(const std::vector<NumaNode>& numa, const std::vector<int>& cpus,
                        std::vector<std::string>& problems) {
  if (numa.size() < 2) return "one NUMA node";
  const int node = PreferredMemoryNode(numa, cpus);
  if (node < 0) return "memory where first touched (its cores span NUMA nodes)";
  const char* policy = std::getenv(kNumaPolicyVariable);
  if (policy != nullptr && std::string_view(policy) == "0") {
    return absl::StrCat("memory policy left alone (", kNumaPolicyVariable, "=0)");
  }
  // A policy set by whoever started the process (numactl, srun --mem-bind) is the user's.
  if (absl::StatusOr<MemoryPolicy> current = CurrentMemoryPolicy();
      current.ok() && current->mode != "default") {
    return absl::StrCat("memory policy ", current->mode,
                        current->node >= 0 ? absl::StrCat(" node ", current->node) : "",
                        " kept as the launcher set it");
  }
  if (absl::Status set = PreferMemoryNode(node); !set.ok()) {
    problems.push_back(absl::StrCat("cannot keep its memory on NUMA node ", node,
                                    ", its cores' node (", set.message(),
                                    "): pages go where they are first touched; run it with "
                                    "numactl --preferred=",
                                    node, ", or set ", kNumaPolicyVariable, "=0 to hide this"));
    return "memory where first touched";
  }
  return absl::StrCat("memory on NUMA node ", node);
}

// Places this rank before any kernel runs or weight loads: its share of the node when
// `tessera launch` runs several jobs on it, the NUMA node of its GPU with kNearGpu, then its
// kernel threads (counting the ranks on this node whose affinity masks overlap this one's,
// itself included, so the threads divide the shared cores exactly: ranks of other jobs on the
// node, `share.node_ranks` of them all together, cannot be asked and are taken to overlap as
// this job's do, unless each rank took a slot of its own), then its memory policy. Prints the
// result: always at TESSERA_LOG=debug, else only as a warning when something is wrong.
// INVALID_ARGUMENT for a bad TESSERA_NODE_BIND.
absl::Status PlaceRank(const comm::NodeShare& share, HostPlacement placement) {
  const char* bind = std::getenv(kNodeBindVariable);
  TESSERA_ASSIGN_OR_RETURN(NodeBinding binding, ParseNodeBinding(bind == nullptr ? "" : bind));
  MPI_Comm node;
  if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) !=
      MPI_SUCCESS) {
    return absl::OkStatus();
  }
  // Ordered by world rank, as Topology numbers the ranks of a host.
  int local_rank = 0, local_size = 1;
  MPI_Comm_rank(node, &local_rank);
  MPI_Comm_size(node, &local_size);
  const std::vector<NumaNode> numa = ReadNumaNodes();
  std::vector<std::string> problems;

  bool own_slot = false;  // bound to cores no other job's rank is bound to
  if (binding.kind != NodeBinding::Kind::kNone && share.node_ranks > 0) {
    const int slot = share.first_slot + local_rank;
    const std::vector<int> cpus =
        SlotCpus(numa, kernels::AllowedCpus(), binding, slot, share.node_ranks);
    if (cpus.empty()) {
      problems.push_back(absl::StrCat("no cores of its own as slot ", slot, " of the node's ",
                                      share.node_ranks, " (", kNodeBindVariable, "=",
                                      FormatNodeBinding(binding),
                                      "): it shares the node's cores with the other jobs"));
    } else {
      own_slot = Restrict(cpus, absl::StrCat("its share of the node, slot ", slot), problems);
    }
  }
  if (placement == HostPlacement::kNearGpu) {
    const std::vector<GpuInfo> gpus = ListGpus();
    const int index =
        comm::VisibleGpuOfSlot(share.first_slot, local_rank, static_cast<int>(gpus.size()));
    if (index >= 0) {
      const GpuHostPlacement near =
          PlaceNearGpu(numa, kernels::AllowedCpus(), gpus[index].numa_node, gpus[index].ordinal);
      if (!near.problem.empty()) problems.push_back(near.problem);
      if (!near.cpus.empty()) {
        Restrict(near.cpus, absl::StrCat("the NUMA node of GPU ", gpus[index].ordinal), problems);
      }
    }
  }

  const std::vector<int> cpus = kernels::AllowedCpus();
  int top = cpus.empty() ? 0 : cpus.back(), node_top = 0;
  MPI_Allreduce(&top, &node_top, 1, MPI_INT, MPI_MAX, node);
  const int words = node_top / 64 + 1;
  std::vector<uint64_t> mine(words, 0), all(static_cast<size_t>(words) * local_size, 0);
  for (int cpu : cpus) mine[cpu / 64] |= uint64_t{1} << (cpu % 64);
  MPI_Allgather(mine.data(), words, MPI_UINT64_T, all.data(), words, MPI_UINT64_T, node);
  MPI_Comm_free(&node);
  int sharing = 0;
  for (int rank = 0; rank < local_size; ++rank) {
    bool overlaps = false;
    for (int w = 0; w < words; ++w) overlaps = overlaps || (mine[w] & all[rank * words + w]) != 0;
    sharing += overlaps ? 1 : 0;
  }
  // Other jobs' ranks overlap this one's cores as this job's do, unless each rank took a
  // slot of its own.
  if (share.node_ranks > local_size && !own_slot) {
    sharing = (sharing * share.node_ranks + local_size - 1) / local_size;
  }
  kernels::SetRanksSharingCpus(sharing, share.node_ranks);

  const kernels::CpuSetup& setup = kernels::CurrentCpuSetup();
  const bool slurm = Slurm(setup.local);
  if (std::string problem = kernels::CpuSetupProblem(setup, slurm); !problem.empty()) {
    problems.push_back(std::move(problem));
  }
  if (std::string span = NumaSpanProblem(NumaNodesOf(numa, setup.cpus), slurm); !span.empty()) {
    problems.push_back(std::move(span));
  }
  const std::string memory = PlaceMemory(numa, setup.cpus, problems);
  if (problems.empty() && !serve::LogEnabled(serve::LogLevel::kDebug)) return absl::OkStatus();
  ProcessIdentity id = GetProcessIdentity();
  std::fprintf(stderr, "tessera: %srank %d on %s: %s, %s%s%s\n",
               problems.empty() ? "" : "warning: ", id.rank, id.host.c_str(),
               kernels::DescribeCpuSetup(setup).c_str(), memory.c_str(),
               problems.empty() ? "" : "; ", absl::StrJoin(problems, "; ").c_str());
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<MpiJob> StartMpiJob(int* argc, char*** argv, absl::Duration timeout, bool validate,
                                   HostPlacement placement) {
  MpiJob job;
  TESSERA_ASSIGN_OR_RETURN(job.runtime, comm::MpiRuntime::Initialize(argc, argv));
  job.runtime->set_shutdown_timeout(timeout);
  TESSERA_ASSIGN_OR_RETURN(comm::CommOptions options, comm::CommOptions::FromEnvironment());
  options.timeout = timeout;
  options.validate = options.validate || validate;
  TESSERA_ASSIGN_OR_RETURN(job.world, comm::MpiCommunicator::CreateWorld(options));
  TESSERA_ASSIGN_OR_RETURN(comm::NodeShare share, comm::NodeShare::FromEnvironment());
  TESSERA_RETURN_IF_ERROR(PlaceRank(share, placement));
  return job;
}

std::optional<int> ParseOrExit(FlagSet& flags, const std::vector<std::string>& args) {
  bool help = false;
  absl::Status parsed = flags.Parse(args, &help);
  if (help) {
    std::fputs(flags.Usage().c_str(), stdout);
    return kExitOk;
  }
  if (!parsed.ok()) {
    std::fprintf(stderr, "%s\n", std::string(parsed.message()).c_str());
    return kExitUsage;
  }
  if (const char* parse_only = std::getenv("TESSERA_PARSE_ONLY");
      parse_only != nullptr && std::string_view(parse_only) == "1") {
    std::fputs("tessera: command line parses\n", stdout);
    return kExitOk;
  }
  return std::nullopt;
}

int ReportExit(const absl::Status& status) {
  if (status.ok()) return kExitOk;
  ProcessIdentity id = GetProcessIdentity();
  std::string where = id.rank >= 0 ? absl::StrCat(" (rank ", id.rank, " on ", id.host, ")") : "";
  std::fprintf(stderr, "tessera: error%s: %s\n", where.c_str(), status.ToString().c_str());
  std::fflush(stderr);
  if (comm::AnyCommunicatorFailed()) MPI_Abort(MPI_COMM_WORLD, kExitFailure);
  return kExitFailure;
}

}  // namespace tessera::launcher
