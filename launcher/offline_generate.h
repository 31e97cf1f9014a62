#ifndef TESSERA_LAUNCHER_OFFLINE_GENERATE_H_
#define TESSERA_LAUNCHER_OFFLINE_GENERATE_H_

// `tessera generate --requests in.jsonl --output out.jsonl`: a file of requests through the
// serving engine (continuous batching) on every replica, results written in input order.

#include <string>

#include "absl/status/status.h"
#include "comm/layout.h"
#include "comm/mpi/mpi_communicator.h"
#include "runtime/engine/engine.h"
#include "runtime/model/transformer.h"
#include "runtime/tokenizer/tokenizer.h"

namespace tessera::launcher {

struct OfflineJob {
  std::string requests_path;  // JSON Lines (request_file.h)
  std::string output_path;    // empty: stdout
  engine::EngineOptions engine;
};

// Collective over `world`: world rank 0 reads the requests and writes the results; the
// replicas (layout's DP groups) take the requests round robin. A request that cannot run
// (a malformed line, a bad field) gets an error line in the output and the others go on;
// the status then says how many failed.
absl::Status RunOfflineJob(const OfflineJob& job, comm::MpiCommunicator& world,
                           comm::Layout& layout, model::Transformer& model,
                           const tokenizer::Tokenizer& tokenizer);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_OFFLINE_GENERATE_H_
