#include "launcher/process_tree.h"

#include <dirent.h>

#include <fstream>
#include <map>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace tessera::launcher {

std::string ReadWholeFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

std::optional<ProcStat> ReadProcStat(pid_t pid) {
  std::string text = ReadWholeFile(absl::StrCat("/proc/", pid, "/stat"));
  // "pid (comm) state ppid ..."; comm may hold spaces and parentheses: split after the last ')'.
  size_t close = text.rfind(')');
  if (close == std::string::npos || close + 2 > text.size()) return std::nullopt;
  std::vector<std::string> fields = absl::StrSplit(text.substr(close + 2), ' ', absl::SkipEmpty());
  // fields[0] is field 3 of stat (state); ppid is field 4, starttime field 22.
  if (fields.size() < 20) return std::nullopt;
  ProcStat stat;
  stat.state = fields[0].empty() ? '?' : fields[0][0];
  int ppid = 0;
  if (!absl::SimpleAtoi(fields[1], &ppid)) return std::nullopt;
  stat.ppid = ppid;
  if (!absl::SimpleAtoi(fields[19], &stat.start_time)) return std::nullopt;
  return stat;
}

bool SameProcessAlive(pid_t pid, unsigned long long start_time) {
  std::optional<ProcStat> stat = ReadProcStat(pid);
  return stat && stat->start_time == start_time && stat->state != 'Z' && stat->state != 'X';
}

std::vector<pid_t> AllPids() {
  std::vector<pid_t> pids;
  DIR* proc = opendir("/proc");
  if (proc == nullptr) return pids;
  while (dirent* entry = readdir(proc)) {
    int pid = 0;
    if (absl::SimpleAtoi(entry->d_name, &pid) && pid > 0) pids.push_back(pid);
  }
  closedir(proc);
  return pids;
}

std::optional<ProcResources> ReadProcResources(pid_t pid) {
  ProcResources resources;
  bool rss = false, threads = false;
  for (absl::string_view line :
       absl::StrSplit(ReadWholeFile(absl::StrCat("/proc/", pid, "/status")), '\n')) {
    // "VmRSS:\t  12345 kB", "Threads:\t7"
    std::vector<absl::string_view> words =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (words.size() >= 2 && words[0] == "VmRSS:") {
      rss = absl::SimpleAtoi(words[1], &resources.resident_bytes);
      resources.resident_bytes *= 1024;
    } else if (words.size() >= 2 && words[0] == "Threads:") {
      threads = absl::SimpleAtoi(words[1], &resources.threads);
    }
  }
  DIR* fds = opendir(absl::StrCat("/proc/", pid, "/fd").c_str());
  if (!rss || !threads || fds == nullptr) {
    if (fds != nullptr) closedir(fds);
    return std::nullopt;
  }
  while (dirent* entry = readdir(fds)) {
    if (entry->d_name[0] != '.') ++resources.open_fds;
  }
  closedir(fds);
  return resources;
}

std::map<std::string, int> ThreadNames(pid_t pid) {
  std::map<std::string, int> names;
  const std::string tasks = absl::StrCat("/proc/", pid, "/task");
  DIR* dir = opendir(tasks.c_str());
  if (dir == nullptr) return names;
  while (dirent* entry = readdir(dir)) {
    if (entry->d_name[0] == '.') continue;
    std::string name = ReadWholeFile(absl::StrCat(tasks, "/", entry->d_name, "/comm"));
    if (!name.empty() && name.back() == '\n') name.pop_back();
    if (!name.empty()) ++names[name];  // empty: the thread ended meanwhile
  }
  closedir(dir);
  return names;
}

std::vector<pid_t> DescendantsOf(pid_t root) {
  std::multimap<pid_t, pid_t> children;  // ppid -> pid
  for (pid_t pid : AllPids()) {
    if (std::optional<ProcStat> stat = ReadProcStat(pid)) children.emplace(stat->ppid, pid);
  }
  std::vector<pid_t> found;
  std::vector<pid_t> frontier = {root};
  while (!frontier.empty()) {
    pid_t parent = frontier.back();
    frontier.pop_back();
    auto [begin, end] = children.equal_range(parent);
    for (auto it = begin; it != end; ++it) {
      found.push_back(it->second);
      frontier.push_back(it->second);
    }
  }
  return found;
}

std::optional<pid_t> FindMpiRank(const std::vector<pid_t>& pids, int rank) {
  const std::string wanted = absl::StrCat("OMPI_COMM_WORLD_RANK=", rank);
  for (pid_t pid : pids) {
    std::string environment = ReadWholeFile(absl::StrCat("/proc/", pid, "/environ"));
    for (absl::string_view setting : absl::StrSplit(environment, '\0')) {
      if (setting == wanted) return pid;
    }
  }
  return std::nullopt;
}

}  // namespace tessera::launcher
