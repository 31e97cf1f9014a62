#include "launcher/process.h"

#include <mpi.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "comm/mpi/mpi_runtime.h"
#include "comm/node_share.h"
#include "kernels/cpu/cpu_affinity.h"
#include "launcher/numa_nodes.h"
#include "runtime/core/check.h"
#include "runtime/core/status_macros.h"
#include "runtime/serve/log.h"

namespace tessera::launcher {
namespace {

// Counts the ranks on this node whose affinity masks overlap this one's (itself included),
// so the kernel threads divide the shared cores exactly. Ranks of other jobs on the node
// (`node_ranks` of them all together, comm/node_share.h) cannot be asked: they are taken to
// overlap as this job's do. Then prints the setup: always at
// TESSERA_LOG=debug, else only as a warning when the binding starves the rank. Before the
// first kernel runs (the setup is fixed then).
void SetUpCpuThreads(int node_ranks) {
  MPI_Comm node;
  if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) !=
      MPI_SUCCESS) {
    return;
  }
  int local_size = 1;
  MPI_Comm_size(node, &local_size);
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
  if (node_ranks > local_size) sharing = (sharing * node_ranks + local_size - 1) / local_size;
  kernels::SetRanksSharingCpus(sharing);

  const kernels::CpuSetup& setup = kernels::CurrentCpuSetup();
  const bool slurm = setup.local.source == "slurm" || std::getenv("SLURM_JOB_ID") != nullptr;
  std::string problem = kernels::CpuSetupProblem(setup, slurm);
  if (problem.empty()) problem = NumaSpanProblem(NumaNodesOf(ReadNumaNodes(), setup.cpus), slurm);
  if (problem.empty() && !serve::LogEnabled(serve::LogLevel::kDebug)) return;
  ProcessIdentity id = GetProcessIdentity();
  std::fprintf(stderr, "tessera: %srank %d on %s: %s%s%s\n",
               problem.empty() ? "" : "warning: ", id.rank, id.host.c_str(),
               kernels::DescribeCpuSetup(setup).c_str(), problem.empty() ? "" : "; ",
               problem.c_str());
}

}  // namespace

absl::StatusOr<MpiJob> StartMpiJob(int* argc, char*** argv, absl::Duration timeout, bool validate) {
  MpiJob job;
  TESSERA_ASSIGN_OR_RETURN(job.runtime, comm::MpiRuntime::Initialize(argc, argv));
  job.runtime->set_shutdown_timeout(timeout);
  TESSERA_ASSIGN_OR_RETURN(comm::CommOptions options, comm::CommOptions::FromEnvironment());
  options.timeout = timeout;
  options.validate = options.validate || validate;
  TESSERA_ASSIGN_OR_RETURN(job.world, comm::MpiCommunicator::CreateWorld(options));
  TESSERA_ASSIGN_OR_RETURN(comm::NodeShare share, comm::NodeShare::FromEnvironment());
  SetUpCpuThreads(share.node_ranks);
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
