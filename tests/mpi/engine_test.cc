// The serving engine on the built-in default model, at whatever TP degree mpirun gives
// (ctest runs 1, 2 and 4 ranks). The reference for every request is that request generated
// alone, one token per step, straight through the transformer: the engine's batching,
// chunked prefill, prefix reuse and preemption must not change a single token.

#include "runtime/engine/engine.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "runtime/core/stream.h"
#include "runtime/core/tensor.h"
#include "runtime/model/default_model.h"
#include "runtime/model/transformer.h"
#include "runtime/tokenizer/tokenizer.h"
#include "tests/mpi/mpi_test_environment.h"

namespace tessera::engine {
namespace {

using ::tessera::testing::World;

class EngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::string> dir = model::EnsureDefaultModel();
    ASSERT_TRUE(dir.ok()) << dir.status();
    LoadModel(*dir, *dir);
  }
  // The model in `dir`, with the tokenizer of `tokenizer_dir`.
  static void LoadModel(const std::string& dir, const std::string& tokenizer_dir) {
    absl::StatusOr<std::unique_ptr<model::Transformer>> loaded =
        model::Transformer::Load(dir, World());
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    model_ = loaded->release();
    absl::StatusOr<std::unique_ptr<tokenizer::Tokenizer>> tok =
        tokenizer::Tokenizer::FromFile(tokenizer_dir + "/tokenizer.json");
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = tok->release();
  }
  static void TearDownTestSuite() {
    delete model_;
    delete tokenizer_;
  }

  struct Generated {
    std::vector<int32_t> tokens;
    std::vector<float> logprobs;
    std::vector<std::vector<kernels::TokenLogprob>> top_logprobs;
  };

  // The request alone: prefill, then one token per step.
  static Generated Reference(const std::vector<int32_t>& prompt, const SamplingOptions& options) {
    model::Transformer& m = *model_;
    const int block_size = 16;
    int blocks = static_cast<int>(prompt.size() + options.max_tokens) / block_size + 1;
    absl::StatusOr<model::KvCache> cache = m.AllocateKvCache(blocks, block_size);
    EXPECT_TRUE(cache.ok()) << cache.status();
    std::vector<int32_t> tokens = prompt;
    Generated out;
    model::Transformer::RowSampling choice;
    choice.params = options.KernelParams();
    choice.logprob = true;
    choice.top_logprobs = options.top_logprobs;
    int begin = 0;
    for (int i = 0; i < options.max_tokens; ++i) {
      int end = static_cast<int>(tokens.size());
      absl::StatusOr<Tensor> shard =
          m.Forward(model::ForwardBatch::SingleSequence(tokens, begin, end, blocks), *cache, false);
      EXPECT_TRUE(shard.ok()) << shard.status();
      choice.draw = i;
      choice.generated = out.tokens;
      auto next = m.SampleRows(*shard, {choice});
      EXPECT_TRUE(next.ok()) << next.status();
      tokens.push_back(static_cast<int32_t>((*next)[0].token));
      out.tokens.push_back(tokens.back());
      out.logprobs.push_back((*next)[0].logprob);
      out.top_logprobs.push_back((*next)[0].top_logprobs);
      begin = end;
    }
    return out;
  }

  // Collective: every rank computes every reference.
  static std::vector<Generated> References(const std::vector<GenerationRequest>& requests) {
    std::vector<Generated> references;
    for (const GenerationRequest& request : requests) {
      references.push_back(Reference(request.prompt_tokens, request.sampling));
    }
    return references;
  }

  struct Finished {
    std::vector<int32_t> tokens;
    std::vector<float> logprobs;
    std::vector<std::vector<kernels::TokenLogprob>> top_logprobs;
    std::vector<std::string> token_texts;  // the text each token's event carried
    std::string text;
    TokenEvent final;

    // The text streamed from token `k` on (the final event's included).
    std::string TextFrom(size_t k) const {
      std::string out;
      for (size_t i = k; i < token_texts.size(); ++i) out += token_texts[i];
      return out + final.text;
    }
  };

  static Finished Drain(RequestStream& stream) {
    Finished out;
    TokenEvent event;
    while (stream.Next(&event)) {
      out.text += event.text;
      if (event.final) {
        out.final = event;
        break;
      }
      out.tokens.push_back(event.token);
      out.logprobs.push_back(event.logprob);
      out.top_logprobs.push_back(event.top_logprobs);
      out.token_texts.push_back(event.text);
    }
    return out;
  }

  // Runs `requests` through a new engine on every rank (the leader submits them all, then
  // runs until idle) and returns the leader's results in order, and its final statistics.
  static std::vector<Finished> RunEngine(EngineOptions options,
                                         const std::vector<GenerationRequest>& requests,
                                         EngineStats* stats = nullptr) {
    if (options.num_blocks == 0) options.num_blocks = 1024;  // not the default gigabyte
    absl::StatusOr<std::unique_ptr<Engine>> engine =
        Engine::Create(*model_, World(), tokenizer_, options);
    EXPECT_TRUE(engine.ok()) << engine.status();
    if (!engine.ok()) return {};
    std::vector<std::shared_ptr<RequestStream>> streams;
    if ((*engine)->is_leader()) {
      for (const GenerationRequest& request : requests) {
        auto stream = (*engine)->Submit(request);
        EXPECT_TRUE(stream.ok()) << stream.status();
        if (stream.ok()) streams.push_back(*stream);
      }
      (*engine)->StopWhenIdle();
    }
    absl::Status run = (*engine)->Run();
    EXPECT_TRUE(run.ok()) << run;
    std::vector<Finished> results;
    for (auto& stream : streams) results.push_back(Drain(*stream));
    if (stats != nullptr) *stats = (*engine)->Stats();
    return results;
  }

  // Prompts of mixed lengths; every third shares a 40-token prefix.
  static std::vector<GenerationRequest> MixedRequests(int count, uint32_t seed) {
    std::mt19937 random(seed);
    auto token = [&]() { return static_cast<int32_t>(random() % 256); };
    std::vector<int32_t> shared(40);
    for (int32_t& t : shared) t = token();
    std::vector<GenerationRequest> requests(count);
    for (int i = 0; i < count; ++i) {
      GenerationRequest& request = requests[i];
      if (i % 3 == 0) request.prompt_tokens = shared;
      int length = 1 + static_cast<int>(random() % 50);
      for (int j = 0; j < length; ++j) request.prompt_tokens.push_back(token());
      request.sampling.max_tokens = 1 + static_cast<int>(random() % 20);
      request.sampling.ignore_eos = true;
    }
    return requests;
  }

  static model::Transformer* model_;
  static tokenizer::Tokenizer* tokenizer_;
};

model::Transformer* EngineTest::model_ = nullptr;
tokenizer::Tokenizer* EngineTest::tokenizer_ = nullptr;

class BatchingInvariance : public EngineTest, public ::testing::WithParamInterface<int> {
 protected:
  void ExpectEachRequestAsAlone() {
    const int concurrency = GetParam();
    std::vector<GenerationRequest> requests = MixedRequests(64, 7);
    for (GenerationRequest& request : requests) request.sampling.logprobs = true;
    EngineOptions options;
    options.max_running = concurrency;
    options.max_step_tokens = 48;  // prompts of up to 90 tokens arrive in chunks
    options.num_blocks = 512;
    EngineStats stats;
    std::vector<Finished> results = RunEngine(options, requests, &stats);
    std::vector<Generated> references = References(requests);
    if (World().rank() != 0) return;
    ASSERT_EQ(results.size(), requests.size());
    for (size_t i = 0; i < requests.size(); ++i) {
      const Generated& expected = references[i];
      EXPECT_EQ(results[i].tokens, expected.tokens)
          << "request " << i << " at concurrency " << concurrency << ", tp " << World().size();
      // Every kernel computes a row the same way whatever else is in the batch, so the
      // log-probabilities are bitwise those of the request alone. (Above two ranks the
      // all-reduce may add the ranks' parts in another order for another buffer size.)
      if (World().size() <= 2) {
        EXPECT_EQ(results[i].logprobs, expected.logprobs)
            << "request " << i << " at concurrency " << concurrency << ", tp " << World().size();
      }
      EXPECT_EQ(results[i].final.finish_reason, FinishReason::kLength);
      EXPECT_EQ(results[i].final.usage.completion_tokens, requests[i].sampling.max_tokens);
    }
    if (concurrency > 1) {
      // Several sequences shared steps, and the shared prefix was reused.
      EXPECT_GT(stats.step_sequences, stats.steps);
      EXPECT_GT(stats.prefix_hits, 0);
    }
    EXPECT_EQ(stats.kv_blocks_used, 0);
    EXPECT_EQ(stats.requests_finished, 64);
  }
};

TEST_P(BatchingInvariance, GreedyOutputsEqualEachRequestAlone) { ExpectEachRequestAsAlone(); }

INSTANTIATE_TEST_SUITE_P(Concurrency, BatchingInvariance, ::testing::Values(1, 8, 64));

// The same with bf16 weights (the default model's shape and seed), which take another
// matrix-multiply path.
class BatchingInvarianceBf16 : public BatchingInvariance {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::string> tokenizer_dir = model::EnsureDefaultModel();
    ASSERT_TRUE(tokenizer_dir.ok()) << tokenizer_dir.status();
    absl::StatusOr<std::string> dir =
        model::EnsureCachedModel("tessera-tiny-llama-random-bf16-test", [](const std::string& d) {
          model::RandomLlamaShape shape = model::DefaultModelShape();
          shape.dtype = DType::kBF16;
          return model::WriteRandomLlama(d, shape);
        });
    ASSERT_TRUE(dir.ok()) << dir.status();
    LoadModel(*dir, *tokenizer_dir);
  }
};

TEST_P(BatchingInvarianceBf16, GreedyOutputsEqualEachRequestAlone) { ExpectEachRequestAsAlone(); }

INSTANTIATE_TEST_SUITE_P(Concurrency, BatchingInvarianceBf16, ::testing::Values(1, 8, 64));

TEST_F(EngineTest, SeededSamplingEqualsEachRequestAlone) {
  std::vector<GenerationRequest> requests = MixedRequests(12, 11);
  for (size_t i = 0; i < requests.size(); ++i) {
    requests[i].sampling.temperature = 0.8f;
    requests[i].sampling.top_k = i % 2 ? 20 : 0;
    requests[i].sampling.top_p = 0.9f;
    requests[i].sampling.seed = 1000 + i;
    requests[i].sampling.logprobs = true;
  }
  std::vector<Finished> results = RunEngine({}, requests);
  std::vector<Generated> references = References(requests);
  if (World().rank() != 0) return;
  for (size_t i = 0; i < requests.size(); ++i) {
    const Generated& expected = references[i];
    EXPECT_EQ(results[i].tokens, expected.tokens) << "request " << i;
    ASSERT_EQ(results[i].logprobs.size(), expected.logprobs.size());
    for (size_t t = 0; t < expected.logprobs.size(); ++t) {
      EXPECT_LE(results[i].logprobs[t], 0.0f);
      EXPECT_NEAR(results[i].logprobs[t], expected.logprobs[t], 1e-4) << "request " << i;
    }
  }
}

// Presence and frequency penalties (greedy and sampled, positive and negative) and top
// log-probabilities: batched, chunked and with a reused prefix, each request's tokens and
// alternatives are those of the request alone, at every TP degree.
TEST_F(EngineTest, PenaltiesAndTopLogprobsEqualEachRequestAlone) {
  std::vector<GenerationRequest> requests = MixedRequests(24, 13);
  for (size_t i = 0; i < requests.size(); ++i) {
    SamplingOptions& sampling = requests[i].sampling;
    sampling.max_tokens = 12 + static_cast<int>(i % 5);
    sampling.logprobs = true;
    sampling.top_logprobs = static_cast<int>(i % 4) * 3;  // 0, 3, 6, 9
    switch (i % 4) {
      case 0:  // greedy, repetition discouraged
        sampling.presence_penalty = 0.8f;
        sampling.frequency_penalty = 0.6f;
        break;
      case 1:  // greedy, repetition encouraged
        sampling.presence_penalty = -1.5f;
        sampling.frequency_penalty = 0.2f;
        break;
      case 2:  // sampled
        sampling.temperature = 0.9f;
        sampling.top_k = 30;
        sampling.seed = 500 + i;
        sampling.frequency_penalty = 1.2f;
        break;
      default:  // plain greedy, top log-probabilities alone
        break;
    }
  }
  EngineOptions options;
  options.max_running = 8;
  options.max_step_tokens = 48;
  std::vector<Finished> results = RunEngine(options, requests);
  std::vector<Generated> references = References(requests);
  // Collective too: the greedy requests of the first kind without their penalties.
  std::vector<Generated> unpenalized;
  for (size_t i = 0; i < requests.size(); i += 4) {
    SamplingOptions plain = requests[i].sampling;
    plain.presence_penalty = plain.frequency_penalty = 0.0f;
    unpenalized.push_back(Reference(requests[i].prompt_tokens, plain));
  }
  if (World().rank() != 0) return;
  ASSERT_EQ(results.size(), requests.size());
  bool penalties_changed_something = false;
  for (size_t i = 0; i < requests.size(); ++i) {
    SCOPED_TRACE(absl::StrCat("request ", i, " at tp ", World().size()));
    const Generated& expected = references[i];
    EXPECT_EQ(results[i].tokens, expected.tokens);
    ASSERT_EQ(results[i].top_logprobs.size(), expected.top_logprobs.size());
    for (size_t t = 0; t < expected.top_logprobs.size(); ++t) {
      const std::vector<kernels::TokenLogprob>& got = results[i].top_logprobs[t];
      const std::vector<kernels::TokenLogprob>& want = expected.top_logprobs[t];
      ASSERT_EQ(got.size(), static_cast<size_t>(requests[i].sampling.top_logprobs));
      ASSERT_EQ(got.size(), want.size());
      for (size_t j = 0; j < want.size(); ++j) {
        EXPECT_EQ(got[j].token, want[j].token) << "token " << t << ", alternative " << j;
        EXPECT_NEAR(got[j].logprob, want[j].logprob, 1e-4);
        if (j > 0) {
          EXPECT_LE(got[j].logprob, got[j - 1].logprob);
        }
      }
      // The chosen token's log-probability is the same distribution's.
      if (!want.empty() && got[0].token == results[i].tokens[t]) {
        EXPECT_NEAR(got[0].logprob, results[i].logprobs[t], 1e-5);
      }
    }
    if (i % 4 == 0) penalties_changed_something |= unpenalized[i / 4].tokens != expected.tokens;
  }
  EXPECT_TRUE(penalties_changed_something);
}

TEST_F(EngineTest, SmallCachePreemptsAndEveryRequestStillCompletes) {
  std::vector<GenerationRequest> requests = MixedRequests(10, 23);
  EngineOptions options;
  options.block_size = 4;
  // Room for about two of these requests at once: the others wait, or push one out.
  options.num_blocks = 40;
  options.max_step_tokens = 64;
  for (GenerationRequest& request : requests) request.sampling.max_tokens = 30;
  EngineStats stats;
  std::vector<Finished> results = RunEngine(options, requests, &stats);
  std::vector<Generated> references = References(requests);
  if (World().rank() != 0) return;
  ASSERT_EQ(results.size(), requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    const Generated& expected = references[i];
    EXPECT_EQ(results[i].tokens, expected.tokens) << "request " << i;
    EXPECT_EQ(results[i].final.finish_reason, FinishReason::kLength);
  }
  EXPECT_GT(stats.preemptions, 0);
  EXPECT_EQ(stats.kv_blocks_used, 0);
}

TEST_F(EngineTest, SharedPrefixHitsTheCacheAndChangesNothing) {
  std::mt19937 random(5);
  std::vector<int32_t> prefix(96);
  for (int32_t& t : prefix) t = static_cast<int32_t>(random() % 256);
  std::vector<GenerationRequest> requests(8);
  for (size_t i = 0; i < requests.size(); ++i) {
    requests[i].prompt_tokens = prefix;
    for (int j = 0; j < 5; ++j) requests[i].prompt_tokens.push_back((i * 7 + j) % 256);
    requests[i].sampling.max_tokens = 8;
    requests[i].sampling.ignore_eos = true;
  }
  EngineOptions options;
  options.max_step_tokens = 128;
  EngineStats with_cache, without_cache;
  std::vector<Finished> cached = RunEngine(options, requests, &with_cache);
  options.prefix_caching = false;
  std::vector<Finished> uncached = RunEngine(options, requests, &without_cache);
  if (World().rank() != 0) return;
  int cached_tokens = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ(cached[i].tokens, uncached[i].tokens) << "request " << i;
    cached_tokens += cached[i].final.usage.cached_tokens;
    EXPECT_EQ(uncached[i].final.usage.cached_tokens, 0);
  }
  // All but the first request or two find the 96-token prefix (6 blocks) in the cache.
  EXPECT_GE(cached_tokens, 6 * 96);
  EXPECT_GT(with_cache.prefix_hits, 0);
  EXPECT_EQ(without_cache.prefix_hits, 0);
  EXPECT_LT(with_cache.prompt_tokens, without_cache.prompt_tokens);
}

TEST_F(EngineTest, CancelledRequestsReturnTheirBlocks) {
  EngineOptions options;
  options.num_blocks = 1024;
  absl::StatusOr<std::unique_ptr<Engine>> created =
      Engine::Create(*model_, World(), tokenizer_, options);
  ASSERT_TRUE(created.ok()) << created.status();
  Engine& engine = **created;
  std::thread canceller;
  std::shared_ptr<RequestStream> running, queued;
  Finished running_result, queued_result;
  if (engine.is_leader()) {
    GenerationRequest request;
    request.prompt = "A request that will not finish";
    request.sampling.max_tokens = 2000;
    request.sampling.ignore_eos = true;
    running = *engine.Submit(request);
    queued = *engine.Submit(request);
    canceller = std::thread([&] {
      engine.Cancel(queued->id());
      TokenEvent first;
      ASSERT_TRUE(running->Next(&first));
      engine.Cancel(running->id());
      running_result = Drain(*running);
      queued_result = Drain(*queued);
      engine.StopWhenIdle();
    });
  }
  absl::Status run = engine.Run();
  ASSERT_TRUE(run.ok()) << run;
  if (!engine.is_leader()) return;
  canceller.join();
  EXPECT_EQ(running_result.final.finish_reason, FinishReason::kCancelled);
  EXPECT_LT(running_result.final.usage.completion_tokens, 2000);
  EXPECT_EQ(queued_result.final.finish_reason, FinishReason::kCancelled);
  EngineStats stats = engine.Stats();
  EXPECT_EQ(stats.kv_blocks_used, 0);
  EXPECT_EQ(stats.running, 0);
}

// The serving layer's use: many threads submit and read while the loop runs.
TEST_F(EngineTest, ThreadsSubmitAndReadWhileTheLoopRuns) {
  std::vector<GenerationRequest> requests = MixedRequests(24, 31);
  std::vector<Generated> references = References(requests);
  EngineOptions options;
  options.num_blocks = 1024;
  absl::StatusOr<std::unique_ptr<Engine>> created =
      Engine::Create(*model_, World(), tokenizer_, options);
  ASSERT_TRUE(created.ok()) << created.status();
  Engine& engine = **created;
  constexpr int kThreads = 4;
  std::vector<std::vector<Finished>> results(kThreads);
  std::vector<std::thread> clients;
  std::thread closer;
  if (engine.is_leader()) {
    for (int t = 0; t < kThreads; ++t) {
      clients.emplace_back([&, t] {
        // Thread t submits requests t, t + 4, ... one after another and reads each fully.
        for (size_t i = t; i < requests.size(); i += kThreads) {
          absl::StatusOr<std::shared_ptr<RequestStream>> stream = engine.Submit(requests[i]);
          ASSERT_TRUE(stream.ok()) << stream.status();
          results[t].push_back(Drain(**stream));
          EngineStats stats = engine.Stats();  // safe from any thread
          EXPECT_LE(stats.kv_blocks_used, stats.kv_blocks_total);
        }
      });
    }
    closer = std::thread([&] {
      for (std::thread& client : clients) client.join();
      engine.StopWhenIdle();
    });
  }
  absl::Status run = engine.Run();
  ASSERT_TRUE(run.ok()) << run;
  if (!engine.is_leader()) return;
  closer.join();
  for (int t = 0; t < kThreads; ++t) {
    for (size_t k = 0; k < results[t].size(); ++k) {
      size_t i = t + k * kThreads;
      EXPECT_EQ(results[t][k].tokens, references[i].tokens) << "request " << i;
    }
  }
  EXPECT_EQ(engine.Stats().requests_finished, 24);
}

TEST_F(EngineTest, StopsAtStopStringsStopTokensAndLength) {
  GenerationRequest base;
  base.prompt = "Once upon a time";
  base.sampling.max_tokens = 24;
  base.sampling.ignore_eos = true;
  std::vector<Finished> plain = RunEngine({}, {base});
  std::vector<GenerationRequest> requests;
  if (World().rank() == 0) {
    ASSERT_EQ(plain[0].final.finish_reason, FinishReason::kLength);
    ASSERT_EQ(plain[0].tokens.size(), 24u);
  }
  // Every rank builds the same requests; only the leader's text matters.
  std::string text = World().rank() == 0 ? plain[0].text : std::string(24, 'x');
  GenerationRequest by_string = base;
  std::string stop = text.substr(10, 3);
  by_string.sampling.stop = {stop};
  GenerationRequest by_token = base;
  int32_t stop_token = World().rank() == 0 ? plain[0].tokens[5] : 0;
  by_token.sampling.stop_token_ids = {stop_token};
  GenerationRequest short_one = base;
  short_one.sampling.max_tokens = 3;
  std::vector<Finished> results = RunEngine({}, {by_string, by_token, short_one});
  if (World().rank() != 0) return;
  EXPECT_EQ(results[0].final.finish_reason, FinishReason::kStop);
  EXPECT_EQ(results[0].text, text.substr(0, text.find(stop)));
  EXPECT_EQ(results[1].final.finish_reason, FinishReason::kStop);
  size_t first = std::find(plain[0].tokens.begin(), plain[0].tokens.end(), stop_token) -
                 plain[0].tokens.begin();
  EXPECT_EQ(results[1].tokens,
            std::vector<int32_t>(plain[0].tokens.begin(), plain[0].tokens.begin() + first + 1));
  EXPECT_EQ(results[2].final.finish_reason, FinishReason::kLength);
  EXPECT_EQ(results[2].tokens,
            std::vector<int32_t>(plain[0].tokens.begin(), plain[0].tokens.begin() + 3));
}

// The engine stops where transformers' generate does: on generation_config.json's end
// tokens, which for Llama-3-Instruct and GLM-4-chat include tokens config.json does not name.
// A copy of the built-in model whose generation_config.json names a token the model
// generates mid-way (config.json's end token is left alone).
TEST_F(EngineTest, StopsAtTheEndTokensOfGenerationConfig) {
  GenerationRequest request;
  request.prompt = "Once upon a time";
  request.sampling.max_tokens = 24;
  request.sampling.ignore_eos = true;
  std::vector<Finished> plain = RunEngine({}, {request});
  const int32_t end = World().rank() == 0 ? plain[0].tokens[6] : 0;
  absl::StatusOr<std::string> dir = model::EnsureDefaultModel();
  ASSERT_TRUE(dir.ok()) << dir.status();
  char pattern[] = "/tmp/tessera-engine-eos-XXXXXX";
  const std::string copy = mkdtemp(pattern);
  std::filesystem::copy(
      *dir, copy,
      std::filesystem::copy_options::recursive | std::filesystem::copy_options::overwrite_existing);
  std::ofstream(copy + "/generation_config.json")
      << nlohmann::json({{"eos_token_id", {end}}, {"do_sample", false}}).dump();
  absl::StatusOr<std::unique_ptr<model::Transformer>> model =
      model::Transformer::Load(copy, World());
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->config().eos_token_ids, model_->config().eos_token_ids);
  EngineOptions options;
  options.num_blocks = 64;
  absl::StatusOr<std::unique_ptr<Engine>> engine =
      Engine::Create(**model, World(), tokenizer_, options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  std::shared_ptr<RequestStream> stream;
  if ((*engine)->is_leader()) {
    request.sampling.ignore_eos = false;
    absl::StatusOr<std::shared_ptr<RequestStream>> submitted = (*engine)->Submit(request);
    ASSERT_TRUE(submitted.ok()) << submitted.status();
    stream = *submitted;
    (*engine)->StopWhenIdle();
  }
  ASSERT_TRUE((*engine)->Run().ok());
  std::filesystem::remove_all(copy);
  if (!(*engine)->is_leader()) return;
  Finished stopped = Drain(*stream);
  EXPECT_EQ(stopped.final.finish_reason, FinishReason::kEos);
  const size_t first =
      std::find(plain[0].tokens.begin(), plain[0].tokens.end(), end) - plain[0].tokens.begin();
  EXPECT_EQ(stopped.tokens,
            std::vector<int32_t>(plain[0].tokens.begin(), plain[0].tokens.begin() + first + 1));
}

// A request resumed after k of its tokens (its group failed mid-stream) continues as if
// nothing happened: the same tokens (sampling is keyed by seed and position, penalties count
// the resumed tokens), log-probs and top log-probs,
// streamed text (stop strings that straddle the resumption included), finish and usage.
TEST_F(EngineTest, ResumedRequestsContinueAsIfUninterrupted) {
  constexpr int kTokens = 24;
  GenerationRequest sampled;
  sampled.prompt = "Once upon a time";
  sampled.sampling.max_tokens = kTokens;
  sampled.sampling.ignore_eos = true;
  sampled.sampling.temperature = 0.9f;
  sampled.sampling.top_k = 40;
  sampled.sampling.seed = 7;
  sampled.sampling.logprobs = true;
  // Penalties count the resumed tokens as generated: the continuation must match anyway.
  sampled.sampling.presence_penalty = 0.4f;
  sampled.sampling.frequency_penalty = 0.3f;
  sampled.sampling.top_logprobs = 3;
  GenerationRequest greedy = sampled;
  greedy.sampling.temperature = 0.0f;
  greedy.sampling.presence_penalty = 0.0f;
  greedy.sampling.frequency_penalty = 0.0f;
  greedy.sampling.top_logprobs = 0;
  GenerationRequest penalized_greedy = greedy;
  penalized_greedy.sampling.presence_penalty = -0.5f;
  penalized_greedy.sampling.frequency_penalty = 0.9f;
  std::vector<Finished> whole = RunEngine({}, {sampled, greedy, penalized_greedy});
  // Every rank builds the same requests; only the leader's results matter.
  auto leader_tokens = [&](int r) {
    return World().rank() == 0 ? whole[r].tokens : std::vector<int32_t>(kTokens, 1);
  };
  const std::vector<int32_t> sampled_tokens = leader_tokens(0), greedy_tokens = leader_tokens(1),
                             penalized_tokens = leader_tokens(2);
  // A stop string of greedy's text from its 8th token's text on: resuming before, inside
  // and after it.
  std::string stop = "x";
  if (World().rank() == 0) {
    std::string from8 = whole[1].TextFrom(8);
    ASSERT_GE(from8.size(), 4u);
    stop = from8.substr(1, 3);
  }
  int stop_length = static_cast<int>(stop.size());
  comm::Communicator& world = World();
  Stream cpu = Stream::Cpu();
  Tensor length = Tensor::Wrap(&stop_length, DType::kI32, {1});
  ASSERT_TRUE(world.Broadcast(length, 0, cpu).ok());
  stop.resize(stop_length, 'x');
  Tensor stop_bytes = Tensor::Wrap(stop.data(), DType::kI8, {stop_length});
  ASSERT_TRUE(world.Broadcast(stop_bytes, 0, cpu).ok());
  GenerationRequest stopping = greedy;
  stopping.sampling.stop = {stop};

  const std::vector<int> resume_at = {1, 5, 8, 9, 10, 12, kTokens - 1};
  std::vector<GenerationRequest> requests = {stopping};
  for (int k : resume_at) {
    for (const GenerationRequest* base : {&sampled, &stopping, &penalized_greedy}) {
      GenerationRequest resumed = *base;
      const std::vector<int32_t>& tokens = base == &sampled    ? sampled_tokens
                                           : base == &stopping ? greedy_tokens
                                                               : penalized_tokens;
      resumed.resumed_tokens.assign(tokens.begin(), tokens.begin() + k);
      requests.push_back(resumed);
    }
  }
  std::vector<Finished> results = RunEngine({}, requests);
  if (World().rank() != 0) return;
  const Finished& stopped = results[0];
  ASSERT_EQ(stopped.final.finish_reason, FinishReason::kStop);
  const int stopped_tokens = static_cast<int>(stopped.tokens.size());
  for (size_t i = 0; i < resume_at.size(); ++i) {
    const int k = resume_at[i];
    const Finished& resumed = results[1 + 3 * i];
    SCOPED_TRACE(absl::StrCat("resumed after ", k, " sampled tokens"));
    EXPECT_EQ(resumed.tokens,
              std::vector<int32_t>(whole[0].tokens.begin() + k, whole[0].tokens.end()));
    ASSERT_EQ(resumed.logprobs.size(), static_cast<size_t>(kTokens - k));
    for (int t = 0; t < kTokens - k; ++t) {
      EXPECT_NEAR(resumed.logprobs[t], whole[0].logprobs[k + t], 1e-5);
      ASSERT_EQ(resumed.top_logprobs[t].size(), 3u);
      for (size_t j = 0; j < 3; ++j) {
        EXPECT_EQ(resumed.top_logprobs[t][j].token, whole[0].top_logprobs[k + t][j].token);
        EXPECT_NEAR(resumed.top_logprobs[t][j].logprob, whole[0].top_logprobs[k + t][j].logprob,
                    1e-5);
      }
    }
    EXPECT_EQ(resumed.text, whole[0].TextFrom(k));
    EXPECT_EQ(resumed.final.finish_reason, FinishReason::kLength);
    EXPECT_EQ(resumed.final.usage.completion_tokens, kTokens);
    EXPECT_EQ(resumed.final.usage.prompt_tokens, whole[0].final.usage.prompt_tokens);

    const Finished& resumed_stop = results[2 + 3 * i];
    SCOPED_TRACE(absl::StrCat("resumed after ", k, " of the stop-string request's tokens"));
    if (k < stopped_tokens) {
      EXPECT_EQ(resumed_stop.tokens,
                std::vector<int32_t>(stopped.tokens.begin() + k, stopped.tokens.end()));
      EXPECT_EQ(resumed_stop.text, stopped.TextFrom(k));
      EXPECT_EQ(resumed_stop.final.usage.completion_tokens, stopped_tokens);
    } else {
      // The tokens already sent hold the stop string: it ends at once with what was held back.
      EXPECT_TRUE(resumed_stop.tokens.empty());
      EXPECT_EQ(resumed_stop.final.usage.completion_tokens, stopped_tokens);
    }
    EXPECT_EQ(resumed_stop.final.finish_reason, FinishReason::kStop);

    const Finished& resumed_penalized = results[3 + 3 * i];
    SCOPED_TRACE(absl::StrCat("resumed after ", k, " penalized greedy tokens"));
    EXPECT_EQ(resumed_penalized.tokens,
              std::vector<int32_t>(whole[2].tokens.begin() + k, whole[2].tokens.end()));
  }
  // The penalties changed the greedy continuation.
  EXPECT_NE(whole[2].tokens, whole[1].tokens);
}

TEST_F(EngineTest, RefusesRequestsThatCanNeverRun) {
  EngineOptions options;
  options.num_blocks = 4;  // 64 tokens
  absl::StatusOr<std::unique_ptr<Engine>> created =
      Engine::Create(*model_, World(), tokenizer_, options);
  ASSERT_TRUE(created.ok()) << created.status();
  Engine& engine = **created;
  if (engine.is_leader()) {
    auto expect_invalid = [&](GenerationRequest request, const std::string& field) {
      absl::StatusOr<std::shared_ptr<RequestStream>> stream = engine.Submit(std::move(request));
      ASSERT_FALSE(stream.ok());
      EXPECT_EQ(stream.status().code(), absl::StatusCode::kInvalidArgument) << stream.status();
      EXPECT_NE(stream.status().message().find(field), std::string::npos) << stream.status();
    };
    GenerationRequest request;
    request.prompt_tokens = {1, 2, 3};
    GenerationRequest empty;
    expect_invalid(empty, "prompt");
    GenerationRequest bad_token = request;
    bad_token.prompt_tokens[1] = 100000;
    expect_invalid(bad_token, "prompt_tokens[1]");
    GenerationRequest bad_top_p = request;
    bad_top_p.sampling.top_p = 1.5f;
    expect_invalid(bad_top_p, "top_p");
    GenerationRequest bad_penalty = request;
    bad_penalty.sampling.presence_penalty = 3.0f;
    expect_invalid(bad_penalty, "presence_penalty: must be in [-2, 2], not 3");
    GenerationRequest bad_top = request;
    bad_top.sampling.top_logprobs = 21;
    expect_invalid(bad_top, "top_logprobs: must be in [0, 20], not 21");
    GenerationRequest no_tokens = request;
    no_tokens.sampling.max_tokens = 0;
    expect_invalid(no_tokens, "max_tokens");
    GenerationRequest too_big = request;
    too_big.sampling.max_tokens = 100;
    expect_invalid(too_big, "whole cache holds 4");
    GenerationRequest all_resumed = request;
    all_resumed.sampling.max_tokens = 2;
    all_resumed.resumed_tokens = {4, 5};
    expect_invalid(all_resumed, "resumed_tokens");
    GenerationRequest bad_resumed = request;
    bad_resumed.resumed_tokens = {4, 100000};
    expect_invalid(bad_resumed, "resumed_tokens[1]");
    GenerationRequest too_long = request;
    too_long.sampling.max_tokens = static_cast<int>(engine.max_model_length());
    expect_invalid(too_long, "context");
    engine.Shutdown();
    EXPECT_EQ(engine.Submit(request).status().code(), absl::StatusCode::kUnavailable);
  }
  absl::Status run = engine.Run();
  EXPECT_TRUE(run.ok()) << run;
}

}  // namespace
}  // namespace tessera::engine
