#ifndef TESSERA_RUNTIME_ENGINE_STEP_EXECUTOR_H_
#define TESSERA_RUNTIME_ENGINE_STEP_EXECUTOR_H_

// What every rank of a tensor-parallel group does with a StepPlan: apply the delta to its
// copy of the running sequences (tokens, block tables, sampling), run the plan's chunks as
// one batch through its shard of the model, and sample. The leader runs the same code as its
// peers, so their caches and tokens cannot drift apart.

#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "runtime/model/transformer.h"
#include "tessera/v1/step_plan.pb.h"

namespace tessera::engine {

struct SampledToken {
  uint64_t id = 0;  // the sequence
  int32_t token = -1;
  float logprob = 0.0f;
  std::vector<kernels::TokenLogprob> top_logprobs;  // when the sequence asks for them
};

class StepExecutor {
 public:
  // Collective use: every rank of `model`'s group executes the same plans in the same order.
  StepExecutor(model::Transformer& model, model::KvCache& cache) : model_(model), cache_(cache) {}

  // Applies `plan` and runs its chunks. Returns, in chunk order, the token sampled for every
  // chunk that asks for one (and appends it to that sequence). A plan that does not fit what
  // this rank holds (unknown sequence, a chunk past the known tokens or not covered by its
  // blocks, a block outside the cache, an adapter slot that holds no adapter on this rank) is
  // FAILED_PRECONDITION naming the step and sequence;
  // a failed collective is returned as it came.
  absl::StatusOr<std::vector<SampledToken>> Execute(const tessera::v1::StepPlan& plan);

  // Rows that went through the model in the last step.
  int64_t last_step_tokens() const { return last_step_tokens_; }

 private:
  struct Sequence {
    std::vector<int32_t> tokens;
    std::vector<int32_t> blocks;
    model::Transformer::RowSampling sampling;
    int adapter = -1;  // NewSequence.adapter; -1: the base model
  };

  absl::Status Apply(const tessera::v1::StepPlan& plan);
  absl::StatusOr<model::ForwardBatch> BuildBatch(const tessera::v1::StepPlan& plan) const;

  model::Transformer& model_;
  model::KvCache& cache_;
  absl::flat_hash_map<uint64_t, Sequence> sequences_;
  int64_t last_step_tokens_ = 0;
};

}  // namespace tessera::engine

#endif  // TESSERA_RUNTIME_ENGINE_STEP_EXECUTOR_H_
