// The tessera binary: one entry point, a subcommand per job.

#include <cstdio>
#include <cstring>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "launcher/api_key_command.h"
#include "launcher/bench.h"
#include "launcher/client.h"
#include "launcher/comm_bench.h"
#include "launcher/generate.h"
#include "launcher/launch.h"
#include "launcher/perplexity.h"
#include "launcher/plan.h"
#include "launcher/process.h"
#include "launcher/serve.h"
#include "launcher/train.h"
#include "launcher/worker.h"

namespace {

struct Subcommand {
  const char* name;
  const char* summary;
  int (*run)(const std::vector<std::string>& args, int* argc, char*** argv);
};

constexpr Subcommand kSubcommands[] = {
    {"generate", "text from a Hugging Face model, tensor-parallel across MPI ranks",
     tessera::launcher::RunGenerate},
    {"plan", "what a model takes in memory on each rank, and how many sequences fit",
     tessera::launcher::RunPlan},
    {"perplexity", "a model's perplexity on a text file (its quality in each weight format)",
     tessera::launcher::RunPerplexity},
    {"train",
     "fine-tune a model on JSONL data: tensor-parallel x data-parallel, checkpoints, export",
     tessera::launcher::RunTrain},
    {"bench",
     "benchmarks: bench generate (batch 1), bench engine (continuous batching), bench "
     "kernels (CPU Linear), bench serve (streaming clients), bench soak (serving under a mixed "
     "load with a group killed: no loss, crash or leak), bench train (fine-tuning)",
     tessera::launcher::RunBench},
    {"serve", "serve a model on this machine: coordinator plus mpirun workers (Ctrl-C stops)",
     tessera::launcher::RunServe},
    {"coordinator", "the gRPC coordinator that worker groups register with",
     tessera::launcher::RunCoordinator},
    {"client",
     "client health|generate|chat|batch against a coordinator, and client adapters "
     "list|load|unload (LoRA adapters)",
     tessera::launcher::RunClient},
    {"api-key", "make an API key for a tenant and add its hash to a coordinator's key file",
     tessera::launcher::RunApiKey},
    {"worker",
     "a serving worker under mpirun: engine per TP group, leader registers with the "
     "coordinator",
     tessera::launcher::RunWorker},
    {"launch", "a serving job on many nodes: the coordinator here, workers by mpirun",
     tessera::launcher::RunLaunch},
    {"comm-bench", "collective bandwidth over MPI or NCCL, as nccl-tests (run under mpirun)",
     tessera::launcher::RunCommBench},
};

void PrintUsage(FILE* out) {
  std::fprintf(out,
               "usage: tessera <command> [flags]\n\n"
               "Tessera serves and fine-tunes transformer language models across GPUs and "
               "nodes.\n\ncommands:\n");
  for (const Subcommand& sub : kSubcommands) {
    std::fprintf(out, "  %-14s %s\n", sub.name, sub.summary);
  }
  std::fprintf(out, "\nRun 'tessera <command> --help' for the flags of a command.\n");
}

}  // namespace

int main(int argc, char** argv) {
  // The distribution's abseil checks every Mutex acquisition for lock-order cycles, which
  // costs the serving loop several percent; the tests run the same locks with it on.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
#ifdef __GLIBC__
  // A forward pass allocates and frees activations of up to a few megabytes every step.
  // glibc would map and unmap each of those (or trim the heap after it), and every step
  // would fault its pages in again; keep them in the heap instead. Weights and the KV
  // cache, far larger, are still mapped on their own.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 128 << 20);
#endif
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0 ||
      std::strcmp(argv[1], "help") == 0) {
    PrintUsage(argc < 2 ? stderr : stdout);
    return argc < 2 ? tessera::launcher::kExitUsage : tessera::launcher::kExitOk;
  }
  for (const Subcommand& sub : kSubcommands) {
    if (std::strcmp(argv[1], sub.name) == 0) {
      std::vector<std::string> args(argv + 2, argv + argc);
      return sub.run(args, &argc, &argv);
    }
  }
  std::fprintf(stderr, "tessera: unknown command '%s'\n\n", argv[1]);
  PrintUsage(stderr);
  return tessera::launcher::kExitUsage;
}
