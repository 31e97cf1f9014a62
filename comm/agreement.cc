#include "comm/agreement.h"

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "runtime/core/status_macros.h"
#include "runtime/core/stream.h"
#include "runtime/core/tensor.h"

namespace tessera::comm {

absl::Status AgreeOnStatus(Communicator& group, const absl::Status& mine, absl::string_view doing) {
  int32_t failed = mine.ok() ? 0 : 1;
  Tensor flag = Tensor::Wrap(&failed, DType::kI32, {1});
  Stream cpu = Stream::Cpu();
  TESSERA_RETURN_IF_ERROR(group.AllReduce(flag, ReduceOp::kMax, cpu));
  if (!mine.ok()) return mine;
  if (failed != 0) {
    return absl::AbortedError(absl::StrCat("another rank of ", group.name(), " failed ", doing));
  }
  return absl::OkStatus();
}

}  // namespace tessera::comm
