#include "comm/topology.h"

#include <sched.h>
#include <unistd.h>

#include <fstream>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "comm/host_name.h"
#include "comm/node_share.h"
#include "runtime/core/gpu_info.h"
#include "runtime/core/status_macros.h"

namespace tessera::comm {
namespace {

// NUMA node of the CPU this thread runs on, from sysfs; -1 when unknown.
int CurrentCpuNumaNode() {
  int cpu = sched_getcpu();
  if (cpu < 0) return -1;
  for (int node = 0; node < 64; ++node) {
    // sysfs links each CPU under the node it belongs to.
    std::ifstream link(
        absl::StrCat("/sys/devices/system/node/node", node, "/cpu", cpu, "/topology/core_id"));
    if (link.good()) return node;
  }
  std::ifstream single("/sys/devices/system/node/node0/cpulist");
  return single.good() ? 0 : -1;
}

}  // namespace

int VisibleGpuOfSlot(int node_first_slot, int local_rank, int visible_gpus) {
  if (visible_gpus <= 0) return -1;
  return (node_first_slot + local_rank) % visible_gpus;
}

v1::RankTopology Topology::LocalReport(int world_rank, int node_first_slot) {
  v1::RankTopology report;
  report.set_world_rank(world_rank);
  report.set_node_first_slot(node_first_slot);
  report.set_host(LocalHostName());
  report.set_pid(static_cast<int32_t>(getpid()));
  report.set_cpu_numa_node(CurrentCpuNumaNode());
  std::vector<GpuInfo> gpus = ListGpus();
  for (const GpuInfo& gpu : gpus) {
    v1::GpuDevice* device = report.add_visible_gpus();
    device->set_ordinal(gpu.ordinal);
    device->set_name(gpu.name);
    device->set_uuid(gpu.uuid);
    device->set_pci_bus_id(gpu.pci_bus_id);
    device->set_numa_node(gpu.numa_node);
  }
  for (const GpuInfo& from : gpus) {
    for (const GpuInfo& to : gpus) {
      report.add_peer_access(CanAccessPeer(from.ordinal, to.ordinal) ? 1 : 0);
    }
  }
  return report;
}

absl::StatusOr<Topology> Topology::Discover(Communicator& world) {
  if (!world.device().is_cpu()) {
    return absl::InvalidArgumentError(
        "topology discovery needs a host communicator (the MPI world)");
  }
  TESSERA_ASSIGN_OR_RETURN(NodeShare share, NodeShare::FromEnvironment());
  std::string bytes;
  if (!LocalReport(world.rank(), share.first_slot).SerializeToString(&bytes)) {
    return absl::InternalError("cannot serialize this rank's topology report");
  }
  Stream cpu = Stream::Cpu();
  // Reports differ in length: gather the lengths, then every report padded to the longest.
  int64_t length = static_cast<int64_t>(bytes.size());
  TESSERA_ASSIGN_OR_RETURN(Tensor lengths, Tensor::Empty(DType::kI64, {world.size()}));
  Tensor my_length = Tensor::Wrap(&length, DType::kI64, {1});
  TESSERA_RETURN_IF_ERROR(world.AllGather(my_length, lengths, cpu));
  int64_t longest = 0;
  for (int64_t l : lengths.span<int64_t>()) longest = std::max(longest, l);
  bytes.resize(static_cast<size_t>(longest));
  TESSERA_ASSIGN_OR_RETURN(Tensor all, Tensor::Empty(DType::kI8, {world.size() * longest}));
  Tensor mine = Tensor::Wrap(bytes.data(), DType::kI8, {longest});
  TESSERA_RETURN_IF_ERROR(world.AllGather(mine, all, cpu));

  std::vector<v1::RankTopology> reports(world.size());
  const char* base = static_cast<const char*>(all.data());
  for (int r = 0; r < world.size(); ++r) {
    if (!reports[r].ParseFromArray(base + r * longest,
                                   static_cast<int>(lengths.span<int64_t>()[r]))) {
      return absl::DataLossError(absl::StrCat("topology report of rank ", r, " is corrupt"));
    }
  }
  return FromReports(std::move(reports));
}

absl::StatusOr<Topology> Topology::FromReports(std::vector<v1::RankTopology> reports) {
  Topology topology;
  std::map<std::string, int> node_of_host;
  std::vector<int> next_local;
  for (size_t r = 0; r < reports.size(); ++r) {
    const v1::RankTopology& report = reports[r];
    if (report.world_rank() != static_cast<int>(r)) {
      return absl::InvalidArgumentError(absl::StrCat("topology report at position ", r,
                                                     " is for world rank ", report.world_rank()));
    }
    if (report.host().empty()) {
      return absl::InvalidArgumentError(absl::StrCat("rank ", r, " reported no host name"));
    }
    if (report.node_first_slot() < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("rank ", r, " reported node_first_slot ", report.node_first_slot()));
    }
    size_t gpus = static_cast<size_t>(report.visible_gpus_size());
    if (static_cast<size_t>(report.peer_access_size()) != gpus * gpus) {
      return absl::InvalidArgumentError(absl::StrCat("rank ", r, " reported ",
                                                     report.peer_access_size(),
                                                     " peer-access entries for ", gpus, " GPUs"));
    }
    auto [it, inserted] = node_of_host.emplace(report.host(), topology.hosts_.size());
    if (inserted) {
      topology.hosts_.push_back(report.host());
      next_local.push_back(0);
    }
    RankPlacement placement;
    placement.world_rank = static_cast<int>(r);
    placement.host = report.host();
    placement.node = it->second;
    placement.local_rank = next_local[it->second]++;
    topology.ranks_.push_back(std::move(placement));
  }
  for (RankPlacement& placement : topology.ranks_) {
    placement.local_size = next_local[placement.node];
    const v1::RankTopology& report = reports[placement.world_rank];
    placement.numa_node = report.cpu_numa_node();
    if (report.visible_gpus_size() > 0) {
      const v1::GpuDevice& gpu = report.visible_gpus(VisibleGpuOfSlot(
          report.node_first_slot(), placement.local_rank, report.visible_gpus_size()));
      placement.gpu = gpu.ordinal();
      placement.gpu_uuid = gpu.uuid();
      placement.gpu_pci_bus_id = gpu.pci_bus_id();
      if (gpu.numa_node() >= 0) placement.numa_node = gpu.numa_node();
    }
  }
  topology.reports_ = std::move(reports);
  return topology;
}

std::vector<int> Topology::RanksOnNode(int node) const {
  std::vector<int> ranks;
  for (const RankPlacement& placement : ranks_) {
    if (placement.node == node) ranks.push_back(placement.world_rank);
  }
  return ranks;
}

bool Topology::PeerAccess(int world_rank_a, int world_rank_b) const {
  const RankPlacement& a = ranks_[world_rank_a];
  const RankPlacement& b = ranks_[world_rank_b];
  if (a.node != b.node || a.gpu < 0 || b.gpu < 0) return false;
  if (a.gpu_uuid == b.gpu_uuid) return true;
  // Both ranks see the node's GPUs; use rank a's view of the pair.
  const v1::RankTopology& report = reports_[world_rank_a];
  int n = report.visible_gpus_size();
  int from = -1, to = -1;
  for (int i = 0; i < n; ++i) {
    if (report.visible_gpus(i).uuid() == a.gpu_uuid) from = i;
    if (report.visible_gpus(i).uuid() == b.gpu_uuid) to = i;
  }
  if (from < 0 || to < 0) return false;
  return report.peer_access(from * n + to) != 0;
}

std::string Topology::ToString() const {
  std::string out = absl::StrFormat("%6s  %-20s %6s %5s  %-14s %5s\n", "rank", "host", "local",
                                    "gpu", "pci bus", "numa");
  for (const RankPlacement& p : ranks_) {
    absl::StrAppendFormat(&out, "%6d  %-20s %3d/%-2d %5s  %-14s %5d\n", p.world_rank, p.host,
                          p.local_rank, p.local_size, p.gpu < 0 ? "-" : absl::StrCat(p.gpu),
                          p.gpu_pci_bus_id.empty() ? "-" : p.gpu_pci_bus_id, p.numa_node);
  }
  return out;
}

}  // namespace tessera::comm
