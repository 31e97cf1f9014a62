#include "runtime/engine/scheduler.h"

#include <algorithm>

#include "absl/container/flat_hash_set.h"
#include "runtime/engine/prefix_hash.h"

namespace tessera::engine {
namespace {

int BlocksFor(int tokens, int block_size) { return (tokens + block_size - 1) / block_size; }

}  // namespace

void Scheduler::Add(uint64_t id, const std::vector<int32_t>& prompt,
                    const std::vector<int32_t>& generated,
                    const tessera::v1::SamplingPlan& sampling, int adapter, uint64_t prefix_root) {
  auto sequence = std::make_unique<Sequence>();
  sequence->id = id;
  sequence->prompt_length = static_cast<int>(prompt.size());
  sequence->tokens.reserve(prompt.size() + generated.size());
  sequence->tokens.insert(sequence->tokens.end(), prompt.begin(), prompt.end());
  sequence->tokens.insert(sequence->tokens.end(), generated.begin(), generated.end());
  sequence->sampling = sampling;
  sequence->adapter = adapter;
  sequence->prefix_root = prefix_root;
  sequence->last_hash = prefix_root;
  waiting_.push_back(sequence.get());
  sequences_[id] = std::move(sequence);
}

void Scheduler::Remove(uint64_t id) {
  auto it = sequences_.find(id);
  if (it == sequences_.end()) return;
  Sequence* sequence = it->second.get();
  waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), sequence), waiting_.end());
  running_.erase(std::remove(running_.begin(), running_.end(), sequence), running_.end());
  ReleaseBlocks(*sequence);
  if (sequence->known_to_ranks) removed_.push_back(id);
  sequences_.erase(it);
}

SchedulerCounts Scheduler::counts() const {
  return {static_cast<int>(waiting_.size()), static_cast<int>(running_.size()), preemptions_};
}

tessera::v1::BlockTableUpdate& Scheduler::UpdateFor(uint64_t id, tessera::v1::StepPlan& plan) {
  for (tessera::v1::BlockTableUpdate& update : *plan.mutable_block_tables()) {
    if (update.id() == id) return update;
  }
  tessera::v1::BlockTableUpdate* update = plan.add_block_tables();
  update->set_id(id);
  return *update;
}

bool Scheduler::Reserve(Sequence& sequence, int tokens, tessera::v1::StepPlan& plan) {
  int needed = BlocksFor(tokens, options_.block_size) - static_cast<int>(sequence.blocks.size());
  if (needed <= 0) return true;
  if (pool_.num_available() < needed) return false;
  tessera::v1::BlockTableUpdate& update = UpdateFor(sequence.id, plan);
  for (int i = 0; i < needed; ++i) {
    int block = *pool_.Allocate();
    sequence.blocks.push_back(block);
    update.add_append(block);
  }
  return true;
}

void Scheduler::ReleaseBlocks(Sequence& sequence) {
  // Last block first: with prefix caching the leading blocks of a prefix are the last to be
  // evicted, which keeps the longest reusable prefix.
  for (auto it = sequence.blocks.rbegin(); it != sequence.blocks.rend(); ++it) pool_.Release(*it);
  sequence.blocks.clear();
  sequence.computed = 0;
  sequence.hashed_blocks = 0;
  sequence.last_hash = sequence.prefix_root;
}

void Scheduler::Preempt(Sequence& sequence, tessera::v1::StepPlan& plan) {
  ReleaseBlocks(sequence);
  tessera::v1::BlockTableUpdate& update = UpdateFor(sequence.id, plan);
  update.set_reset(true);
  update.clear_append();
  ++sequence.preemptions;
  ++preemptions_;
  running_.erase(std::remove(running_.begin(), running_.end(), &sequence), running_.end());
  waiting_.push_front(&sequence);
}

void Scheduler::AddChunk(Sequence& sequence, int start, int count, tessera::v1::StepPlan& plan) {
  tessera::v1::ScheduledChunk* chunk = plan.add_chunks();
  chunk->set_id(sequence.id);
  chunk->set_start(start);
  chunk->set_count(count);
  chunk->set_sample(start + count == static_cast<int>(sequence.tokens.size()));
  chunk->set_draw(sequence.tokens.size() - sequence.prompt_length);
}

bool Scheduler::Admit(Sequence& sequence, int& budget, tessera::v1::StepPlan& plan) {
  const int block_size = options_.block_size;
  const int length = static_cast<int>(sequence.tokens.size());
  // The last token is always computed (its logits choose the next one), so at most the full
  // blocks before it come from the cache.
  std::vector<uint64_t> hashes = PrefixBlockHashes(
      absl::MakeConstSpan(sequence.tokens).first((length - 1)), block_size, sequence.prefix_root);
  std::vector<int> cached = pool_.AcquireCachedPrefix(hashes);
  const int start = static_cast<int>(cached.size()) * block_size;
  const int count = std::min(length - start, budget);
  const int needed = BlocksFor(start + count, block_size) - static_cast<int>(cached.size());
  if (pool_.num_available() < needed) {
    for (auto it = cached.rbegin(); it != cached.rend(); ++it) pool_.Release(*it);
    return false;
  }
  if (pool_.prefix_caching()) pool_.RecordLookup(hashes.size(), cached.size());
  if (!sequence.known_to_ranks) {
    tessera::v1::NewSequence* added = plan.add_new_sequences();
    added->set_id(sequence.id);
    added->mutable_tokens()->Assign(sequence.tokens.begin(), sequence.tokens.end());
    *added->mutable_sampling() = sequence.sampling;
    if (sequence.adapter >= 0) added->set_adapter(sequence.adapter);
    sequence.known_to_ranks = true;
  }
  if (sequence.first_admission) {
    sequence.cached_prompt_tokens = std::min(start, sequence.prompt_length);
    sequence.first_admission = false;
  }
  sequence.blocks.assign(cached.begin(), cached.end());
  sequence.hashed_blocks = static_cast<int>(cached.size());
  sequence.last_hash = cached.empty() ? sequence.prefix_root : hashes[cached.size() - 1];
  sequence.computed = start;
  if (!cached.empty()) {
    tessera::v1::BlockTableUpdate& update = UpdateFor(sequence.id, plan);
    for (int block : cached) update.add_append(block);
  }
  Reserve(sequence, start + count, plan);  // cannot fail: checked above
  AddChunk(sequence, start, count, plan);
  budget -= count;
  return true;
}

tessera::v1::StepPlan Scheduler::NextPlan() {
  tessera::v1::StepPlan plan;
  plan.set_version(tessera::v1::STEP_PLAN_VERSION_1);
  plan.set_step(++step_);
  plan.mutable_removed()->Assign(removed_.begin(), removed_.end());
  removed_.clear();

  int budget = options_.max_step_tokens;
  // Decodes first, then prefills, each oldest first.
  std::vector<Sequence*> order;
  for (Sequence* s : running_) {
    if (s->tokens.size() - s->computed == 1) order.push_back(s);
  }
  for (Sequence* s : running_) {
    if (s->tokens.size() - s->computed != 1) order.push_back(s);
  }
  absl::flat_hash_set<Sequence*> scheduled, preempted;
  for (Sequence* sequence : order) {
    if (budget <= 0) break;
    if (preempted.contains(sequence)) continue;
    const int count =
        std::min(static_cast<int>(sequence->tokens.size()) - sequence->computed, budget);
    bool runs = true;
    while (!Reserve(*sequence, sequence->computed + count, plan)) {
      // Make room: the most recently admitted sequence not already in this step.
      Sequence* victim = nullptr;
      for (auto it = running_.rbegin(); it != running_.rend(); ++it) {
        if (*it != sequence && !scheduled.contains(*it)) {
          victim = *it;
          break;
        }
      }
      if (victim == nullptr) victim = sequence;
      Preempt(*victim, plan);
      preempted.insert(victim);
      if (victim == sequence) {
        runs = false;
        break;
      }
    }
    if (!runs) continue;
    AddChunk(*sequence, sequence->computed, count, plan);
    scheduled.insert(sequence);
    budget -= count;
  }
  if (!preempted.empty()) return plan;
  while (!waiting_.empty() && static_cast<int>(running_.size()) < options_.max_running &&
         budget > 0) {
    Sequence* sequence = waiting_.front();
    if (!Admit(*sequence, budget, plan)) break;
    waiting_.pop_front();
    running_.push_back(sequence);
  }
  return plan;
}

tessera::v1::StepPlan Scheduler::ShutdownPlan() {
  tessera::v1::StepPlan plan;
  plan.set_version(tessera::v1::STEP_PLAN_VERSION_1);
  plan.set_step(++step_);
  plan.set_shutdown(true);
  return plan;
}

void Scheduler::Completed(const tessera::v1::StepPlan& plan,
                          absl::Span<const SampledToken> sampled) {
  for (const tessera::v1::ScheduledChunk& chunk : plan.chunks()) {
    auto it = sequences_.find(chunk.id());
    if (it == sequences_.end()) continue;
    it->second->computed = chunk.start() + chunk.count();
  }
  for (const SampledToken& token : sampled) {
    auto it = sequences_.find(token.id);
    if (it != sequences_.end()) it->second->tokens.push_back(token.token);
  }
  const int block_size = options_.block_size;
  for (const tessera::v1::ScheduledChunk& chunk : plan.chunks()) {
    auto it = sequences_.find(chunk.id());
    if (it == sequences_.end()) continue;
    Sequence& sequence = *it->second;
    while ((sequence.hashed_blocks + 1) * block_size <= sequence.computed) {
      const int block = sequence.hashed_blocks;
      sequence.last_hash =
          BlockHash(sequence.last_hash,
                    absl::MakeConstSpan(sequence.tokens).subspan(block * block_size, block_size));
      pool_.Register(sequence.blocks[block], sequence.last_hash);
      ++sequence.hashed_blocks;
    }
  }
}

}  // namespace tessera::engine
