#ifndef TESSERA_COMM_TOPOLOGY_H_
#define TESSERA_COMM_TOPOLOGY_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "comm/communicator.h"
#include "tessera/v1/topology.pb.h"

namespace tessera::comm {

// Where one rank runs, derived from every rank's report.
struct RankPlacement {
  int world_rank = 0;
  std::string host;
  int node = 0;        // index of the host in Topology::hosts()
  int local_rank = 0;  // position among the ranks of its host, by world rank
  int local_size = 1;  // ranks on its host
  int gpu = -1;        // CUDA ordinal this rank uses; -1 without a GPU
  std::string gpu_uuid;
  std::string gpu_pci_bus_id;
  int numa_node = -1;  // of its GPU if it has one, else of its CPU
};

// Which of the GPUs a rank sees it uses (an index into what it sees): the one of its node slot,
// node_first_slot + local_rank (node_share.h), wrapping when it sees fewer GPUs than the node
// has slots. -1 when it sees none. The rule of Topology below and of the host-thread
// placement at start (launcher/process.cc), which runs before the topology is known.
int VisibleGpuOfSlot(int node_first_slot, int local_rank, int visible_gpus);

// Which rank runs where, on which GPU, and which GPUs reach each other directly. Ranks on the
// same host name form a node (TESSERA_HOSTNAME overrides the name: see host_name.h). Each
// rank of a node uses GPU (node_first_slot + local_rank) mod (GPUs it can see), where
// node_first_slot counts the GPUs of the host that other jobs took (node_share.h).
class Topology {
 public:
  // Collective over `world` (a host communicator of every rank): each rank reports what it
  // sees and all ranks derive the same Topology.
  static absl::StatusOr<Topology> Discover(Communicator& world);
  // The report this process would send; `node_first_slot` from NodeShare.
  static v1::RankTopology LocalReport(int world_rank, int node_first_slot = 0);
  // Derives the topology from all reports (index = world rank). INVALID_ARGUMENT when a
  // report is missing or out of place.
  static absl::StatusOr<Topology> FromReports(std::vector<v1::RankTopology> reports);

  int world_size() const { return static_cast<int>(ranks_.size()); }
  const RankPlacement& rank(int world_rank) const { return ranks_[world_rank]; }
  const std::vector<RankPlacement>& ranks() const { return ranks_; }
  // Host names in order of first appearance by world rank.
  const std::vector<std::string>& hosts() const { return hosts_; }
  // World ranks on a node, by local rank.
  std::vector<int> RanksOnNode(int node) const;
  // True when the GPUs of two ranks on one node can access each other's memory directly.
  bool PeerAccess(int world_rank_a, int world_rank_b) const;
  const v1::RankTopology& report(int world_rank) const { return reports_[world_rank]; }

  // A table: rank, host, local rank, GPU, PCI bus, NUMA node.
  std::string ToString() const;

 private:
  std::vector<v1::RankTopology> reports_;
  std::vector<RankPlacement> ranks_;
  std::vector<std::string> hosts_;
};

}  // namespace tessera::comm

#endif  // TESSERA_COMM_TOPOLOGY_H_
