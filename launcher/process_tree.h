#ifndef TESSERA_LAUNCHER_PROCESS_TREE_H_
#define TESSERA_LAUNCHER_PROCESS_TREE_H_

// The processes of this machine as /proc shows them: a process's parent and start time, the
// processes below one (an mpirun's ranks), which of them is a given MPI rank, and what one
// holds (memory, descriptors, threads). Used by the serve supervisor to inject faults, by
// `tessera bench soak` to watch tessera serve, and by the end-to-end tests to find and stop
// processes. Linux only.

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace tessera::launcher {

// What /proc/<pid>/stat says about a process.
struct ProcStat {
  pid_t ppid = 0;
  char state = '?';
  unsigned long long start_time = 0;  // clock ticks since boot
};
// nullopt when the process is gone (or /proc cannot be read).
std::optional<ProcStat> ReadProcStat(pid_t pid);

// The process `pid` started at `start_time` is still there (and not a zombie): never a
// later process that reused the pid.
bool SameProcessAlive(pid_t pid, unsigned long long start_time);

// Every process id in /proc.
std::vector<pid_t> AllPids();

// What a process holds, by /proc/<pid>/status and /proc/<pid>/fd: a leak of memory,
// descriptors or threads shows in one of these.
struct ProcResources {
  int64_t resident_bytes = 0;  // VmRSS
  int open_fds = 0;
  int threads = 0;
};
// nullopt when the process is gone or /proc does not show these (another user's process).
std::optional<ProcResources> ReadProcResources(pid_t pid);

// How many of a process's threads bear each name (/proc/<pid>/task/*/comm; a thread that
// was never named has its process's name). Empty when the process is gone.
std::map<std::string, int> ThreadNames(pid_t pid);

// The processes `root` started, and theirs, transitively (`root` not included).
std::vector<pid_t> DescendantsOf(pid_t root);

// The first of `pids` whose environment has OMPI_COMM_WORLD_RANK=`rank` (Open MPI sets it in
// each rank it starts), or nullopt.
std::optional<pid_t> FindMpiRank(const std::vector<pid_t>& pids, int rank);

// The whole of a (small) file, "" when it cannot be read.
std::string ReadWholeFile(const std::string& path);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_PROCESS_TREE_H_
