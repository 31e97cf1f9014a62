#ifndef TESSERA_RUNTIME_ENGINE_SCHEDULER_H_
#define TESSERA_RUNTIME_ENGINE_SCHEDULER_H_

// The group leader's scheduler: which sequences run in the next step, how many of their
// tokens, and in which KV blocks. Its output is the StepPlan every rank executes.
//
// Policy, each step, within a token budget and a limit on running sequences:
//   1. running sequences that need one token (decodes), oldest first, then running sequences
//      still in prefill, each taking a chunk of what is left of the budget (chunked prefill:
//      a long prompt never holds up the decodes);
//   2. when a running sequence needs a block and none is left, the most recently admitted
//      running sequence is preempted: its blocks are released and it goes back to the front
//      of the queue, to be computed again (its full blocks usually stay in the prefix cache);
//   3. if nobody was preempted, waiting sequences are admitted in arrival order while blocks,
//      budget and room remain; each first takes the longest cached prefix of its tokens.
// Not thread-safe: owned by the engine's step loop.

#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/types/span.h"
#include "runtime/engine/block_pool.h"
#include "runtime/engine/prefix_hash.h"
#include "runtime/engine/step_executor.h"
#include "tessera/v1/step_plan.pb.h"

namespace tessera::engine {

struct SchedulerOptions {
  int block_size = 16;
  int max_running = 64;       // sequences in one step at most
  int max_step_tokens = 512;  // tokens through the model in one step at most
};

struct SchedulerCounts {
  int waiting = 0;
  int running = 0;
  int64_t preemptions = 0;
};

class Scheduler {
 public:
  Scheduler(BlockPool& pool, SchedulerOptions options) : pool_(pool), options_(options) {}

  // A new sequence at the back of the queue: its prompt tokens, the tokens it generated
  // before (a request resumed from a group that failed: computed like the prompt, but its
  // draws continue after them), how it samples, the slot of the LoRA adapter it runs with
  // (-1: the base model) and the root of its prefix-hash chain (PrefixHashRoot of the
  // adapter's name), which keeps its cached blocks apart from other adapters'.
  void Add(uint64_t id, const std::vector<int32_t>& prompt, const std::vector<int32_t>& generated,
           const tessera::v1::SamplingPlan& sampling, int adapter = -1,
           uint64_t prefix_root = kPrefixHashRoot);
  // Ends a sequence (finished or cancelled): its blocks are released now, and the next plan
  // tells the ranks to forget it. Unknown ids are ignored.
  void Remove(uint64_t id);

  // The next step. May be empty of chunks (nothing to run, or nothing fits yet); pending
  // removals travel in it anyway.
  tessera::v1::StepPlan NextPlan();
  // The last plan: the ranks leave their step loop.
  tessera::v1::StepPlan ShutdownPlan();
  // After the ranks executed `plan`: advances what each chunk computed, appends the sampled
  // tokens, and records the blocks that became full in the prefix cache.
  void Completed(const tessera::v1::StepPlan& plan, absl::Span<const SampledToken> sampled);

  bool has_work() const { return !waiting_.empty() || !running_.empty(); }
  bool contains(uint64_t id) const { return sequences_.contains(id); }
  bool has_pending_removals() const { return !removed_.empty(); }
  SchedulerCounts counts() const;

  // Of a live sequence: its tokens (prompt then generated), prompt length, how many of its
  // prompt tokens were found in the prefix cache at its first admission, preemptions.
  const std::vector<int32_t>& tokens(uint64_t id) const { return sequences_.at(id)->tokens; }
  int prompt_length(uint64_t id) const { return sequences_.at(id)->prompt_length; }
  int cached_prompt_tokens(uint64_t id) const { return sequences_.at(id)->cached_prompt_tokens; }
  int preemptions(uint64_t id) const { return sequences_.at(id)->preemptions; }

 private:
  struct Sequence {
    uint64_t id = 0;
    std::vector<int32_t> tokens;
    int prompt_length = 0;
    tessera::v1::SamplingPlan sampling;
    int adapter = -1;                        // Transformer::LoadAdapter's slot; -1: the base model
    uint64_t prefix_root = kPrefixHashRoot;  // the parent of its first block's hash
    int computed = 0;                        // tokens whose KV is in the cache
    std::vector<int32_t> blocks;             // the block table
    int hashed_blocks = 0;                   // leading blocks registered in the prefix cache
    uint64_t last_hash = 0;                  // hash of block hashed_blocks - 1
    bool known_to_ranks = false;             // sent in a plan's new_sequences
    bool first_admission = true;
    int cached_prompt_tokens = 0;
    int preemptions = 0;
  };

  // Grows `sequence`'s blocks to hold `tokens` tokens; false (nothing taken) when the pool
  // has too few.
  bool Reserve(Sequence& sequence, int tokens, tessera::v1::StepPlan& plan);
  void ReleaseBlocks(Sequence& sequence);
  void Preempt(Sequence& sequence, tessera::v1::StepPlan& plan);
  bool Admit(Sequence& sequence, int& budget, tessera::v1::StepPlan& plan);
  void AddChunk(Sequence& sequence, int start, int count, tessera::v1::StepPlan& plan);
  tessera::v1::BlockTableUpdate& UpdateFor(uint64_t id, tessera::v1::StepPlan& plan);

  BlockPool& pool_;
  SchedulerOptions options_;
  absl::flat_hash_map<uint64_t, std::unique_ptr<Sequence>> sequences_;
  std::deque<Sequence*> waiting_;
  std::vector<Sequence*> running_;  // in admission order
  std::vector<uint64_t> removed_;   // to tell the ranks in the next plan
  uint64_t step_ = 0;
  int64_t preemptions_ = 0;
};

}  // namespace tessera::engine

#endif  // TESSERA_RUNTIME_ENGINE_SCHEDULER_H_
