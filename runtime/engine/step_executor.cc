#include "runtime/engine/step_executor.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "runtime/core/status_macros.h"

namespace tessera::engine {
namespace {

absl::Status PlanError(const tessera::v1::StepPlan& plan, uint64_t id, absl::string_view what) {
  return absl::FailedPreconditionError(
      absl::StrCat("step plan #", plan.step(), ", sequence ", id, ": ", what));
}

}  // namespace

absl::Status StepExecutor::Apply(const tessera::v1::StepPlan& plan) {
  if (plan.version() != tessera::v1::STEP_PLAN_VERSION_1) {
    return absl::FailedPreconditionError(absl::StrCat(
        "step plan #", plan.step(), " has version ", static_cast<int>(plan.version()),
        "; this rank understands version ", static_cast<int>(tessera::v1::STEP_PLAN_VERSION_1)));
  }
  for (uint64_t id : plan.removed()) {
    if (sequences_.erase(id) == 0) return PlanError(plan, id, "removed but never added");
  }
  for (const tessera::v1::NewSequence& added : plan.new_sequences()) {
    Sequence sequence;
    sequence.tokens.assign(added.tokens().begin(), added.tokens().end());
    const tessera::v1::SamplingPlan& sampling = added.sampling();
    sequence.sampling.params = {.temperature = sampling.temperature(),
                                .top_k = sampling.top_k(),
                                .top_p = sampling.top_p(),
                                .seed = sampling.seed(),
                                .presence_penalty = sampling.presence_penalty(),
                                .frequency_penalty = sampling.frequency_penalty()};
    sequence.sampling.logprob = sampling.logprobs();
    sequence.sampling.top_logprobs = sampling.top_logprobs();
    if (added.has_adapter()) {
      // A slot this rank never filled would make Forward refuse the whole step; a peer's bad
      // plan is refused here, naming the sequence, before anything runs.
      if (!model_.HasAdapter(added.adapter())) {
        return PlanError(
            plan, added.id(),
            absl::StrCat("adapter slot ", added.adapter(), " holds no adapter on this rank"));
      }
      sequence.adapter = added.adapter();
    }
    if (!sequences_.try_emplace(added.id(), std::move(sequence)).second) {
      return PlanError(plan, added.id(), "added twice");
    }
  }
  for (const tessera::v1::BlockTableUpdate& update : plan.block_tables()) {
    auto it = sequences_.find(update.id());
    if (it == sequences_.end()) return PlanError(plan, update.id(), "blocks for an unknown id");
    if (update.reset()) it->second.blocks.clear();
    for (int32_t block : update.append()) {
      if (block < 0 || block >= cache_.num_blocks) {
        return PlanError(
            plan, update.id(),
            absl::StrCat("block ", block, " outside the cache of ", cache_.num_blocks, " blocks"));
      }
      it->second.blocks.push_back(block);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<model::ForwardBatch> StepExecutor::BuildBatch(
    const tessera::v1::StepPlan& plan) const {
  model::ForwardBatch batch;
  const int block_size = cache_.block_size;
  bool any_adapter = false;
  for (const tessera::v1::ScheduledChunk& chunk : plan.chunks()) {
    const Sequence& sequence = sequences_.at(chunk.id());
    batch.max_blocks = std::max(batch.max_blocks, static_cast<int>(sequence.blocks.size()));
    any_adapter = any_adapter || sequence.adapter >= 0;
  }
  // Left empty when every sequence runs on the base: Forward then takes no adapter path (and
  // a GPU, which runs no adapters yet, serves base requests as before).
  if (any_adapter) {
    for (const tessera::v1::ScheduledChunk& chunk : plan.chunks()) {
      batch.adapters.push_back(sequences_.at(chunk.id()).adapter);
    }
  }
  batch.query_starts.push_back(0);
  for (const tessera::v1::ScheduledChunk& chunk : plan.chunks()) {
    const Sequence& sequence = sequences_.at(chunk.id());
    const int64_t end = int64_t{chunk.start()} + chunk.count();
    if (chunk.start() < 0 || chunk.count() <= 0 ||
        end > static_cast<int64_t>(sequence.tokens.size())) {
      return PlanError(plan, chunk.id(),
                       absl::StrCat("chunk [", chunk.start(), ", ", end, ") outside its ",
                                    sequence.tokens.size(), " tokens"));
    }
    if (chunk.sample() && end != static_cast<int64_t>(sequence.tokens.size())) {
      return PlanError(plan, chunk.id(), "sampling before the last known token");
    }
    if (end > static_cast<int64_t>(sequence.blocks.size()) * block_size) {
      return PlanError(plan, chunk.id(),
                       absl::StrCat("chunk ends at ", end, " but its ", sequence.blocks.size(),
                                    " blocks hold ", sequence.blocks.size() * block_size));
    }
    for (int64_t p = chunk.start(); p < end; ++p) {
      batch.tokens.push_back(sequence.tokens[p]);
      batch.positions.push_back(static_cast<int32_t>(p));
      batch.slot_mapping.push_back(int64_t{sequence.blocks[p / block_size]} * block_size +
                                   p % block_size);
    }
    batch.query_starts.push_back(static_cast<int32_t>(batch.tokens.size()));
    batch.context_lens.push_back(static_cast<int32_t>(end));
    std::vector<int32_t> row(batch.max_blocks, 0);
    std::copy(sequence.blocks.begin(), sequence.blocks.end(), row.begin());
    batch.block_tables.insert(batch.block_tables.end(), row.begin(), row.end());
  }
  return batch;
}

absl::StatusOr<std::vector<SampledToken>> StepExecutor::Execute(const tessera::v1::StepPlan& plan) {
  last_step_tokens_ = 0;
  TESSERA_RETURN_IF_ERROR(Apply(plan));
  std::vector<SampledToken> sampled;
  if (plan.chunks().empty()) return sampled;
  for (const tessera::v1::ScheduledChunk& chunk : plan.chunks()) {
    if (!sequences_.contains(chunk.id())) return PlanError(plan, chunk.id(), "not known");
  }
  TESSERA_ASSIGN_OR_RETURN(model::ForwardBatch batch, BuildBatch(plan));
  last_step_tokens_ = static_cast<int64_t>(batch.tokens.size());
  TESSERA_ASSIGN_OR_RETURN(Tensor logits, model_.Forward(batch, cache_, /*all_positions=*/false));

  // The rows (one per chunk) that choose a token.
  std::vector<int> rows;
  std::vector<model::Transformer::RowSampling> choices;
  for (int c = 0; c < plan.chunks_size(); ++c) {
    const tessera::v1::ScheduledChunk& chunk = plan.chunks(c);
    if (!chunk.sample()) continue;
    rows.push_back(c);
    const Sequence& sequence = sequences_.at(chunk.id());
    model::Transformer::RowSampling choice = sequence.sampling;
    choice.draw = chunk.draw();
    // The draw counts the tokens generated so far, which end the sequence (resumed ones
    // included): what the penalties count.
    if (chunk.draw() > sequence.tokens.size()) {
      return PlanError(
          plan, chunk.id(),
          absl::StrCat("draw ", chunk.draw(), " past its ", sequence.tokens.size(), " tokens"));
    }
    choice.generated = absl::MakeConstSpan(sequence.tokens).last(chunk.draw());
    choices.push_back(choice);
  }
  if (rows.empty()) return sampled;
  const int64_t width = logits.dim(1);
  Tensor chosen = logits;
  if (rows.size() != static_cast<size_t>(plan.chunks_size())) {
    TESSERA_ASSIGN_OR_RETURN(
        chosen, Tensor::Empty(DType::kF32, {static_cast<int64_t>(rows.size()), width}));
    for (size_t r = 0; r < rows.size(); ++r) {
      std::memcpy(chosen.data<float>() + r * width, logits.data<float>() + rows[r] * width,
                  width * sizeof(float));
    }
  }
  TESSERA_ASSIGN_OR_RETURN(std::vector<model::Transformer::SampledToken> tokens,
                           model_.SampleRows(chosen, choices));
  // Appended only now: `choices` view the sequences' tokens.
  for (size_t r = 0; r < rows.size(); ++r) {
    sequences_.at(plan.chunks(rows[r]).id())
        .tokens.push_back(static_cast<int32_t>(tokens[r].token));
  }
  for (size_t r = 0; r < rows.size(); ++r) {
    uint64_t id = plan.chunks(rows[r]).id();
    int32_t token = static_cast<int32_t>(tokens[r].token);
    sampled.push_back({id, token, tokens[r].logprob, std::move(tokens[r].top_logprobs)});
  }
  return sampled;
}

}  // namespace tessera::engine
