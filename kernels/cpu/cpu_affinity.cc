#include "kernels/cpu/cpu_affinity.h"

#ifdef __linux__
#include <pthread.h>
#include <sched.h>
#endif
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <string_view>

namespace tessera::kernels {
namespace {

// A whole non-negative decimal number, or nullopt.
std::optional<int> ParseCount(std::string_view text) {
  if (text.empty() || text.size() > 9) return std::nullopt;
  int value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    value = value * 10 + (c - '0');
  }
  return value;
}

std::optional<int> EnvCount(const char* name) {
  const char* text = std::getenv(name);
  return text == nullptr ? std::nullopt : ParseCount(text);
}

// Entry `node` of a Slurm task list such as "2(x3),1" (nodes 0-2 run 2 tasks, node 3 one).
std::optional<int> SlurmTasksOnNode(std::string_view list, int node) {
  while (!list.empty()) {
    const size_t comma = list.find(',');
    std::string_view item = list.substr(0, comma);
    list = comma == std::string_view::npos ? std::string_view() : list.substr(comma + 1);
    int repeat = 1;
    if (const size_t paren = item.find("(x"); paren != std::string_view::npos) {
      if (item.back() != ')') return std::nullopt;
      std::optional<int> times = ParseCount(item.substr(paren + 2, item.size() - paren - 3));
      if (!times || *times < 1) return std::nullopt;
      repeat = *times;
      item = item.substr(0, paren);
    }
    std::optional<int> tasks = ParseCount(item);
    if (!tasks) return std::nullopt;
    if (node < repeat) return tasks;
    node -= repeat;
  }
  return std::nullopt;
}

std::optional<LocalRanks> Valid(std::optional<int> rank, std::optional<int> size,
                                const char* source) {
  if (!rank || !size || *size < 1 || *rank >= *size) return std::nullopt;
  return LocalRanks{*rank, *size, source};
}

std::optional<LocalRanks> SlurmLocalRanks() {
  std::optional<int> rank = EnvCount("SLURM_LOCALID");
  std::optional<int> size = EnvCount("SLURM_NTASKS_PER_NODE");
  if (!size) {
    const char* list = std::getenv("SLURM_STEP_TASKS_PER_NODE");
    if (list != nullptr) size = SlurmTasksOnNode(list, EnvCount("SLURM_NODEID").value_or(0));
  }
  return Valid(rank, size, "slurm");
}

CpuSetup ReadSetup(int ranks_sharing, int node_ranks) {
  CpuSetup setup;
  setup.cpus = AllowedCpus();
  setup.local = LocalRanksFromEnvironment();
  CpuThreadInputs& in = setup.inputs;
  in.allowed_cpus = static_cast<int>(setup.cpus.size());
  // A mask may name cores that sysconf does not count (offline ones come back later).
  in.node_cpus = std::max(NodeCpus(), in.allowed_cpus);
  in.local_ranks = std::max(setup.local.size, node_ranks);
  in.ranks_sharing = ranks_sharing;
  if (std::optional<int> threads = EnvCount("TESSERA_CPU_THREADS"); threads && *threads > 0) {
    in.override_threads = *threads;
  }
  const char* pin = std::getenv("TESSERA_PIN_THREADS");
  in.pin_allowed = pin == nullptr || std::strcmp(pin, "0") != 0;
  setup.plan = PlanCpuThreads(in);
  return setup;
}

struct SetupState {
  std::mutex mutex;
  int ranks_sharing = 0;  // guarded by mutex
  int node_ranks = 0;     // guarded by mutex
  std::atomic<const CpuSetup*> setup{nullptr};
};

SetupState& State() {
  // Never destroyed: kernels may run during static destruction.
  static SetupState* state = new SetupState;
  return *state;
}

}  // namespace

LocalRanks LocalRanksFromEnvironment() {
  if (auto ranks = Valid(EnvCount("OMPI_COMM_WORLD_LOCAL_RANK"),
                         EnvCount("OMPI_COMM_WORLD_LOCAL_SIZE"), "openmpi")) {
    return *ranks;
  }
  if (auto ranks = Valid(EnvCount("PMIX_LOCAL_RANK"), EnvCount("PMIX_LOCAL_SIZE"), "pmix")) {
    return *ranks;
  }
  if (auto ranks = SlurmLocalRanks()) return *ranks;
  return LocalRanks{};
}

int NodeCpus() {
  const long online = sysconf(_SC_NPROCESSORS_ONLN);
  return online > 0 ? static_cast<int>(online) : 1;
}

std::vector<int> AllowedCpus() {
  std::vector<int> cpus;
#ifdef __linux__
  // Sized for machines with more cores than a cpu_set_t holds (1024).
  for (int bits = CPU_SETSIZE; bits <= (1 << 16) && cpus.empty(); bits *= 2) {
    cpu_set_t* set = CPU_ALLOC(bits);
    if (set == nullptr) break;
    const size_t bytes = CPU_ALLOC_SIZE(bits);
    CPU_ZERO_S(bytes, set);
    const bool read = sched_getaffinity(0, bytes, set) == 0;
    const bool too_small = !read && errno == EINVAL;
    if (read) {
      for (int cpu = 0; cpu < bits; ++cpu) {
        if (CPU_ISSET_S(cpu, bytes, set)) cpus.push_back(cpu);
      }
    }
    CPU_FREE(set);
    if (!too_small) break;
  }
#endif
  if (cpus.empty()) {
    for (int cpu = 0; cpu < NodeCpus(); ++cpu) cpus.push_back(cpu);
  }
  return cpus;
}

std::string FormatCpuList(const std::vector<int>& cpus) {
  std::string out;
  for (size_t i = 0; i < cpus.size();) {
    size_t j = i;
    while (j + 1 < cpus.size() && cpus[j + 1] == cpus[j] + 1) ++j;
    if (!out.empty()) out += ',';
    out += std::to_string(cpus[i]);
    if (j > i) out += '-' + std::to_string(cpus[j]);
    i = j + 1;
  }
  return out;
}

CpuThreadPlan PlanCpuThreads(const CpuThreadInputs& in) {
  const int allowed = std::max(1, in.allowed_cpus);
  const int node = std::max(allowed, in.node_cpus);
  const int local = std::max(1, in.local_ranks);
  CpuThreadPlan plan;
  plan.ranks_sharing = in.ranks_sharing > 0
                           ? in.ranks_sharing
                           : std::clamp((local * allowed + node - 1) / node, 1, local);
  plan.threads =
      in.override_threads > 0 ? in.override_threads : std::max(1, allowed / plan.ranks_sharing);
  plan.pin =
      in.pin_allowed && plan.ranks_sharing == 1 && plan.threads >= 2 && plan.threads <= allowed;
  return plan;
}

const CpuSetup& CurrentCpuSetup() {
  SetupState& state = State();
  if (const CpuSetup* setup = state.setup.load(std::memory_order_acquire)) return *setup;
  std::lock_guard<std::mutex> lock(state.mutex);
  if (state.setup.load(std::memory_order_relaxed) == nullptr) {
    state.setup.store(new CpuSetup(ReadSetup(state.ranks_sharing, state.node_ranks)),
                      std::memory_order_release);
  }
  return *state.setup.load(std::memory_order_relaxed);
}

bool SetRanksSharingCpus(int ranks, int node_ranks) {
  SetupState& state = State();
  std::lock_guard<std::mutex> lock(state.mutex);
  if (state.setup.load(std::memory_order_relaxed) != nullptr) return false;
  state.ranks_sharing = std::max(0, ranks);
  state.node_ranks = std::max(0, node_ranks);
  return true;
}

std::string CpuSetupProblem(const CpuSetup& setup, bool slurm) {
  const CpuThreadInputs& in = setup.inputs;
  const int fair = std::max(1, in.node_cpus / std::max(1, in.local_ranks));
  if (in.allowed_cpus < fair) {
    const std::string fix =
        slurm ? "srun --cpu-bind=cores --cpus-per-task=" + std::to_string(fair)
              : "mpirun --bind-to none, or --map-by ppr:N:numa --bind-to numa with N ranks a "
                "NUMA node";
    return "bound to " + std::to_string(in.allowed_cpus) + " core(s), below its fair share " +
           std::to_string(fair) + " of the node (" + std::to_string(in.node_cpus) + " cores, " +
           std::to_string(in.local_ranks) + " local rank(s)): start it with " + fix;
  }
  if (in.allowed_cpus == 1 && setup.plan.threads > 1) {
    return "runs " + std::to_string(setup.plan.threads) +
           " kernel threads on one core (TESSERA_CPU_THREADS): unset it, or bind the rank to more "
           "cores";
  }
  if (setup.plan.ranks_sharing > in.allowed_cpus) {
    // Each rank runs at least one kernel thread, so some core runs several ranks' threads,
    // and a parallel kernel waits for its slowest thread: the one that shares a core.
    const std::string sharing = std::to_string(setup.plan.ranks_sharing) +
                                " local ranks share these " + std::to_string(in.allowed_cpus) +
                                " core(s), so some cores run the kernel threads of several ranks";
    if (in.local_ranks > in.node_cpus) {
      const std::string most = std::to_string(in.node_cpus);
      return sharing + ": the node has " + most + " cores for " + std::to_string(in.local_ranks) +
             " ranks; start at most " + most + " ranks on it (" +
             (slurm ? "srun --ntasks-per-node=" + most
                    : "mpirun --map-by ppr:" + most + ":node, or fewer -np") +
             ")";
    }
    const std::string share = std::to_string(fair);
    return sharing + ": give each rank cores of its own with " +
           (slurm ? "srun --cpu-bind=cores --cpus-per-task=" + share
                  : "mpirun --map-by slot:PE=" + share + " --bind-to core") +
           ", or start fewer ranks on the node";
  }
  return "";
}

std::string DescribeCpuSetup(const CpuSetup& setup) {
  const CpuThreadPlan& plan = setup.plan;
  return "cores " + FormatCpuList(setup.cpus) + " (" + std::to_string(setup.inputs.allowed_cpus) +
         " of " + std::to_string(setup.inputs.node_cpus) + " on the node, " +
         std::to_string(plan.ranks_sharing) + " local rank(s) of " +
         std::to_string(setup.inputs.local_ranks) + " share them), " +
         std::to_string(plan.threads) + " kernel thread(s), " +
         (plan.pin ? "pinned" : "not pinned");
}

bool PinCurrentThread(int cpu) {
#ifdef __linux__
  if (cpu < 0) return false;
  cpu_set_t* set = CPU_ALLOC(cpu + 1);
  if (set == nullptr) return false;
  const size_t bytes = CPU_ALLOC_SIZE(cpu + 1);
  CPU_ZERO_S(bytes, set);
  CPU_SET_S(cpu, bytes, set);
  const bool pinned = pthread_setaffinity_np(pthread_self(), bytes, set) == 0;
  CPU_FREE(set);
  return pinned;
#else
  (void)cpu;
  return false;
#endif
}

}  // namespace tessera::kernels
