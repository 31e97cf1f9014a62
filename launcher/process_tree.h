#ifndef TESSERA_LAUNCHER_PROCESS_TREE_H_
#define TESSERA_LAUNCHER_PROCESS_TREE_H_

// The processes of this machine as /proc shows them: a process's parent and start time, the
// processes below one (an mpirun's ranks), and which of them is a given MPI rank. Used by
// the serve supervisor to inject faults and by the end-to-end tests to find and stop
// processes. Linux only.

#include <sys/types.h>

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

// The processes `root` started, and theirs, transitively (`root` not included).
std::vector<pid_t> DescendantsOf(pid_t root);

// The first of `pids` whose environment has OMPI_COMM_WORLD_RANK=`rank` (Open MPI sets it in
// each rank it starts), or nullopt.
std::optional<pid_t> FindMpiRank(const std::vector<pid_t>& pids, int rank);

// The whole of a (small) file, "" when it cannot be read.
std::string ReadWholeFile(const std::string& path);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_PROCESS_TREE_H_
