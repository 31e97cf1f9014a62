#ifndef TESSERA_RUNTIME_ENGINE_ENGINE_H_
#define TESSERA_RUNTIME_ENGINE_ENGINE_H_

// The serving engine of one tensor-parallel group: continuous batching over a paged KV cache
// with prefix reuse and chunked prefill.
//
// Every rank of the group creates an Engine over its shard and calls Run(). On the leader
// (TP rank 0) Run() is the step loop: it takes submitted requests, schedules a step
// (scheduler.h), broadcasts its StepPlan, executes it like every rank does
// (step_executor.h), and turns the sampled tokens into each request's stream of events. On
// the other ranks Run() executes the plans it receives until the leader shuts down.
//
// Thread safety: Submit, Cancel, Stats, CachedBlockHashes, Adapters, LoadAdapter,
// UnloadAdapter, StopWhenIdle and Shutdown may be called from any thread of the leader's
// process while Run() loops on another. Only the
// thread in Run() touches the communicator.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "comm/communicator.h"
#include "runtime/engine/adapter_catalog.h"
#include "runtime/engine/adapter_slots.h"
#include "runtime/engine/interleaved_work.h"
#include "runtime/engine/request.h"
#include "runtime/engine/request_stream.h"
#include "runtime/model/transformer.h"
#include "runtime/tokenizer/tokenizer.h"

namespace tessera::engine {

struct EngineOptions {
  int block_size = 16;                        // tokens per KV block
  int64_t kv_cache_bytes = int64_t{1} << 30;  // per rank; sets the number of blocks
  int num_blocks = 0;                         // > 0: exactly this many (overrides the bytes)
  int max_running = 64;                       // sequences in one step at most
  int max_step_tokens = 512;                  // tokens through the model in one step at most
  bool prefix_caching = true;
  int max_queued = 4096;  // waiting requests before Submit refuses
  // How long an idle leader waits before telling its peers it is alive (an empty plan);
  // well under the communicator's deadline.
  absl::Duration idle_interval = absl::Milliseconds(100);
  // Loaded into the model by Create, on every rank in this order (so that a slot names the
  // same adapter on every rank: the options must be the same on every rank), and unloaded
  // when the engine is destroyed. Names must be non-empty and distinct. More can be loaded
  // while the engine runs (LoadAdapter).
  std::vector<AdapterSpec> adapters;
  // Adapters held in memory at once; 0: no limit. Past it, the least recently used adapter
  // that no request is running on is unloaded, and loaded again from its directory when a
  // request names it (the request waits for that step).
  int max_adapters = 0;
  // Makes work every rank runs between serving steps (interleaved_work.h) from a spec, on
  // every rank (collective over the group: the ranks agree that all made it). Set on every
  // rank or on none. `interleaved_spec`, when not empty, starts one with the engine; more
  // start with StartInterleaved once one has finished. A finished work is dropped on every
  // rank. Its pieces run after serving steps (interleaved_budget.h): while requests are
  // served, about `interleaved_share` of the group's busy time, or, with
  // `interleaved_target_step` above zero, what each serving step leaves of that time between
  // two tokens; while none are, in bursts.
  InterleavedWorkFactory interleaved_factory;
  std::string interleaved_spec;
  double interleaved_share = 0.25;
  absl::Duration interleaved_target_step = absl::ZeroDuration();
};

struct EngineStats {
  int queued = 0;   // submitted, not yet admitted (including preempted ones)
  int running = 0;  // admitted and holding KV blocks
  int kv_blocks_total = 0;
  int kv_blocks_used = 0;    // held by running sequences
  int kv_blocks_cached = 0;  // holding a known prefix (held or reusable)
  int block_size = 0;
  int64_t prefix_lookups = 0;  // full prompt blocks looked up at admission
  int64_t prefix_hits = 0;     // ... found in the cache
  int64_t preemptions = 0;
  int64_t requests_finished = 0;
  int64_t steps = 0;           // steps that ran the model
  int64_t loop_turns = 0;      // turns of the leader's loop: steps and idle wake-ups (liveness)
  int64_t step_tokens = 0;     // tokens through the model (prompt chunks and decodes)
  int64_t step_sequences = 0;  // sum over steps of the sequences in them (mean batch size)
  int64_t prompt_tokens = 0;   // prompt tokens computed (cache hits excluded)
  int64_t output_tokens = 0;   // tokens generated
  double busy_seconds = 0;     // time spent in steps that ran the model
  double output_tokens_per_second = 0;  // over the last few seconds
  int64_t interleaved_pieces = 0;       // of the interleaved work, run so far
  double interleaved_seconds = 0;       // ... and the time they took
};

class Engine {
 public:
  // Loads options.adapters into `model` on every rank, sizes the KV cache from `options`
  // (the same on every rank: the smallest any rank can hold) and allocates it. Collective
  // over `tp`, which must be `model`'s group. `tokenizer` (for text prompts, output text and
  // stop strings) may be null on ranks other than the leader, and on the leader when
  // requests carry token ids and nobody reads text. An adapter that any rank fails to load
  // fails Create on every rank (the failing rank's error names the adapter and directory;
  // INVALID_ARGUMENT for an empty or repeated name), with nothing left loaded.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(model::Transformer& model,
                                                        comm::Communicator& tp,
                                                        const tokenizer::Tokenizer* tokenizer,
                                                        const EngineOptions& options);
  ~Engine();

  bool is_leader() const { return tp_.rank() == 0; }
  int num_blocks() const { return num_blocks_; }
  int block_size() const { return options_.block_size; }
  // Tokens the cache holds at once, and its bytes per token on this rank.
  int64_t capacity_tokens() const { return int64_t{num_blocks_} * options_.block_size; }
  int64_t kv_bytes_per_token() const { return model_.KvBytesPerToken(); }
  // What the cache's tensors take on this rank (capacity_tokens() x kv_bytes_per_token()).
  int64_t kv_cache_bytes() const;
  int64_t max_model_length() const { return model_.config().max_position_embeddings; }
  // The adapters requests may name, in the order they were first loaded.
  std::vector<AdapterState> Adapters() const { return catalog_.States(); }

  // Leader only, while Run() loops. Loads a PEFT adapter on every rank under `adapter.name`
  // and returns once the group has it (or has failed to: the error names the adapter, the
  // directory and the rank; nothing is left loaded). A name already served is replaced:
  // requests running on the old adapter finish on it, and it is unloaded after them; later
  // requests get the new one. INVALID_ARGUMENT for a name that is empty or has characters
  // other than letters, digits and "._-"; UNAVAILABLE once the engine has stopped.
  absl::Status LoadAdapter(AdapterSpec adapter);
  // LoadAdapter without waiting: `done` is called with its outcome on the engine's loop
  // thread (or on this one, when the engine has stopped). For the loop's own thread (an
  // interleaved fine-tune publishing its adapter), where LoadAdapter would wait forever.
  void LoadAdapterAsync(AdapterSpec adapter, std::function<void(absl::Status)> done);

  // Leader only, while Run() loops. Starts interleaved work made from `spec` on every rank
  // and returns once all made it, or with the error the failing rank's factory gave (every
  // rank fails alike). FAILED_PRECONDITION while a work is running or without a factory.
  absl::Status StartInterleaved(const std::string& spec);
  // Leader only. Requests naming `name` are refused from now on; running ones finish, and
  // the adapter is unloaded after them. NOT_FOUND naming the served ones for an unknown name.
  absl::Status UnloadAdapter(const std::string& name);

  // Leader only. Queues a request and returns its stream of events. Refused at once:
  // INVALID_ARGUMENT naming the field (an empty prompt, a token outside the vocabulary, bad
  // sampling options, an adapter the engine did not load, or a request that can never fit:
  // prompt + max_tokens beyond the model's context or the whole cache), RESOURCE_EXHAUSTED
  // when the queue is full,
  // UNAVAILABLE once the engine has stopped or failed.
  absl::StatusOr<std::shared_ptr<RequestStream>> Submit(GenerationRequest request);
  // Ends a request (finish reason cancelled) at the next step boundary, releasing its
  // blocks. Unknown or finished ids are ignored.
  void Cancel(uint64_t id);
  EngineStats Stats() const;
  // Prefix hashes (prefix_hash.h) of the blocks the cache holds.
  std::vector<uint64_t> CachedBlockHashes() const;

  // The step loop (see above). Returns when shut down, or with the error that stopped the
  // group (a failed collective, a plan a rank refused); every unfinished request then ends
  // with finish reason error and that status.
  absl::Status Run();
  // Leader: Run() returns once nothing is queued or running (offline use).
  void StopWhenIdle();
  // Leader: Run() ends unfinished requests as cancelled and returns at the next step
  // boundary; the peers' Run() returns too.
  void Shutdown();

  // Called on the leader's loop after every step that ran the model (progress display).
  void SetStepObserver(std::function<void(const EngineStats&)> observer) {
    step_observer_ = std::move(observer);
  }

 private:
  struct Live;
  class Loop;

  // A StartInterleaved call waiting for the step loop.
  struct PendingStart {
    std::string spec;
    std::function<void(absl::Status)> done;
  };
  // A LoadAdapter call waiting for the step loop.
  struct PendingLoad {
    AdapterSpec adapter;
    std::function<void(absl::Status)> done;
  };

  Engine(model::Transformer& model, comm::Communicator& tp, const tokenizer::Tokenizer* tokenizer,
         const EngineOptions& options, model::KvCache cache, std::unique_ptr<AdapterSlots> slots,
         const std::vector<int>& adapter_slots);
  absl::Status ValidateRequest(const GenerationRequest& request,
                               const std::vector<int32_t>& tokens) const;
  // LoadAdapter's checks before anything is queued.
  absl::Status CheckLoad(const AdapterSpec& adapter) const;

  model::Transformer& model_;
  comm::Communicator& tp_;
  const tokenizer::Tokenizer* tokenizer_;
  const EngineOptions options_;
  const int num_blocks_;
  const uint64_t seed_base_;  // for requests that name no seed
  // The adapters in the model's slots (every rank), and which names they serve (the leader);
  // before the loop and the requests that hold their versions, which go first.
  std::unique_ptr<AdapterSlots> slots_;
  AdapterCatalog catalog_;
  std::unique_ptr<Loop> loop_;
  std::function<void(const EngineStats&)> step_observer_;

  // Between the callers' threads and the loop.
  mutable absl::Mutex mutex_;
  std::vector<std::unique_ptr<Live>> inbox_ ABSL_GUARDED_BY(mutex_);
  std::vector<uint64_t> cancels_ ABSL_GUARDED_BY(mutex_);
  std::vector<PendingLoad> adapter_loads_ ABSL_GUARDED_BY(mutex_);
  std::vector<PendingStart> interleaved_starts_ ABSL_GUARDED_BY(mutex_);
  bool adapters_removed_ ABSL_GUARDED_BY(mutex_) = false;  // wakes the loop to unload
  int waiting_in_scheduler_ ABSL_GUARDED_BY(mutex_) = 0;   // as of the last step
  uint64_t next_id_ ABSL_GUARDED_BY(mutex_) = 1;
  bool stop_when_idle_ ABSL_GUARDED_BY(mutex_) = false;
  bool shutdown_ ABSL_GUARDED_BY(mutex_) = false;
  bool stopped_ ABSL_GUARDED_BY(mutex_) = false;
  EngineStats stats_ ABSL_GUARDED_BY(mutex_);
  std::vector<uint64_t> cached_hashes_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace tessera::engine

#endif  // TESSERA_RUNTIME_ENGINE_ENGINE_H_
