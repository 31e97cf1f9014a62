#include "comm/communicator.h"

namespace tessera::comm {

absl::Status Communicator::Run(CollectiveBatch batch, Stream& stream) {
  absl::StatusOr<std::unique_ptr<Work>> work = Start(std::move(batch), stream);
  if (!work.ok()) return work.status();
  return (*work)->Wait();
}

absl::Status Communicator::AllReduce(Tensor& buffer, ReduceOp op, Stream& stream) {
  return Run(std::move(CollectiveBatch().AllReduce(buffer, op)), stream);
}

absl::Status Communicator::AllGather(const Tensor& input, Tensor& output, Stream& stream) {
  return Run(std::move(CollectiveBatch().AllGather(input, output)), stream);
}

absl::Status Communicator::ReduceScatter(const Tensor& input, Tensor& output, ReduceOp op,
                                         Stream& stream) {
  return Run(std::move(CollectiveBatch().ReduceScatter(input, output, op)), stream);
}

absl::Status Communicator::Broadcast(Tensor& buffer, int root, Stream& stream) {
  return Run(std::move(CollectiveBatch().Broadcast(buffer, root)), stream);
}

}  // namespace tessera::comm
