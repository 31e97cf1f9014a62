// The serving engine when a peer fails, for engine_fault_test.cc. Every rank runs the
// engine on the built-in default model over the world; the leader streams four long
// requests, and 0.5 s in, rank 1 misbehaves:
//   engine_fault_probe exit    rank 1 exits without a word
//   engine_fault_probe stall   rank 1 stops (SIGSTOP) and never resumes
//   engine_fault_probe huge-plan  the leader sends, instead of a plan, a header announcing
//                              one of 2^40 bytes: its peers must refuse it, not allocate it
// The leader's step must fail within the deadline (TESSERA_COMM_TIMEOUT); it prints each
// request's end as "request N: finish=<reason> status=<status>" and exits through
// ReportExit (MPI_Abort after a communicator failure).

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "comm/mpi/mpi_communicator.h"
#include "comm/mpi/mpi_runtime.h"
#include "launcher/process.h"
#include "runtime/core/stream.h"
#include "runtime/core/tensor.h"
#include "runtime/engine/engine.h"
#include "runtime/model/default_model.h"

namespace tessera::engine {
namespace {

int Run(const char* scenario, int* argc, char*** argv) {
  auto runtime = comm::MpiRuntime::Initialize(argc, argv);
  if (!runtime.ok()) return launcher::ReportExit(runtime.status());
  auto options = comm::CommOptions::FromEnvironment();
  if (!options.ok()) return launcher::ReportExit(options.status());
  auto world = comm::MpiCommunicator::CreateWorld(*options);
  if (!world.ok()) return launcher::ReportExit(world.status());
  auto dir = model::EnsureDefaultModel();
  if (!dir.ok()) return launcher::ReportExit(dir.status());
  auto model = model::Transformer::Load(*dir, **world);
  if (!model.ok()) return launcher::ReportExit(model.status());
  EngineOptions engine_options;
  engine_options.num_blocks = 1024;
  auto engine = Engine::Create(**model, **world, nullptr, engine_options);
  if (!engine.ok()) return launcher::ReportExit(engine.status());

  if (std::strcmp(scenario, "huge-plan") == 0) {
    if ((*engine)->is_leader()) {
      // The first broadcast of a plan: an 8-byte length, then the start of the message.
      std::vector<char> header(4096);
      const int64_t size = int64_t{1} << 40;
      std::memcpy(header.data(), &size, sizeof(size));
      Tensor bytes = Tensor::Wrap(header.data(), DType::kI8, {4096});
      Stream cpu = Stream::Cpu();
      absl::Status sent = (*world)->Broadcast(bytes, 0, cpu);
      std::printf("rank 0: sent the header: %s\n", sent.ToString().c_str());
      std::fflush(stdout);
      return 0;
    }
    return launcher::ReportExit((*engine)->Run());
  }

  std::vector<std::shared_ptr<RequestStream>> streams;
  std::thread saboteur;
  if ((*engine)->is_leader()) {
    for (int i = 0; i < 4; ++i) {
      GenerationRequest request;
      request.prompt_tokens = {1, 2, 3, static_cast<int32_t>(i)};
      request.sampling.max_tokens = 4000;
      request.sampling.ignore_eos = true;
      auto stream = (*engine)->Submit(request);
      if (!stream.ok()) return launcher::ReportExit(stream.status());
      streams.push_back(*stream);
    }
    (*engine)->StopWhenIdle();
  } else if ((*world)->rank() == 1) {
    saboteur = std::thread([scenario] {
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
      if (std::strcmp(scenario, "exit") == 0) std::_Exit(3);
      raise(SIGSTOP);
    });
    saboteur.detach();
  }
  absl::Status status = (*engine)->Run();
  for (auto& stream : streams) {
    TokenEvent event;
    int tokens = 0;
    while (stream->Next(&event)) {
      if (!event.final) {
        ++tokens;
        continue;
      }
      std::printf("request %llu: finish=%s tokens=%d status=%s\n",
                  static_cast<unsigned long long>(stream->id()),
                  FinishReasonName(event.finish_reason), tokens, event.status.ToString().c_str());
    }
  }
  std::fflush(stdout);
  if (status.ok()) {
    std::fprintf(stderr, "rank %d: the engine finished, which it must not\n", (*world)->rank());
    return 0;
  }
  return launcher::ReportExit(status);
}

}  // namespace
}  // namespace tessera::engine

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: engine_fault_probe exit|stall|huge-plan\n");
    return 2;
  }
  return tessera::engine::Run(argv[1], &argc, &argv);
}
