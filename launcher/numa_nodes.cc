#include "launcher/numa_nodes.h"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>

#include "absl/strings/numbers.h"

namespace tessera::launcher {
namespace {

// A whole non-negative decimal number below 2^20 (more CPUs than any kernel numbers), or
// nullopt.
std::optional<int> ParseCpu(std::string_view text) {
  int value = 0;
  if (text.empty() || text.front() == '+' || text.front() == '-' ||
      !absl::SimpleAtoi(absl::string_view(text.data(), text.size()), &value) || value < 0 ||
      value >= (1 << 20)) {
    return std::nullopt;
  }
  return value;
}

}  // namespace

std::optional<std::vector<int>> ParseCpuList(std::string_view text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.remove_suffix(1);
  std::vector<int> cpus;
  while (!text.empty()) {
    const size_t comma = text.find(',');
    const std::string_view item = text.substr(0, comma);
    text = comma == std::string_view::npos ? std::string_view() : text.substr(comma + 1);
    // A trailing comma leaves an empty last item, which is as malformed as an inner one.
    if (comma != std::string_view::npos && text.empty()) return std::nullopt;
    const size_t dash = item.find('-');
    const std::optional<int> first = ParseCpu(item.substr(0, dash));
    const std::optional<int> last =
        dash == std::string_view::npos ? first : ParseCpu(item.substr(dash + 1));
    if (!first || !last || *last < *first) return std::nullopt;
    for (int cpu = *first; cpu <= *last; ++cpu) cpus.push_back(cpu);
  }
  std::sort(cpus.begin(), cpus.end());
  cpus.erase(std::unique(cpus.begin(), cpus.end()), cpus.end());
  return cpus;
}

std::vector<NumaNode> ReadNumaNodes(const std::string& sysfs_nodes) {
  std::vector<NumaNode> nodes;
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(sysfs_nodes, error)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("node", 0) != 0) continue;  // "online", "possible", "has_cpu", ...
    const std::optional<int> id = ParseCpu(std::string_view(name).substr(4));
    if (!id) continue;
    std::ifstream file(entry.path() / "cpulist");
    if (!file) continue;
    std::ostringstream text;
    text << file.rdbuf();
    std::optional<std::vector<int>> cpus = ParseCpuList(text.str());
    if (!cpus || cpus->empty()) continue;
    nodes.push_back({*id, std::move(*cpus)});
  }
  std::sort(nodes.begin(), nodes.end(),
            [](const NumaNode& a, const NumaNode& b) { return a.id < b.id; });
  return nodes;
}

std::vector<int> NumaNodesOf(const std::vector<NumaNode>& nodes, const std::vector<int>& cpus) {
  std::vector<int> spanned;
  for (const NumaNode& node : nodes) {
    const bool holds = std::any_of(cpus.begin(), cpus.end(), [&node](int cpu) {
      return std::binary_search(node.cpus.begin(), node.cpus.end(), cpu);
    });
    if (holds) spanned.push_back(node.id);
  }
  return spanned;
}

std::string NumaSpanProblem(const std::vector<int>& spanned, bool slurm) {
  if (spanned.size() < 2) return "";
  std::string ids;
  for (int id : spanned) ids += (ids.empty() ? "" : ", ") + std::to_string(id);
  return "its cores span NUMA nodes " + ids +
         ": its memory lands on one of them and the threads on the others read it across the "
         "interconnect; start one rank per NUMA node with " +
         (slurm ? std::string("srun --cpu-bind=ldoms --mem-bind=local")
                : std::string("mpirun --map-by ppr:1:numa --bind-to numa"));
}

std::vector<NodeReaders> PlaceReadersOnNodes(const std::vector<NumaNode>& nodes,
                                             const std::vector<int>& cpus, int readers,
                                             int rotation) {
  if (nodes.size() < 2 || readers < 1) return {};
  std::vector<int> ascending = cpus;
  std::sort(ascending.begin(), ascending.end());
  std::vector<NodeReaders> placed;
  int64_t on_nodes = 0;
  for (const NumaNode& node : nodes) {
    NodeReaders share{node.id, {}, 0};
    std::set_intersection(node.cpus.begin(), node.cpus.end(), ascending.begin(), ascending.end(),
                          std::back_inserter(share.cpus));
    if (share.cpus.empty()) continue;
    on_nodes += static_cast<int64_t>(share.cpus.size());
    placed.push_back(std::move(share));
  }
  if (placed.empty()) return {};
  // Each node's whole quota, then the readers left one each to the largest remainders.
  std::vector<int64_t> remainders;
  int given = 0;
  for (NodeReaders& share : placed) {
    const int64_t quota = int64_t{readers} * static_cast<int64_t>(share.cpus.size());
    share.readers = static_cast<int>(quota / on_nodes);
    remainders.push_back(quota % on_nodes);
    given += share.readers;
  }
  // Fewer readers are left than nodes: each goes to another node, the largest remainder
  // first, equal ones in the order that starts at the rotation-th node.
  const int count = static_cast<int>(placed.size());
  const int first = ((rotation % count) + count) % count;
  for (; given < readers; ++given) {
    int best = -1;
    for (int k = 0; k < count; ++k) {
      const int i = (first + k) % count;
      if (best < 0 || remainders[i] > remainders[best]) best = i;
    }
    ++placed[best].readers;
    remainders[best] = -1;
  }
  std::erase_if(placed, [](const NodeReaders& share) { return share.readers == 0; });
  return placed;
}

}  // namespace tessera::launcher
