#ifndef TESSERA_COMM_NCCL_NCCL_CHECK_H_
#define TESSERA_COMM_NCCL_NCCL_CHECK_H_

// NCCL member of the checking macro family (runtime/core/check.h).
//
// ncclInProgress is not an error on a non-blocking communicator (ncclConfig_t::blocking = 0):
// it means "accepted, still being carried out", and the caller must poll
// ncclCommGetAsyncError until it reports ncclSuccess before the next NCCL call on that
// communicator. TESSERA_NCCL_CHECK treats it as a failure; calls on non-blocking
// communicators go through TESSERA_NCCL_ASYNC_STATUS instead.

#include <nccl.h>

#include <string>

#include "absl/status/status.h"
#include "runtime/core/check.h"

namespace tessera {

struct NcclCall {
  using Code = ncclResult_t;
  static bool Ok(Code code) { return code == ncclSuccess; }
  // "ncclRemoteError: remote process exited or there was a network error: <last error>".
  // ncclGetLastError is process-wide (its argument is unused), so the detail it adds may
  // belong to another call; it is still the best clue NCCL gives.
  static std::string Describe(Code code) {
    std::string text = std::string(Name(code)) + ": " + ncclGetErrorString(code);
    const char* last = ncclGetLastError(nullptr);
    if (last != nullptr && last[0] != '\0') text += std::string(": ") + last;
    return text;
  }
  static absl::StatusCode StatusCode(Code code) {
    switch (code) {
      case ncclInvalidArgument:
      case ncclInvalidUsage:
        return absl::StatusCode::kInvalidArgument;
      case ncclRemoteError:
      case ncclSystemError:
        return absl::StatusCode::kUnavailable;
      default:
        return absl::StatusCode::kInternal;
    }
  }
  static const char* Name(Code code) {
    switch (code) {
      case ncclSuccess:
        return "ncclSuccess";
      case ncclUnhandledCudaError:
        return "ncclUnhandledCudaError";
      case ncclSystemError:
        return "ncclSystemError";
      case ncclInternalError:
        return "ncclInternalError";
      case ncclInvalidArgument:
        return "ncclInvalidArgument";
      case ncclInvalidUsage:
        return "ncclInvalidUsage";
      case ncclRemoteError:
        return "ncclRemoteError";
      case ncclInProgress:
        return "ncclInProgress";
      default:
        return "ncclResult";
    }
  }
};

// The status of a call on a non-blocking communicator: OK for ncclSuccess and for
// ncclInProgress, which also sets *in_progress (the caller then polls ncclCommGetAsyncError);
// the call's error otherwise.
inline absl::Status NcclAsyncStatus(ncclResult_t code, const char* call, const char* file, int line,
                                    bool* in_progress) {
  if (code == ncclInProgress) {
    *in_progress = true;
    return absl::OkStatus();
  }
  return CheckCall<NcclCall>(code, call, file, line);
}

}  // namespace tessera

#define TESSERA_NCCL_CHECK(expr) TESSERA_CALL_CHECK(NcclCall, expr)

// absl::Status of a call on a non-blocking communicator (see NcclAsyncStatus).
#define TESSERA_NCCL_ASYNC_STATUS(expr, in_progress) \
  (::tessera::NcclAsyncStatus((expr), #expr, __FILE__, __LINE__, (in_progress)))

#endif  // TESSERA_COMM_NCCL_NCCL_CHECK_H_
