#include "runtime/engine/engine.h"

#include <algorithm>
#include <cstring>
#include <deque>
#include <optional>
#include <random>

#include "absl/cleanup/cleanup.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "comm/agreement.h"
#include "kernels/cpu/sampling.h"
#include "runtime/core/status_macros.h"
#include "runtime/core/stream.h"
#include "runtime/engine/block_pool.h"
#include "runtime/engine/interleaved_budget.h"
#include "runtime/engine/prefix_hash.h"
#include "runtime/engine/scheduler.h"
#include "runtime/engine/step_executor.h"
#include "runtime/model/memory_plan.h"
#include "tessera/v1/step_plan.pb.h"

namespace tessera::engine {
namespace {

using tessera::v1::StepPlan;

// A plan travels in one broadcast of this many bytes (an 8-byte length, then the message),
// plus a second one for the rest when it is longer: decode steps fit in the first.
constexpr int64_t kInlinePlanBytes = 4096;
// The most bytes one plan may take: a step's tokens (max_step_tokens) and block-table changes
// come to kilobytes; anything near this is a broken peer, refused before it is allocated.
constexpr int64_t kMaxPlanBytes = int64_t{64} << 20;

// Which window the recent output rate is measured over.
constexpr absl::Duration kRateWindow = absl::Seconds(5);
// How stale the published prefix hashes may get while the engine is busy (they go to the
// coordinator with each heartbeat, once a second; copying them every step would cost a
// busy engine time in proportion to its cache). An idle engine publishes them every time.
constexpr absl::Duration kHashesRefresh = absl::Milliseconds(50);

absl::Status BroadcastPlan(comm::Communicator& tp, StepPlan& plan) {
  if (tp.size() == 1) return absl::OkStatus();
  const bool root = tp.rank() == 0;
  Stream cpu = Stream::Cpu();
  std::string bytes;
  if (root) plan.SerializeToString(&bytes);
  std::vector<char> inline_buffer(kInlinePlanBytes);
  int64_t size = static_cast<int64_t>(bytes.size());
  if (root && size > kMaxPlanBytes) {
    return absl::InternalError(
        absl::StrCat("step plan of ", size, " bytes; at most ", kMaxPlanBytes));
  }
  std::memcpy(inline_buffer.data(), &size, sizeof(size));
  const int64_t inline_capacity = kInlinePlanBytes - sizeof(size);
  if (root)
    std::memcpy(inline_buffer.data() + sizeof(size), bytes.data(), std::min(size, inline_capacity));
  Tensor head = Tensor::Wrap(inline_buffer.data(), DType::kI8, {kInlinePlanBytes});
  TESSERA_RETURN_IF_ERROR(tp.Broadcast(head, 0, cpu));
  if (root) {
    if (size > inline_capacity) {
      Tensor rest =
          Tensor::Wrap(bytes.data() + inline_capacity, DType::kI8, {size - inline_capacity});
      TESSERA_RETURN_IF_ERROR(tp.Broadcast(rest, 0, cpu));
    }
    return absl::OkStatus();
  }
  std::memcpy(&size, inline_buffer.data(), sizeof(size));
  // A size past what any plan takes is not allocated: the peer is not an engine of this
  // build, or the message was damaged.
  if (size < 0 || size > kMaxPlanBytes) {
    return absl::DataLossError(absl::StrCat(
        "step plan of ", size, " bytes from the group's leader; at most ", kMaxPlanBytes));
  }
  bytes.resize(size);
  std::memcpy(bytes.data(), inline_buffer.data() + sizeof(size), std::min(size, inline_capacity));
  if (size > inline_capacity) {
    Tensor rest =
        Tensor::Wrap(bytes.data() + inline_capacity, DType::kI8, {size - inline_capacity});
    TESSERA_RETURN_IF_ERROR(tp.Broadcast(rest, 0, cpu));
  }
  if (!plan.ParseFromString(bytes)) {
    return absl::DataLossError(absl::StrCat("a step plan of ", size, " bytes does not parse"));
  }
  return absl::OkStatus();
}

// The length of the longest suffix of `text` that begins some stop string (text that must
// be held back while streaming, as it may yet turn into a stop string).
size_t HeldBackForStops(absl::string_view text, const std::vector<std::string>& stops) {
  size_t held = 0;
  for (const std::string& stop : stops) {
    for (size_t n = std::min(stop.size() - 1, text.size()); n > held; --n) {
      if (text.substr(text.size() - n) == absl::string_view(stop).substr(0, n)) {
        held = n;
        break;
      }
    }
  }
  return held;
}

}  // namespace

// A request the leader is serving.
struct Engine::Live {
  uint64_t id = 0;
  std::shared_ptr<RequestStream> stream;
  SamplingOptions sampling;
  tessera::v1::SamplingPlan plan;
  std::vector<int32_t> prompt;
  std::vector<int32_t> resumed;  // generated before, elsewhere (GenerationRequest)
  AdapterHold adapter;           // the adapter version it runs with; empty: the base
  uint64_t prefix_root = kPrefixHashRoot;
  std::optional<tokenizer::StreamingDecoder> decoder;
  std::string text;    // decoded so far (cut at a stop string)
  size_t emitted = 0;  // bytes of `text` already sent
  int generated = 0;
  absl::Time submitted;
  std::optional<absl::Time> scheduled;
  std::optional<absl::Time> first_token;
};

// How often an idle leader asks interleaved work waiting for other groups again.
constexpr absl::Duration kInterleavedWaitPoll = absl::Milliseconds(1);

// What the thread in Run() owns.
class Engine::Loop {
 public:
  Loop(Engine& engine, model::KvCache cache)
      : engine_(engine),
        cache_(std::move(cache)),
        pool_(cache_.num_blocks, engine.options_.prefix_caching),
        scheduler_(pool_, {engine.options_.block_size, engine.options_.max_running,
                           engine.options_.max_step_tokens}),
        executor_(engine.model_, cache_),
        budget_(engine.options_.interleaved_share, engine.options_.interleaved_target_step) {}

  absl::Status RunLeader();
  absl::Status RunFollower();
  void set_work(std::shared_ptr<InterleavedWork> work) { work_ = std::move(work); }
  int64_t cache_bytes() const { return cache_.bytes(); }

 private:
  // Moves submitted requests into the scheduler (or, while their adapter is not resident,
  // into parked_), takes LoadAdapter calls, and applies cancellations.
  void TakeInbox(bool* shutdown, bool* stop_when_idle);
  // A live request into the scheduler, on its adapter's slot.
  void Start(Live& live);
  // Parked requests whose adapter is resident now go to the scheduler.
  void StartParked();
  bool has_adapter_work() const;
  // Adds the catalog's loads and unloads to `plan`, before it is broadcast.
  AdapterCatalog::Changes PlanAdapters(StepPlan& plan, size_t* fresh_count);
  // After every rank applied them: answers LoadAdapter calls, and ends the parked requests
  // whose adapter failed to load.
  void AdaptersApplied(const AdapterCatalog::Changes& changes,
                       const std::vector<absl::StatusOr<int>>& loaded, size_t fresh_count);
  absl::Status Step(StepPlan& plan);
  // Leader: the pieces of interleaved work the next plan runs (budget_), beside requests
  // (`serving`) or not.
  int InterleavedPiecesDue(bool serving);
  // Every rank, after a plan's serving work: its pieces.
  void RunInterleavedPieces(int pieces);
  // Leader, before the plan goes out: drops a finished work, and starts the next one asked
  // for (or refuses it while one runs).
  void PlanInterleaved(StepPlan& plan);
  // Every rank, after the broadcast: the plan's drop and start.
  void ApplyInterleaved(const StepPlan& plan);
  bool interleaved_done() const {
    return work_ != nullptr && (interleaved_failed_ || work_->finished());
  }
  void ProcessToken(Live& live, const SampledToken& sampled);
  // Takes one generated token into `live`'s count and text; the reason it ends the request,
  // or kNone. When the request goes on, the text that can no longer turn into a stop string
  // goes into event->text and counts as emitted.
  FinishReason Advance(Live& live, int32_t token, TokenEvent* event);
  // A resumed request's earlier tokens, replayed without streaming them again (they were
  // sent by the group that failed); ends the request when they already finished it.
  void Replay(Live& live);
  void End(uint64_t id, FinishReason reason, absl::Status status = absl::OkStatus());
  void EndAll(FinishReason reason, const absl::Status& status);
  void PublishStats(double step_seconds, const StepPlan* plan, int64_t prompt_tokens);
  // Runs the pieces the interleaved work must finish first (PiecesBeforeLeaving), then tells
  // the followers to stop.
  absl::Status SendShutdown();

  Engine& engine_;
  model::KvCache cache_;
  BlockPool pool_;
  Scheduler scheduler_;
  StepExecutor executor_;
  absl::flat_hash_map<uint64_t, std::unique_ptr<Live>> live_;
  std::vector<uint64_t> parked_;           // live, waiting for their adapter to be loaded
  std::vector<PendingLoad> loads_;         // LoadAdapter calls for the next plan
  std::shared_ptr<InterleavedWork> work_;  // every rank's part of the interleaved work
  bool interleaved_failed_ = false;        // a piece failed: no more are planned
  InterleavedBudget budget_;               // the leader's
  bool pieces_while_serving_ = false;      // the leader's next pieces run beside requests
  bool interleaved_waiting_ = false;       // its next piece waits for something outside
  std::vector<PendingStart> starts_;       // StartInterleaved calls taken from the engine
  std::deque<std::pair<absl::Time, int64_t>> recent_outputs_;
  absl::Time hashes_published_ = absl::InfinitePast();
};

void Engine::Loop::TakeInbox(bool* shutdown, bool* stop_when_idle) {
  std::vector<std::unique_ptr<Live>> added;
  std::vector<uint64_t> cancels;
  {
    absl::MutexLock lock(&engine_.mutex_);
    added.swap(engine_.inbox_);
    cancels.swap(engine_.cancels_);
    for (PendingLoad& load : engine_.adapter_loads_) loads_.push_back(std::move(load));
    engine_.adapter_loads_.clear();
    for (PendingStart& start : engine_.interleaved_starts_) starts_.push_back(std::move(start));
    engine_.interleaved_starts_.clear();
    engine_.adapters_removed_ = false;
    *shutdown = engine_.shutdown_;
    *stop_when_idle = engine_.stop_when_idle_;
  }
  for (std::unique_ptr<Live>& live : added) {
    const uint64_t id = live->id;
    Live& added_live = *live;
    live_[id] = std::move(live);
    if (!added_live.resumed.empty()) Replay(added_live);
    if (!live_.contains(id)) continue;  // the resumed tokens had finished it
    if (engine_.catalog_.SlotOf(added_live.adapter) >= 0 || added_live.adapter.is_base()) {
      Start(added_live);
    } else {
      parked_.push_back(id);
    }
  }
  for (uint64_t id : cancels) {
    if (live_.contains(id)) End(id, FinishReason::kCancelled);
  }
}

void Engine::Loop::Start(Live& live) {
  engine_.catalog_.Touch(live.adapter);
  scheduler_.Add(live.id, live.prompt, live.resumed, live.plan,
                 engine_.catalog_.SlotOf(live.adapter), live.prefix_root);
}

void Engine::Loop::StartParked() {
  std::vector<uint64_t> still;
  for (uint64_t id : parked_) {
    auto it = live_.find(id);
    if (it == live_.end()) continue;  // ended while parked
    if (engine_.catalog_.SlotOf(it->second->adapter) >= 0) {
      Start(*it->second);
    } else {
      still.push_back(id);
    }
  }
  parked_.swap(still);
}

bool Engine::Loop::has_adapter_work() const {
  return !loads_.empty() || !parked_.empty() || engine_.catalog_.HasUnloadsDue();
}

AdapterCatalog::Changes Engine::Loop::PlanAdapters(StepPlan& plan, size_t* fresh_count) {
  std::vector<std::shared_ptr<AdapterVersion>> fresh, wanted;
  for (const PendingLoad& load : loads_) fresh.push_back(engine_.catalog_.NewVersion(load.adapter));
  for (uint64_t id : parked_) {
    auto it = live_.find(id);
    if (it != live_.end()) wanted.push_back(it->second->adapter.shared_version());
  }
  AdapterCatalog::Changes changes = engine_.catalog_.Plan(fresh, wanted);
  *fresh_count = fresh.size();
  plan.mutable_unload_adapters()->Assign(changes.unload_slots.begin(), changes.unload_slots.end());
  for (const auto& version : changes.loads) {
    tessera::v1::AdapterLoad* load = plan.add_load_adapters();
    load->set_name(version->name);
    load->set_dir(version->dir);
  }
  return changes;
}

void Engine::Loop::AdaptersApplied(const AdapterCatalog::Changes& changes,
                                   const std::vector<absl::StatusOr<int>>& loaded,
                                   size_t fresh_count) {
  engine_.catalog_.Applied(changes, loaded, fresh_count);
  for (size_t i = 0; i < fresh_count; ++i) {
    loads_[i].done(loaded[i].status());
  }
  loads_.erase(loads_.begin(), loads_.begin() + fresh_count);
  for (size_t i = fresh_count; i < changes.loads.size(); ++i) {
    if (loaded[i].ok()) continue;
    // The adapter's directory no longer loads (deleted or changed since it was first read):
    // the requests waiting for it fail, not the group.
    const AdapterVersion* failed = changes.loads[i].get();
    for (uint64_t id : parked_) {
      auto it = live_.find(id);
      if (it != live_.end() && it->second->adapter.version() == failed) {
        End(id, FinishReason::kError, loaded[i].status());
      }
    }
  }
}

void Engine::Loop::End(uint64_t id, FinishReason reason, absl::Status status) {
  auto it = live_.find(id);
  if (it == live_.end()) return;
  Live& live = *it->second;
  TokenEvent event;
  event.final = true;
  event.finish_reason = reason;
  event.status = std::move(status);
  if (live.decoder.has_value() && reason != FinishReason::kStop) {
    live.text += live.decoder->Flush();
  }
  if (live.emitted < live.text.size()) event.text = live.text.substr(live.emitted);
  RequestUsage& usage = event.usage;
  usage.prompt_tokens = static_cast<int>(live.prompt.size());
  usage.completion_tokens = live.generated;
  if (scheduler_.contains(id)) {  // not while parked
    usage.cached_tokens = scheduler_.cached_prompt_tokens(id);
    usage.preemptions = scheduler_.preemptions(id);
  }
  absl::Time now = absl::Now();
  usage.queue_time = live.scheduled.value_or(now) - live.submitted;
  usage.time_to_first_token = live.first_token.value_or(now) - live.submitted;
  usage.total_time = now - live.submitted;
  engine_.catalog_.CountFinished(live.adapter, live.generated);  // before the reader wakes
  live.stream->Push(std::move(event));
  scheduler_.Remove(id);
  live_.erase(it);
  absl::MutexLock lock(&engine_.mutex_);
  ++engine_.stats_.requests_finished;
}

void Engine::Loop::EndAll(FinishReason reason, const absl::Status& status) {
  std::vector<uint64_t> ids;
  for (const auto& [id, live] : live_) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  for (uint64_t id : ids) End(id, reason, status);
  for (PendingLoad& load : loads_) load.done(status);
  loads_.clear();
  for (PendingStart& start : starts_) start.done(status);
  starts_.clear();
  std::vector<PendingLoad> unanswered;
  std::vector<PendingStart> unstarted;
  absl::Cleanup answer = [&] {  // outside the lock: a callback may call the engine
    for (PendingLoad& load : unanswered) {
      load.done(absl::UnavailableError(absl::StrCat("the engine stopped before loading adapter \"",
                                                    load.adapter.name, "\": ", status.message())));
    }
    for (PendingStart& start : unstarted) {
      start.done(absl::UnavailableError(
          absl::StrCat("the engine stopped before starting the work: ", status.message())));
    }
  };
  absl::MutexLock lock(&engine_.mutex_);
  engine_.stopped_ = true;
  unanswered.swap(engine_.adapter_loads_);
  unstarted.swap(engine_.interleaved_starts_);
  for (std::unique_ptr<Live>& live : engine_.inbox_) {
    TokenEvent event;
    event.final = true;
    event.finish_reason = reason;
    event.status = status;
    event.usage.prompt_tokens = static_cast<int>(live->prompt.size());
    live->stream->Push(std::move(event));
  }
  engine_.inbox_.clear();
}

FinishReason Engine::Loop::Advance(Live& live, int32_t token, TokenEvent* event) {
  const SamplingOptions& options = live.sampling;
  ++live.generated;
  FinishReason finish = FinishReason::kNone;
  // generation_config.json's end tokens, as transformers' generate stops on (config.json's
  // when it names none): Llama-3-Instruct and GLM-4-chat end turns with tokens only it lists.
  const std::vector<int64_t>& eos = engine_.model_.config().generation.eos_token_ids;
  if (!options.ignore_eos && std::find(eos.begin(), eos.end(), token) != eos.end()) {
    finish = FinishReason::kEos;
  } else if (std::find(options.stop_token_ids.begin(), options.stop_token_ids.end(), token) !=
             options.stop_token_ids.end()) {
    finish = FinishReason::kStop;
  }
  if (live.decoder.has_value()) {
    absl::StatusOr<std::string> piece = live.decoder->Add(token);
    if (piece.ok()) {
      const size_t before = live.text.size();
      live.text += *piece;
      // A stop string ends the text where it begins; search only where it can newly appear.
      for (const std::string& stop : options.stop) {
        size_t from = before >= stop.size() ? before - stop.size() + 1 : 0;
        size_t at = live.text.find(stop, from);
        if (at != std::string::npos) {
          live.text.resize(at);
          finish = FinishReason::kStop;
        }
      }
    }
  }
  if (finish == FinishReason::kNone &&
      (live.generated >= options.max_tokens ||
       static_cast<int64_t>(live.prompt.size()) + live.generated >= engine_.max_model_length())) {
    finish = FinishReason::kLength;
  }
  if (finish == FinishReason::kNone) {
    // Text that may yet become a stop string is held back. What is ready never shrinks, so
    // a replay of the same tokens emits exactly what the first run did.
    size_t ready = live.text.size() - HeldBackForStops(live.text, options.stop);
    if (ready > live.emitted) {
      event->text = live.text.substr(live.emitted, ready - live.emitted);
      live.emitted = ready;
    }
  }
  return finish;
}

void Engine::Loop::Replay(Live& live) {
  for (int32_t token : live.resumed) {
    TokenEvent unsent;
    FinishReason finish = Advance(live, token, &unsent);
    if (finish != FinishReason::kNone) {
      End(live.id, finish);
      return;
    }
  }
}

void Engine::Loop::ProcessToken(Live& live, const SampledToken& sampled) {
  if (!live.first_token.has_value()) live.first_token = absl::Now();
  TokenEvent event;
  event.token = sampled.token;
  event.logprob = sampled.logprob;
  event.top_logprobs = sampled.top_logprobs;
  FinishReason finish = Advance(live, sampled.token, &event);
  live.stream->Push(std::move(event));
  // The final event carries the rest of the text.
  if (finish != FinishReason::kNone) End(live.id, finish);
}

void Engine::Loop::PublishStats(double step_seconds, const StepPlan* plan, int64_t prompt_tokens) {
  absl::Time now = absl::Now();
  SchedulerCounts counts = scheduler_.counts();
  absl::MutexLock lock(&engine_.mutex_);
  EngineStats& stats = engine_.stats_;
  ++stats.loop_turns;
  if (plan != nullptr && plan->chunks_size() > 0) {
    ++stats.steps;
    stats.step_tokens += executor_.last_step_tokens();
    stats.step_sequences += plan->chunks_size();
    stats.busy_seconds += step_seconds;
    int64_t outputs = 0;
    for (const auto& chunk : plan->chunks()) {
      if (chunk.sample()) ++outputs;
    }
    stats.output_tokens += outputs;
    stats.prompt_tokens += prompt_tokens;
    recent_outputs_.emplace_back(now, outputs);
  }
  while (!recent_outputs_.empty() && now - recent_outputs_.front().first > kRateWindow) {
    recent_outputs_.pop_front();
  }
  int64_t recent = 0;
  for (const auto& [time, outputs] : recent_outputs_) recent += outputs;
  double window =
      recent_outputs_.empty() ? 0.0 : absl::ToDoubleSeconds(now - recent_outputs_.front().first);
  stats.output_tokens_per_second = window > 0 ? recent / window : 0.0;
  stats.queued = counts.waiting + static_cast<int>(engine_.inbox_.size());
  stats.running = counts.running;
  stats.preemptions = counts.preemptions;
  stats.kv_blocks_total = pool_.num_blocks();
  stats.kv_blocks_used = pool_.num_held();
  stats.kv_blocks_cached = pool_.num_cached();
  stats.block_size = engine_.options_.block_size;
  stats.prefix_lookups = pool_.stats().lookups;
  stats.prefix_hits = pool_.stats().hits;
  engine_.waiting_in_scheduler_ = counts.waiting + static_cast<int>(parked_.size());
  if (plan == nullptr || now - hashes_published_ >= kHashesRefresh) {
    engine_.cached_hashes_ = pool_.CachedHashes();
    hashes_published_ = now;
  }
}

absl::Status Engine::Loop::Step(StepPlan& plan) {
  absl::Time start = absl::Now();
  size_t fresh_count = 0;
  const AdapterCatalog::Changes adapter_changes = PlanAdapters(plan, &fresh_count);
  PlanInterleaved(plan);
  TESSERA_RETURN_IF_ERROR(BroadcastPlan(engine_.tp_, plan));
  std::vector<absl::StatusOr<int>> loaded;
  TESSERA_RETURN_IF_ERROR(engine_.slots_->Apply(plan, &loaded));
  if (!adapter_changes.empty()) AdaptersApplied(adapter_changes, loaded, fresh_count);
  ApplyInterleaved(plan);
  TESSERA_ASSIGN_OR_RETURN(std::vector<SampledToken> sampled, executor_.Execute(plan));
  scheduler_.Completed(plan, sampled);
  int64_t prompt_tokens = 0;  // rows of this step inside their sequence's prompt
  for (const auto& chunk : plan.chunks()) {
    auto it = live_.find(chunk.id());
    if (it == live_.end()) continue;
    if (!it->second->scheduled.has_value()) it->second->scheduled = start;
    const int64_t prompt_end =
        std::min<int64_t>(chunk.start() + chunk.count(), it->second->prompt.size());
    prompt_tokens += std::max<int64_t>(0, prompt_end - chunk.start());
  }
  for (const SampledToken& token : sampled) {
    auto it = live_.find(token.id);
    if (it != live_.end()) ProcessToken(*it->second, token);
  }
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  if (plan.chunks_size() > 0) budget_.ServingStepRan(seconds);
  PublishStats(seconds, &plan, prompt_tokens);
  if (plan.chunks_size() > 0 && engine_.step_observer_) {
    engine_.step_observer_(engine_.Stats());
  }
  RunInterleavedPieces(plan.interleaved_pieces());
  return absl::OkStatus();
}

int Engine::Loop::InterleavedPiecesDue(bool serving) {
  interleaved_waiting_ = false;
  if (work_ == nullptr || interleaved_done()) return 0;
  const int ready = work_->PiecesReady();
  interleaved_waiting_ = ready == 0 && !interleaved_done();
  if (ready == 0) return 0;
  return std::min(ready,
                  budget_.Pieces(serving, [&](int k) { return work_->ExpectedPieceSeconds(k); }));
}

void Engine::Loop::RunInterleavedPieces(int pieces) {
  if (work_ == nullptr || pieces <= 0) return;
  const absl::Time start = absl::Now();
  int ran = 0;
  while (ran < pieces) {
    ++ran;
    // Its error is the work's to keep and report; the leader plans no more pieces and drops
    // it, and the serving goes on.
    if (!work_->RunPiece().ok()) {
      interleaved_failed_ = true;
      break;
    }
  }
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  budget_.PiecesRan(seconds, pieces_while_serving_);
  absl::MutexLock lock(&engine_.mutex_);
  engine_.stats_.interleaved_pieces += ran;
  engine_.stats_.interleaved_seconds += seconds;
}

void Engine::Loop::PlanInterleaved(StepPlan& plan) {
  if (interleaved_done()) plan.set_drop_interleaved(true);
  if (starts_.empty()) return;
  absl::Status refused;
  if (!engine_.options_.interleaved_factory) {
    refused = absl::FailedPreconditionError("this engine was made without interleaved work");
  } else if (work_ != nullptr && !plan.drop_interleaved()) {
    refused = absl::FailedPreconditionError(
        "interleaved work (a fine-tune) is running in this group; stop it or wait for it");
  }
  if (!refused.ok()) {
    for (PendingStart& start : starts_) start.done(refused);
    starts_.clear();
    return;
  }
  plan.set_start_interleaved(starts_.front().spec);
}

void Engine::Loop::ApplyInterleaved(const StepPlan& plan) {
  if (plan.drop_interleaved()) {
    work_.reset();
    interleaved_failed_ = false;
  }
  if (!plan.start_interleaved().empty()) budget_.Reset();
  if (plan.start_interleaved().empty()) return;
  absl::StatusOr<std::shared_ptr<InterleavedWork>> made =
      engine_.options_.interleaved_factory
          ? engine_.options_.interleaved_factory(plan.start_interleaved())
          : absl::FailedPreconditionError("this engine was made without interleaved work");
  absl::Status agreed = comm::AgreeOnStatus(engine_.tp_, made.status(), "to start the work");
  if (agreed.ok()) work_ = *std::move(made);
  if (!starts_.empty()) {  // the leader answers its caller
    starts_.front().done(agreed);
    starts_.erase(starts_.begin());
  }
}

absl::Status Engine::Loop::SendShutdown() {
  // What the interleaved work must finish before the group leaves, in one last step.
  const int leaving = work_ != nullptr && !interleaved_done() ? work_->PiecesBeforeLeaving() : 0;
  if (leaving > 0) {
    StepPlan last = scheduler_.NextPlan();
    last.set_interleaved_pieces(leaving);
    TESSERA_RETURN_IF_ERROR(Step(last));
  }
  StepPlan plan = scheduler_.ShutdownPlan();
  return BroadcastPlan(engine_.tp_, plan);
}

absl::Status Engine::Loop::RunLeader() {
  while (true) {
    bool shutdown = false, stop_when_idle = false;
    TakeInbox(&shutdown, &stop_when_idle);
    if (shutdown) {
      EndAll(FinishReason::kCancelled, absl::CancelledError("the engine shut down"));
      return SendShutdown();
    }
    StartParked();
    const bool serving = scheduler_.has_work() || scheduler_.has_pending_removals() ||
                         has_adapter_work() || !starts_.empty() || interleaved_done();
    const int pieces_due = InterleavedPiecesDue(serving);
    if (!serving && pieces_due == 0) {
      PublishStats(0, nullptr, 0);
      if (stop_when_idle) {
        absl::MutexLock lock(&engine_.mutex_);
        if (engine_.inbox_.empty() && engine_.adapter_loads_.empty() &&
            engine_.interleaved_starts_.empty()) {
          engine_.stopped_ = true;
          break;
        }
        continue;
      }
      bool woken;
      {
        absl::MutexLock lock(&engine_.mutex_);
        auto has_news = [](Engine* e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(e->mutex_) {
          return !e->inbox_.empty() || !e->cancels_.empty() || !e->adapter_loads_.empty() ||
                 !e->interleaved_starts_.empty() || e->adapters_removed_ || e->shutdown_ ||
                 e->stop_when_idle_;
        };
        // Interleaved work waiting for other groups is asked again soon.
        woken = engine_.mutex_.AwaitWithTimeout(
            absl::Condition(+has_news, &engine_),
            interleaved_waiting_ ? kInterleavedWaitPoll : engine_.options_.idle_interval);
      }
      if (!woken && engine_.tp_.size() > 1) {
        // Tell the peers the leader is alive before their deadline runs out.
        StepPlan keepalive = scheduler_.NextPlan();
        absl::Status status = Step(keepalive);
        if (!status.ok()) {
          EndAll(FinishReason::kError, status);
          return status;
        }
      }
      continue;
    }
    StepPlan plan = scheduler_.NextPlan();
    plan.set_interleaved_pieces(pieces_due);
    pieces_while_serving_ = serving;
    absl::Status status = Step(plan);
    if (!status.ok()) {
      EndAll(FinishReason::kError, status);
      return status;
    }
  }
  return SendShutdown();
}

absl::Status Engine::Loop::RunFollower() {
  while (true) {
    StepPlan plan;
    TESSERA_RETURN_IF_ERROR(BroadcastPlan(engine_.tp_, plan));
    if (plan.shutdown()) return absl::OkStatus();
    std::vector<absl::StatusOr<int>> loaded;  // the leader answers for them
    TESSERA_RETURN_IF_ERROR(engine_.slots_->Apply(plan, &loaded));
    ApplyInterleaved(plan);
    TESSERA_RETURN_IF_ERROR(executor_.Execute(plan).status());
    RunInterleavedPieces(plan.interleaved_pieces());
  }
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(model::Transformer& model,
                                                       comm::Communicator& tp,
                                                       const tokenizer::Tokenizer* tokenizer,
                                                       const EngineOptions& options) {
  if (options.block_size < 1 || options.max_running < 1 || options.max_step_tokens < 1 ||
      options.max_queued < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "engine options: block_size (", options.block_size, "), max_running (", options.max_running,
        ") and max_step_tokens (", options.max_step_tokens, ") must be at least 1"));
  }
  if (options.interleaved_factory &&
      !(options.interleaved_share > 0 && options.interleaved_share <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "engine options: interleaved_share must be in (0, 1], not ", options.interleaved_share));
  }
  if (options.interleaved_target_step < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("engine options: interleaved_target_step must not be negative, not ",
                     absl::FormatDuration(options.interleaved_target_step)));
  }
  if (options.max_adapters < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "engine options: max_adapters must be 0 (no limit) or more, not ", options.max_adapters));
  }
  absl::flat_hash_set<std::string> names;
  for (size_t i = 0; i < options.adapters.size(); ++i) {
    const std::string& name = options.adapters[i].name;
    if (!names.insert(name).second) {
      return absl::InvalidArgumentError(absl::StrCat("engine options: adapters[", i, "] (",
                                                     options.adapters[i].dir, ") has the name \"",
                                                     name, "\" twice"));
    }
    TESSERA_RETURN_IF_ERROR(CheckAdapterName(
        name, absl::StrCat("engine options: adapters[", i, "] (", options.adapters[i].dir, ")")));
  }
  // From here an error leaves no adapter behind (the slots unload theirs).
  auto slots = std::make_unique<AdapterSlots>(model, tp);
  TESSERA_ASSIGN_OR_RETURN(std::vector<int> adapter_slots, slots->LoadAll(options.adapters));
  const int64_t block_bytes = int64_t{options.block_size} * model.KvBytesPerToken();
  int64_t blocks = options.num_blocks > 0
                       ? options.num_blocks
                       : model::KvCacheBlocks(options.kv_cache_bytes, model.KvBytesPerToken(),
                                              options.block_size);
  blocks = std::min<int64_t>(blocks, std::numeric_limits<int32_t>::max());
  // Every rank must hold the same blocks: the smallest count any rank can afford.
  if (tp.size() > 1) {
    Tensor count = Tensor::Wrap(&blocks, DType::kI64, {1});
    Stream cpu = Stream::Cpu();
    TESSERA_RETURN_IF_ERROR(tp.AllReduce(count, comm::ReduceOp::kMin, cpu));
  }
  if (blocks < 1) {
    return absl::ResourceExhaustedError(
        absl::StrCat("a KV cache of ", options.kv_cache_bytes, " bytes holds no block of ",
                     options.block_size, " tokens (", block_bytes, " bytes a block on this rank)"));
  }
  TESSERA_ASSIGN_OR_RETURN(model::KvCache cache,
                           model.AllocateKvCache(static_cast<int>(blocks), options.block_size));
  std::shared_ptr<InterleavedWork> work;
  if (!options.interleaved_spec.empty()) {
    if (!options.interleaved_factory) {
      return absl::InvalidArgumentError(
          "engine options: interleaved_spec without an interleaved_factory");
    }
    absl::StatusOr<std::shared_ptr<InterleavedWork>> made =
        options.interleaved_factory(options.interleaved_spec);
    TESSERA_RETURN_IF_ERROR(comm::AgreeOnStatus(tp, made.status(), "to start the work"));
    work = *std::move(made);
  }
  auto engine = std::unique_ptr<Engine>(
      new Engine(model, tp, tokenizer, options, std::move(cache), std::move(slots), adapter_slots));
  engine->loop_->set_work(std::move(work));
  return engine;
}

Engine::Engine(model::Transformer& model, comm::Communicator& tp,
               const tokenizer::Tokenizer* tokenizer, const EngineOptions& options,
               model::KvCache cache, std::unique_ptr<AdapterSlots> slots,
               const std::vector<int>& adapter_slots)
    : model_(model),
      tp_(tp),
      tokenizer_(tokenizer),
      options_(options),
      num_blocks_(cache.num_blocks),
      seed_base_(std::random_device()()),
      slots_(std::move(slots)),
      catalog_(options.max_adapters) {
  catalog_.AddResident(options_.adapters, adapter_slots);
  loop_ = std::make_unique<Loop>(*this, std::move(cache));
  stats_.kv_blocks_total = num_blocks_;
  stats_.block_size = options_.block_size;
}

// Every rank destroys its engine, so every rank unloads the same slots (slots_): the model's
// slots stay the same on every rank for a later engine.
Engine::~Engine() { loop_.reset(); }

absl::Status Engine::LoadAdapter(AdapterSpec adapter) {
  TESSERA_RETURN_IF_ERROR(CheckLoad(adapter));
  absl::Notification done;
  absl::Status outcome;
  LoadAdapterAsync(std::move(adapter), [&](absl::Status status) {
    outcome = std::move(status);
    done.Notify();
  });
  done.WaitForNotification();
  return outcome;
}

absl::Status Engine::CheckLoad(const AdapterSpec& adapter) const {
  if (!is_leader()) {
    return absl::FailedPreconditionError("LoadAdapter: only the group leader (TP rank 0) loads");
  }
  TESSERA_RETURN_IF_ERROR(CheckAdapterName(adapter.name, "adapter name"));
  if (adapter.dir.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("adapter \"", adapter.name, "\": no directory given"));
  }
  return absl::OkStatus();
}

void Engine::LoadAdapterAsync(AdapterSpec adapter, std::function<void(absl::Status)> done) {
  if (absl::Status valid = CheckLoad(adapter); !valid.ok()) {
    done(valid);
    return;
  }
  {
    absl::MutexLock lock(&mutex_);
    if (!stopped_ && !shutdown_) {
      adapter_loads_.push_back({std::move(adapter), std::move(done)});
      return;
    }
  }
  done(absl::UnavailableError("the engine has stopped and loads no more adapters"));
}

absl::Status Engine::StartInterleaved(const std::string& spec) {
  if (!is_leader()) {
    return absl::FailedPreconditionError("StartInterleaved: only the group leader (TP rank 0)");
  }
  if (!options_.interleaved_factory) {
    return absl::FailedPreconditionError("this engine was made without interleaved work");
  }
  absl::Notification done;
  absl::Status outcome;
  {
    absl::MutexLock lock(&mutex_);
    if (stopped_ || shutdown_) {
      return absl::UnavailableError("the engine has stopped and starts no more work");
    }
    interleaved_starts_.push_back({spec, [&](absl::Status status) {
                                     outcome = std::move(status);
                                     done.Notify();
                                   }});
  }
  done.WaitForNotification();
  return outcome;
}

absl::Status Engine::UnloadAdapter(const std::string& name) {
  if (!is_leader()) {
    return absl::FailedPreconditionError(
        "UnloadAdapter: only the group leader (TP rank 0) unloads");
  }
  TESSERA_RETURN_IF_ERROR(catalog_.Remove(name));
  absl::MutexLock lock(&mutex_);
  adapters_removed_ = true;
  return absl::OkStatus();
}

absl::Status Engine::ValidateRequest(const GenerationRequest& request,
                                     const std::vector<int32_t>& tokens) const {
  const SamplingOptions& sampling = request.sampling;
  if (tokens.empty()) return absl::InvalidArgumentError("prompt: empty (no tokens)");
  const int64_t vocab = model_.config().vocab_size;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat("prompt_tokens[", i, "]: id ", tokens[i],
                                                     " is outside the vocabulary of ", vocab));
    }
  }
  const std::vector<int32_t>& resumed = request.resumed_tokens;
  for (size_t i = 0; i < resumed.size(); ++i) {
    if (resumed[i] < 0 || resumed[i] >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat("resumed_tokens[", i, "]: id ", resumed[i],
                                                     " is outside the vocabulary of ", vocab));
    }
  }
  if (static_cast<int64_t>(resumed.size()) >= request.sampling.max_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("resumed_tokens: ", resumed.size(),
                                                   " tokens leave nothing to generate of ",
                                                   "max_tokens ", request.sampling.max_tokens));
  }
  TESSERA_RETURN_IF_ERROR(kernels::ValidateSamplingParams(sampling.KernelParams()));
  if (sampling.top_logprobs < 0 || sampling.top_logprobs > kernels::kMaxTopLogprobs) {
    return absl::InvalidArgumentError(absl::StrCat("top_logprobs: must be in [0, ",
                                                   kernels::kMaxTopLogprobs, "], not ",
                                                   sampling.top_logprobs));
  }
  if (sampling.max_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_tokens: must be at least 1, not ", sampling.max_tokens));
  }
  for (size_t i = 0; i < sampling.stop.size(); ++i) {
    if (sampling.stop[i].empty()) {
      return absl::InvalidArgumentError(absl::StrCat("stop[", i, "]: empty string"));
    }
  }
  if (!sampling.stop.empty() && tokenizer_ == nullptr) {
    return absl::InvalidArgumentError("stop: stop strings need the model's tokenizer");
  }
  const int64_t total = static_cast<int64_t>(tokens.size()) + sampling.max_tokens;
  if (total > max_model_length()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_tokens: the prompt (", tokens.size(), " tokens) plus max_tokens (",
        sampling.max_tokens, ") exceeds the model's context of ", max_model_length(), " tokens"));
  }
  const int64_t blocks = (total - 1 + options_.block_size - 1) / options_.block_size;
  if (blocks > num_blocks_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_tokens: the prompt (", tokens.size(), " tokens) plus max_tokens (",
        sampling.max_tokens, ") needs ", blocks, " KV blocks but the whole cache holds ",
        num_blocks_, " (", capacity_tokens(), " tokens)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<RequestStream>> Engine::Submit(GenerationRequest request) {
  if (!is_leader()) {
    return absl::FailedPreconditionError("Submit: only the group leader (TP rank 0) schedules");
  }
  std::vector<int32_t> tokens = std::move(request.prompt_tokens);
  if (tokens.empty() && !request.prompt.empty()) {
    if (tokenizer_ == nullptr) {
      return absl::InvalidArgumentError("prompt: text needs the model's tokenizer; send token ids");
    }
    absl::StatusOr<std::vector<int32_t>> encoded =
        tokenizer_->Encode(request.prompt, /*add_special_tokens=*/true);
    if (!encoded.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("prompt: ", encoded.status().message()));
    }
    tokens = *std::move(encoded);
  }
  TESSERA_RETURN_IF_ERROR(ValidateRequest(request, tokens));
  TESSERA_ASSIGN_OR_RETURN(AdapterHold adapter, catalog_.Hold(request.adapter));

  auto live = std::make_unique<Live>();
  live->prefix_root = adapter.is_base() ? kPrefixHashRoot : adapter.version()->prefix_root;
  live->adapter = std::move(adapter);
  live->sampling = std::move(request.sampling);
  live->prompt = std::move(tokens);
  live->resumed = std::move(request.resumed_tokens);
  live->submitted = absl::Now();
  if (tokenizer_ != nullptr) live->decoder.emplace(*tokenizer_, /*skip_special_tokens=*/true);
  tessera::v1::SamplingPlan& plan = live->plan;
  plan.set_temperature(live->sampling.temperature);
  plan.set_top_k(live->sampling.top_k);
  plan.set_top_p(live->sampling.top_p);
  plan.set_logprobs(live->sampling.logprobs);
  plan.set_presence_penalty(live->sampling.presence_penalty);
  plan.set_frequency_penalty(live->sampling.frequency_penalty);
  plan.set_top_logprobs(live->sampling.top_logprobs);

  absl::MutexLock lock(&mutex_);
  if (stopped_ || shutdown_) {
    return absl::UnavailableError("the engine has stopped and takes no more requests");
  }
  if (static_cast<int>(inbox_.size()) + waiting_in_scheduler_ >= options_.max_queued) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the engine's queue is full (", options_.max_queued, " requests waiting)"));
  }
  live->id = next_id_++;
  plan.set_seed(live->sampling.seed.value_or(kernels::MixSeed(seed_base_, live->id)));
  live->stream = std::make_shared<RequestStream>(
      live->id, request.id.empty() ? absl::StrCat(live->id) : request.id);
  std::shared_ptr<RequestStream> stream = live->stream;
  inbox_.push_back(std::move(live));
  return stream;
}

void Engine::Cancel(uint64_t id) {
  absl::MutexLock lock(&mutex_);
  for (auto it = inbox_.begin(); it != inbox_.end(); ++it) {
    if ((*it)->id == id) {
      TokenEvent event;
      event.final = true;
      event.finish_reason = FinishReason::kCancelled;
      event.usage.prompt_tokens = static_cast<int>((*it)->prompt.size());
      (*it)->stream->Push(std::move(event));
      inbox_.erase(it);
      return;
    }
  }
  cancels_.push_back(id);
}

EngineStats Engine::Stats() const {
  absl::MutexLock lock(&mutex_);
  EngineStats stats = stats_;
  // Counted now, not as of the last step: requests wait in the inbox of a loop that does not
  // step (a stalled engine still shows the work it holds).
  stats.queued = waiting_in_scheduler_ + static_cast<int>(inbox_.size());
  return stats;
}

std::vector<uint64_t> Engine::CachedBlockHashes() const {
  absl::MutexLock lock(&mutex_);
  return cached_hashes_;
}

void Engine::StopWhenIdle() {
  absl::MutexLock lock(&mutex_);
  stop_when_idle_ = true;
}

void Engine::Shutdown() {
  absl::MutexLock lock(&mutex_);
  shutdown_ = true;
}

int64_t Engine::kv_cache_bytes() const { return loop_->cache_bytes(); }

absl::Status Engine::Run() { return is_leader() ? loop_->RunLeader() : loop_->RunFollower(); }

}  // namespace tessera::engine
