#include "launcher/bench_engine_run.h"

#include <mpi.h>

#include <memory>
#include <random>

#include "absl/time/clock.h"
#include "runtime/core/status_macros.h"

namespace tessera::launcher {

absl::StatusOr<EngineRunFigures> RunRandomRequests(model::Transformer& model,
                                                   comm::Communicator& tp,
                                                   const engine::EngineOptions& options,
                                                   const RandomRequests& requests) {
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<engine::Engine> engine,
                           engine::Engine::Create(model, tp, nullptr, options));
  std::vector<std::shared_ptr<engine::RequestStream>> streams;
  if (engine->is_leader()) {
    std::mt19937 random(1234);
    for (int i = 0; i < requests.count; ++i) {
      engine::GenerationRequest request;
      for (int t = 0; t < requests.prompt_tokens; ++t) {
        request.prompt_tokens.push_back(static_cast<int32_t>(random() % model.config().vocab_size));
      }
      request.sampling.max_tokens = requests.output_tokens;
      request.sampling.ignore_eos = true;
      if (!requests.adapters.empty()) {
        request.adapter = requests.adapters[i % requests.adapters.size()];
      }
      TESSERA_ASSIGN_OR_RETURN(std::shared_ptr<engine::RequestStream> stream,
                               engine->Submit(std::move(request)));
      streams.push_back(std::move(stream));
    }
    engine->StopWhenIdle();
  }
  MPI_Barrier(MPI_COMM_WORLD);
  absl::Time start = absl::Now();
  TESSERA_RETURN_IF_ERROR(engine->Run());
  EngineRunFigures figures;
  figures.requests = requests.count;
  figures.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  for (auto& stream : streams) {
    engine::TokenEvent event;
    while (stream->Next(&event)) {
      if (!event.final) continue;
      if (!event.status.ok()) return event.status;
      const double output = event.usage.completion_tokens;
      figures.output_tokens += event.usage.completion_tokens;
      if (output >= 1) {
        figures.decode_context_tokens +=
            (output - 1) * requests.prompt_tokens + output * (output - 1) / 2;
      }
    }
  }
  figures.kv_bytes_per_token =
      static_cast<double>(engine->kv_cache_bytes()) / engine->capacity_tokens();
  engine::EngineStats stats = engine->Stats();
  figures.mean_batch =
      stats.steps > 0 ? static_cast<double>(stats.step_sequences) / stats.steps : 0.0;
  figures.steps = stats.steps;
  return figures;
}

}  // namespace tessera::launcher
