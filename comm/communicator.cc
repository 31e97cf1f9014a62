#include "comm/communicator.h"

#include <chrono>

namespace tessera::comm {

absl::Status Communicator::Run(CollectiveBatch batch, Stream& stream) {
  absl::StatusOr<std::unique_ptr<Work>> work = Start(std::move(batch), stream);
  if (!work.ok()) return work.status();
  return (*work)->Wait();
}

absl::Status Communicator::AllReduce(Tensor& buffer, ReduceOp op, Stream& stream) {
  if (!allreduce_observer_) return Run(std::move(CollectiveBatch().AllReduce(buffer, op)), stream);
  auto start = std::chrono::steady_clock::now();
  absl::Status status = Run(std::move(CollectiveBatch().AllReduce(buffer, op)), stream);
  if (status.ok()) {
    allreduce_observer_(
        static_cast<int64_t>(buffer.nbytes()),
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return status;
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
