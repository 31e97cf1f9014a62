#ifndef TESSERA_COMM_LAYOUT_H_
#define TESSERA_COMM_LAYOUT_H_

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "comm/communicator.h"
#include "comm/topology.h"

namespace tessera::comm {

struct LayoutOptions {
  // Tensor-parallel degree: ranks per model replica. Must divide the world size.
  int tp = 1;
  // Allow a TP group to span nodes (its all-reduces then cross the network on every layer).
  // Off by default: such a layout is refused.
  bool allow_cross_node_tp = false;
};

// Where one world rank sits in the TP x DP grid.
struct GridPosition {
  int replica = 0;  // = DP rank
  int tp_rank = 0;
};

// The TP x DP grid for a topology: TP groups are runs of `tp` consecutive local ranks of one
// node; replicas are numbered node by node. With allow_cross_node_tp the runs are taken
// over all ranks ordered by (node, local rank) and may cross a node boundary. Indexed by
// world rank. INVALID_ARGUMENT when tp does not divide the world, or a TP group would span
// nodes without permission (naming the node and its ranks).
absl::StatusOr<std::vector<GridPosition>> PlaceRanks(const Topology& topology,
                                                     const LayoutOptions& options);

// This rank's TP group and DP group (the ranks with the same TP rank in every replica),
// with a communicator for each, split from the world communicator.
class Layout {
 public:
  // Collective over `world`.
  static absl::StatusOr<Layout> Create(Communicator& world, const Topology& topology,
                                       const LayoutOptions& options);

  int world_rank() const { return world_rank_; }
  int world_size() const { return static_cast<int>(grid_.size()); }
  int tp_size() const { return tp_size_; }
  int tp_rank() const { return grid_[world_rank_].tp_rank; }
  int dp_size() const { return world_size() / tp_size_; }
  int dp_rank() const { return grid_[world_rank_].replica; }
  const std::vector<GridPosition>& grid() const { return grid_; }
  // World ranks of a replica's TP group, by TP rank.
  std::vector<int> TpGroupOf(int replica) const;

  Communicator& tp() { return *tp_; }
  Communicator& dp() { return *dp_; }

 private:
  int world_rank_ = 0;
  int tp_size_ = 1;
  std::vector<GridPosition> grid_;
  std::shared_ptr<Communicator> tp_;
  std::shared_ptr<Communicator> dp_;
};

}  // namespace tessera::comm

#endif  // TESSERA_COMM_LAYOUT_H_
