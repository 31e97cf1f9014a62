#include "comm/layout.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "runtime/core/status_macros.h"

namespace tessera::comm {

absl::StatusOr<std::vector<GridPosition>> PlaceRanks(const Topology& topology,
                                                     const LayoutOptions& options) {
  int world = topology.world_size();
  if (options.tp < 1) {
    return absl::InvalidArgumentError(absl::StrCat("--tp must be at least 1, not ", options.tp));
  }
  if (world % options.tp != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tp ", options.tp, " does not divide the world size ", world));
  }
  // Ranks ordered by (node, local rank): each node's ranks are one contiguous run.
  std::vector<int> order;
  for (int node = 0; node < static_cast<int>(topology.hosts().size()); ++node) {
    std::vector<int> on_node = topology.RanksOnNode(node);
    if (!options.allow_cross_node_tp && on_node.size() % options.tp != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--tp ", options.tp, " would make a tensor-parallel group span nodes: node ",
          topology.hosts()[node], " has ", on_node.size(), " ranks (world ranks ",
          absl::StrJoin(on_node, ","), "), not a multiple of ", options.tp,
          ". Use a tp that divides the ranks per node, or allow cross-node TP explicitly"));
    }
    order.insert(order.end(), on_node.begin(), on_node.end());
  }
  std::vector<GridPosition> grid(world);
  for (int i = 0; i < world; ++i) {
    grid[order[i]] = GridPosition{i / options.tp, i % options.tp};
  }
  return grid;
}

std::vector<int> Layout::TpGroupOf(int replica) const {
  std::vector<int> ranks(tp_size_, -1);
  for (int r = 0; r < world_size(); ++r) {
    if (grid_[r].replica == replica) ranks[grid_[r].tp_rank] = r;
  }
  return ranks;
}

absl::StatusOr<Layout> Layout::Create(Communicator& world, const Topology& topology,
                                      const LayoutOptions& options) {
  if (topology.world_size() != world.size()) {
    return absl::InvalidArgumentError(absl::StrCat("topology has ", topology.world_size(),
                                                   " ranks but the world communicator ",
                                                   world.size()));
  }
  Layout layout;
  TESSERA_ASSIGN_OR_RETURN(layout.grid_, PlaceRanks(topology, options));
  layout.world_rank_ = world.rank();
  layout.tp_size_ = options.tp;
  const GridPosition& me = layout.grid_[world.rank()];
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> tp,
                           world.Split(me.replica, me.tp_rank, absl::StrCat("tp", me.replica)));
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> dp,
                           world.Split(me.tp_rank, me.replica, absl::StrCat("dp", me.tp_rank)));
  layout.tp_ = std::move(tp);
  layout.dp_ = std::move(dp);
  return layout;
}

}  // namespace tessera::comm
