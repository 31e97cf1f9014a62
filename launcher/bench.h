#ifndef TESSERA_LAUNCHER_BENCH_H_
#define TESSERA_LAUNCHER_BENCH_H_

#include <string>
#include <vector>

namespace tessera::launcher {

// `tessera bench <what>`: throughput benchmarks that print the figure, the limit it is
// measured against and the ratio: `generate` (prefill and decode at batch 1), `engine`
// (offline throughput of the serving engine), `kernels` (the CPU Linear kernel against the
// FMA peak) and `serve` (the coordinator and worker groups
// over gRPC: concurrent streams against one, and the coordinator's added latency), `soak`
// (tessera serve under a long mixed load with a group killed: right answers, none lost, no
// crash, no leak), `train` (fine-tuning tokens/s and MFU, optionally against PyTorch) and
// `adapters` (the engine's output tokens/s with a batch spread over N LoRA adapters against
// the base alone).
int RunBench(const std::vector<std::string>& args, int* argc, char*** argv);
int RunBenchEngine(const std::vector<std::string>& args, int* argc, char*** argv);
int RunBenchAdapters(const std::vector<std::string>& args, int* argc, char*** argv);
int RunBenchKernels(const std::vector<std::string>& args);
int RunBenchTrain(const std::vector<std::string>& args, int* argc, char*** argv);
int RunBenchServe(const std::vector<std::string>& args, int* argc, char*** argv);
int RunBenchSoak(const std::vector<std::string>& args, int* argc, char*** argv);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_BENCH_H_
