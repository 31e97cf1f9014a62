#ifndef TESSERA_COMM_MPI_MPI_COMMUNICATOR_H_
#define TESSERA_COMM_MPI_MPI_COMMUNICATOR_H_

#include <mpi.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "comm/communicator.h"
#include "comm/mpi/mpi_operation.h"

namespace tessera::comm {

class MpiWork;

// The host-memory backend: collectives over MPI on CPU tensors, complete on return.
//
// Every operation is non-blocking underneath and waited for by polling, which is what gives
// it a deadline. All-reduce runs Tessera's own algorithms over point-to-point messages
// (mpi_operation.h), which keep pace with MPI's blocking MPI_Allreduce where its
// non-blocking MPI_Iallreduce does not; the other collectives use MPI's non-blocking calls. Each
// communicator holds two MPI communicators: the data one and a control one for validation
// signatures and for the arrival check that runs when a deadline nears: the waiting rank asks every
// peer which collective it is in; peers answer while they wait in a collective of their own; the
// ranks that do not answer, or are elsewhere, are the ones named in the error.
class MpiCommunicator final : public Communicator {
 public:
  // The world group, over a duplicate of MPI_COMM_WORLD. MPI must be initialized
  // (MpiRuntime). Collective over the world.
  static absl::StatusOr<std::unique_ptr<MpiCommunicator>> CreateWorld(CommOptions options);
  ~MpiCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }
  Device device() const override { return Device::Cpu(); }
  const std::vector<int>& world_ranks() const override { return world_ranks_; }
  const CommOptions& options() const { return options_; }

  absl::StatusOr<std::unique_ptr<Work>> Start(CollectiveBatch batch, Stream& stream) override;
  absl::Status Send(const Tensor& buffer, int peer, Stream& stream) override;
  absl::Status Recv(Tensor& buffer, int peer, Stream& stream) override;
  absl::Status Barrier() override;
  absl::StatusOr<std::unique_ptr<Communicator>> Split(int color, int key,
                                                      std::string name) override;

  // The MPI communicator the data moves on, for code that compares with raw MPI.
  MPI_Comm native_handle() const { return comm_; }

 private:
  friend class MpiWork;
  struct Pending;  // what a rank is waiting for: requests, signature, description

  MpiCommunicator(MPI_Comm comm, MPI_Comm control, std::string name, CommOptions options);

  absl::Status CheckUsable() const;
  absl::Status PointToPoint(CollectiveKind kind, const Tensor& buffer, int peer, Stream& stream);
  absl::Status ExchangeSignatures(const std::vector<OpSignature>& signatures);
  absl::StatusOr<std::unique_ptr<MpiOperation>> Post(const CollectiveOp& op, uint64_t sequence,
                                                     MpiWork& work);
  std::unique_ptr<ScratchBuffer> AcquireScratch();
  void ReleaseScratch(std::unique_ptr<ScratchBuffer> scratch);
  // Polls `pending` until complete or its deadline; on expiry runs the arrival check and
  // fails the communicator. With `once`, polls a single time and reports completion.
  absl::StatusOr<bool> Progress(Pending& pending, bool once);
  void AnswerArrivalQueries();
  absl::Status TimeOut(Pending& pending);
  absl::Status Fail(absl::Status status);
  // "rank 1 (world 3, node-b)".
  std::string RankLabel(int rank) const;

  MPI_Comm comm_;
  MPI_Comm control_;
  std::string name_;
  CommOptions options_;
  int rank_ = 0;
  int size_ = 1;
  std::vector<int> world_ranks_;
  // Host of every world rank, learnt when the world communicator is made; shared by splits.
  std::shared_ptr<const std::vector<std::string>> world_hosts_;
  uint64_t next_sequence_ = 0;
  const Pending* waiting_ = nullptr;  // set while polling, read when answering queries
  std::chrono::steady_clock::time_point next_answer_;  // next look for arrival queries
  absl::Status failure_;                               // sticky once set
  std::vector<std::unique_ptr<ScratchBuffer>> free_scratch_;
};

}  // namespace tessera::comm

#endif  // TESSERA_COMM_MPI_MPI_COMMUNICATOR_H_
