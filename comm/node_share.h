#ifndef TESSERA_COMM_NODE_SHARE_H_
#define TESSERA_COMM_NODE_SHARE_H_

// Several MPI jobs on one node (one per replica: launcher/worker_groups.h, tessera launch)
// each see only their own ranks: left alone, local rank 0 of every job would take GPU 0, and
// every job would size its CPU threads as if it had the node to itself. The launcher tells
// each job where it sits among the others with two environment variables:
//   TESSERA_NODE_FIRST_SLOT  slots of this node (GPUs; rank places) taken by earlier jobs:
//                            the job's local rank k uses slot first_slot + k
//   TESSERA_NODE_RANKS       ranks of all the jobs on this node together
// Unset, a job has the node to itself.

#include "absl/status/statusor.h"

namespace tessera::comm {

inline constexpr char kNodeFirstSlotVariable[] = "TESSERA_NODE_FIRST_SLOT";
inline constexpr char kNodeRanksVariable[] = "TESSERA_NODE_RANKS";

struct NodeShare {
  int first_slot = 0;
  int node_ranks = 0;  // 0: only this job's ranks

  // From the variables above; INVALID_ARGUMENT naming the variable when one is not a
  // non-negative integer.
  static absl::StatusOr<NodeShare> FromEnvironment();
};

}  // namespace tessera::comm

#endif  // TESSERA_COMM_NODE_SHARE_H_
