#ifndef TESSERA_RUNTIME_CORE_CHECK_H_
#define TESSERA_RUNTIME_CORE_CHECK_H_

// One checking macro family for every library Tessera calls into (CUDA, cuBLAS, NCCL, MPI).
// A failed call becomes an absl::Status that records the call, the file and line, and the
// host and rank of this process, e.g.
//   INTERNAL: MPI_Iallreduce(...) failed: MPI_ERR_COUNT: invalid count argument
//   [comm/mpi/mpi_communicator.cc:120, host node-a, rank 3]
//
// Each library provides a traits struct in namespace tessera:
//   struct XCall {
//     using Code = <the library's result type>;
//     static bool Ok(Code);
//     static std::string Describe(Code);
//     static absl::StatusCode StatusCode(Code);
//   };
// and a one-line macro, e.g. #define TESSERA_MPI_CHECK(expr) TESSERA_CALL_CHECK(MpiCall, expr).

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace tessera {

// Who this process is, for error messages. Set once MPI has told us our rank; before that
// the rank is reported as unknown.
struct ProcessIdentity {
  std::string host;
  int rank = -1;
};
void SetProcessIdentity(std::string host, int rank);
ProcessIdentity GetProcessIdentity();

// Appends " [file:line, host H, rank R]" to `message` (file relative to the source root).
std::string WithCallSite(absl::string_view message, const char* file, int line);

// The status for a failed library call.
absl::Status LibraryCallError(absl::StatusCode code, absl::string_view call,
                              absl::string_view description, const char* file, int line);

template <typename Traits>
absl::Status CheckCall(typename Traits::Code code, const char* call, const char* file, int line) {
  if (Traits::Ok(code)) return absl::OkStatus();
  return LibraryCallError(Traits::StatusCode(code), call, Traits::Describe(code), file, line);
}

// Prints `message` with the call site and aborts. For broken invariants inside Tessera
// (programming errors), never for bad input.
[[noreturn]] void FailInvariant(const char* condition, absl::string_view message, const char* file,
                                int line);

}  // namespace tessera

// absl::Status of a library call.
#define TESSERA_CALL_STATUS(Traits, expr) \
  (::tessera::CheckCall<::tessera::Traits>((expr), #expr, __FILE__, __LINE__))

// Returns the failure of a library call to the caller.
#define TESSERA_CALL_CHECK(Traits, expr)                                     \
  do {                                                                       \
    ::absl::Status tessera_call_status_ = TESSERA_CALL_STATUS(Traits, expr); \
    if (!tessera_call_status_.ok()) return tessera_call_status_;             \
  } while (0)

// Invariant check: aborts with a message when `cond` is false.
#define TESSERA_CHECK(cond, message)                                             \
  do {                                                                           \
    if (!(cond)) ::tessera::FailInvariant(#cond, (message), __FILE__, __LINE__); \
  } while (0)

#endif  // TESSERA_RUNTIME_CORE_CHECK_H_
