// Fuzzes what a tensor-parallel rank does with the StepPlans its leader broadcasts: parse the
// bytes (as the engine's follower loop does) and execute them with StepExecutor over a real
// model (tests/golden/models/llama, 2 layers, vocab 256) with one LoRA adapter in slot 0
// (tests/golden/lora_serving/a; NewSequence.adapter) and a KV cache of 8 blocks of 4 tokens. Input:
// plans one after another, each behind a 2-byte little-endian length (the last one may run to the
// end), executed in order by one executor, so that later plans meet the sequences, blocks and
// sampled tokens of earlier ones. A plan the rank refuses ends the input, as it ends a real rank's
// step loop.

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "comm/comm_options.h"
#include "comm/mpi/mpi_communicator.h"
#include "comm/mpi/mpi_runtime.h"
#include "runtime/engine/step_executor.h"
#include "runtime/model/transformer.h"
#include "tessera/v1/step_plan.pb.h"

namespace {

constexpr int kBlocks = 8;
constexpr int kBlockSize = 4;

struct World {
  std::unique_ptr<tessera::comm::MpiRuntime> runtime;
  std::unique_ptr<tessera::comm::MpiCommunicator> communicator;
  std::unique_ptr<tessera::model::Transformer> model;
};

World* world = nullptr;

template <typename T>
T OrDie(absl::StatusOr<T> value, const char* what) {
  if (!value.ok()) {
    std::fprintf(stderr, "step_plan_fuzzer: %s: %s\n", what, value.status().ToString().c_str());
    std::exit(1);
  }
  return *std::move(value);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  world = new World;
  world->runtime = OrDie(tessera::comm::MpiRuntime::Initialize(argc, argv), "MPI");
  world->communicator = OrDie(tessera::comm::MpiCommunicator::CreateWorld(
                                  OrDie(tessera::comm::CommOptions::FromEnvironment(), "options")),
                              "world communicator");
  world->model = OrDie(
      tessera::model::Transformer::Load(TESSERA_FUZZ_MODEL_DIR, *world->communicator), "model");
  if (OrDie(world->model->LoadAdapter(TESSERA_FUZZ_ADAPTER_DIR), "adapter") != 0) {
    std::fprintf(stderr, "step_plan_fuzzer: the adapter did not go into slot 0\n");
    std::exit(1);
  }
  // MPI is finalized at exit, after the fuzzing loop, in the order the objects were made.
  std::atexit([] {
    world->model.reset();
    world->communicator.reset();
    world->runtime.reset();
  });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  tessera::model::KvCache cache =
      OrDie(world->model->AllocateKvCache(kBlocks, kBlockSize), "KV cache");
  tessera::engine::StepExecutor executor(*world->model, cache);
  while (size > 0) {
    size_t length = size;
    if (size >= 2) {
      length = std::min<size_t>(data[0] | (size_t{data[1]} << 8), size - 2);
      data += 2;
      size -= 2;
    }
    tessera::v1::StepPlan plan;
    if (!plan.ParseFromArray(data, static_cast<int>(length))) return 0;
    data += length;
    size -= length;
    absl::StatusOr<std::vector<tessera::engine::SampledToken>> sampled = executor.Execute(plan);
    if (!sampled.ok()) return 0;
    for (const tessera::engine::SampledToken& token : *sampled) {
      if (token.token < 0 || token.token >= world->model->config().vocab_size) {
        std::fprintf(stderr, "sampled token %d outside the vocabulary\n", token.token);
        std::abort();
      }
    }
  }
  return 0;
}
