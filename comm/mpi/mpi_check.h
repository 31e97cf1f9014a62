#ifndef TESSERA_COMM_MPI_MPI_CHECK_H_
#define TESSERA_COMM_MPI_MPI_CHECK_H_

// MPI member of the checking macro family (runtime/core/check.h). Communicators set
// MPI_ERRORS_RETURN so that failures reach these checks instead of aborting the job.

#include <mpi.h>

#include <string>

#include "absl/status/status.h"
#include "runtime/core/check.h"

namespace tessera {

struct MpiCall {
  using Code = int;
  static bool Ok(Code code) { return code == MPI_SUCCESS; }
  static std::string Describe(Code code) {
    char text[MPI_MAX_ERROR_STRING] = {};
    int length = 0;
    if (MPI_Error_string(code, text, &length) != MPI_SUCCESS)
      return "MPI error " + std::to_string(code);
    return std::string(text, static_cast<size_t>(length));
  }
  static absl::StatusCode StatusCode(Code code) {
    int error_class = code;
    MPI_Error_class(code, &error_class);
    switch (error_class) {
      case MPI_ERR_COUNT:
      case MPI_ERR_TYPE:
      case MPI_ERR_ROOT:
      case MPI_ERR_RANK:
      case MPI_ERR_ARG:
      case MPI_ERR_OP:
      case MPI_ERR_TRUNCATE:
        return absl::StatusCode::kInvalidArgument;
      case MPI_ERR_NO_MEM:
        return absl::StatusCode::kResourceExhausted;
      default:
        return absl::StatusCode::kInternal;
    }
  }
};

}  // namespace tessera

#define TESSERA_MPI_CHECK(expr) TESSERA_CALL_CHECK(MpiCall, expr)

#endif  // TESSERA_COMM_MPI_MPI_CHECK_H_
