#include "launcher/process.h"

#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "comm/mpi/mpi_runtime.h"
#include "runtime/core/check.h"
#include "runtime/core/status_macros.h"

namespace tessera::launcher {

absl::StatusOr<MpiJob> StartMpiJob(int* argc, char*** argv, absl::Duration timeout, bool validate) {
  MpiJob job;
  TESSERA_ASSIGN_OR_RETURN(job.runtime, comm::MpiRuntime::Initialize(argc, argv));
  TESSERA_ASSIGN_OR_RETURN(comm::CommOptions options, comm::CommOptions::FromEnvironment());
  options.timeout = timeout;
  options.validate = options.validate || validate;
  TESSERA_ASSIGN_OR_RETURN(job.world, comm::MpiCommunicator::CreateWorld(options));
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
