#ifndef TESSERA_TESTS_MPI_PROCESS_RUNNER_H_
#define TESSERA_TESTS_MPI_PROCESS_RUNNER_H_

// Runs a shell command (an mpirun line) and collects what a user would see: its output, its
// exit code and how long it took. For the tests that drive whole jobs.

#include <sys/wait.h>

#include <chrono>
#include <cstdio>
#include <string>

namespace tessera::testing {

struct ProcessOutcome {
  int exit_code = -1;  // 128 + signal when killed
  std::string output;  // what the command wrote to its stdout (add 2>&1 for stderr too)
  double seconds = 0;
};

inline ProcessOutcome RunCommand(const std::string& command) {
  ProcessOutcome outcome;
  auto start = std::chrono::steady_clock::now();
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return outcome;
  char chunk[4096];
  size_t n;
  while ((n = fread(chunk, 1, sizeof(chunk), pipe)) > 0) outcome.output.append(chunk, n);
  int status = pclose(pipe);
  outcome.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  outcome.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return outcome;
}

}  // namespace tessera::testing

#endif  // TESSERA_TESTS_MPI_PROCESS_RUNNER_H_
