// `tessera train` as a user runs it, under mpirun, on the built-in default model: a
// fine-tune that memorizes prompt -> completion pairs and whose export `tessera generate`
// reproduces at TP 1 and 2; a run killed with SIGKILL resumes from its latest checkpoint
// with bitwise the losses of an uninterrupted one (TP 2 x DP 2); a stalled rank fails the job
// within the collective deadline naming it; a corrupt checkpoint, a checkpoint of another TP
// degree and bad data lines are refused with messages that say what is wrong; a ZeRO-1 run
// takes the steps of a replicated one, and either's checkpoint resumes as the other, at
// another DP degree too; chat conversations train through the model's chat template.
// TESSERA_MPIRUN_COMMAND and TESSERA_BINARY come from CMake.

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"
#include "tests/mpi/process_runner.h"

namespace {

namespace fs = std::filesystem;
using ::tessera::testing::ProcessOutcome;
using ::tessera::testing::RunCommand;

const std::vector<std::pair<std::string, std::string>> kPairs = {
    {"What is the capital of France? ", "Paris"},
    {"Two plus two is ", "four"},
    {"The sky is ", "blue"},
    {"Tessera runs on ", "many GPUs"}};

class Train : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char pattern[] = "/tmp/tessera-train-test-XXXXXX";
    dir_ = mkdtemp(pattern);
    std::ofstream data(dir_ + "/pairs.jsonl");
    for (const auto& [prompt, completion] : kPairs) {
      data << nlohmann::json{{"prompt", prompt}, {"completion", completion}}.dump() << "\n";
    }
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }

  // Runs `tessera <command>` on `ranks` ranks; its output is stdout and stderr together, or
  // stdout alone with `stdout_only`.
  static ProcessOutcome Run(int ranks, const std::string& command,
                            const std::string& environment = "", bool stdout_only = false) {
    return RunCommand(absl::StrCat(
        TESSERA_MPIRUN_COMMAND, " -np ", ranks, " env TESSERA_CACHE_DIR=", dir_, "/cache ",
        environment, " ", TESSERA_BINARY, " ", command, stdout_only ? " 2>/dev/null" : " 2>&1"));
  }

  // step -> loss of a run's log.jsonl.
  static std::map<int64_t, double> Losses(const std::string& run) {
    std::map<int64_t, double> losses;
    std::ifstream log(run + "/log.jsonl");
    for (std::string line; std::getline(log, line);) {
      nlohmann::json entry = nlohmann::json::parse(line);
      if (entry.contains("loss"))
        losses[entry["step"].get<int64_t>()] = entry["loss"].get<double>();
    }
    return losses;
  }

  static std::string dir_;
};

std::string Train::dir_;

// The first interpreter of TESSERA_TENSORBOARD_PYTHONS that has the tensorboard package.
std::string TensorBoardPython() {
  for (absl::string_view python : absl::StrSplit(TESSERA_TENSORBOARD_PYTHONS, ':')) {
    if (RunCommand(absl::StrCat(python, " -c 'import tensorboard' 2>/dev/null")).exit_code == 0) {
      return std::string(python);
    }
  }
  return "";
}

TEST_F(Train, MemorizesCompletionsAndTheExportGeneratesThem) {
  for (int tp : {1, 2}) {
    SCOPED_TRACE(absl::StrCat("tp ", tp));
    const std::string run = absl::StrCat(dir_, "/memorize-tp", tp);
    ProcessOutcome trained =
        Run(tp, absl::StrCat("train --tp ", tp, " --data ", dir_, "/pairs.jsonl --output ", run,
                             " --steps 40 --lr 3e-3 --warmup 3 --seq-len 64 --micro-batch 4 "
                             "--log-every 10 --eval-data ",
                             dir_, "/pairs.jsonl --eval-every 20"));
    ASSERT_EQ(trained.exit_code, 0) << trained.output;
    EXPECT_NE(trained.output.find("step 40/40"), std::string::npos) << trained.output;
    EXPECT_NE(trained.output.find("exported the model to"), std::string::npos) << trained.output;
    std::map<int64_t, double> losses = Losses(run);
    ASSERT_EQ(losses.size(), 40u);
    EXPECT_LT(losses[40], 0.01 * losses[1]);
    // Evaluations at steps 20 and 40 on the training pairs: a memorized set's loss.
    std::vector<nlohmann::json> evaluations;
    std::ifstream log(run + "/log.jsonl");
    std::ofstream expected(run + "/expected-scalars.txt");
    for (std::string line; std::getline(log, line);) {
      nlohmann::json entry = nlohmann::json::parse(line);
      const int64_t step = entry["step"].get<int64_t>();
      if (entry.contains("eval_loss")) {
        evaluations.push_back(entry);
        expected << "eval/loss " << step << " " << entry["eval_loss"].dump() << "\n"
                 << "eval/perplexity " << step << " " << entry["eval_perplexity"].dump() << "\n";
        continue;
      }
      for (const char* key : {"loss", "lr", "grad_norm", "tokens_per_s", "mfu", "exposed_comm_s"}) {
        expected << "train/" << key << " " << step << " " << entry[key].dump() << "\n";
      }
    }
    expected.close();
    ASSERT_EQ(evaluations.size(), 2u);
    EXPECT_EQ(evaluations[1]["step"], 40);
    EXPECT_LT(evaluations[1]["eval_loss"].get<double>(), 0.05);
    // The same scalars in TensorBoard's files, as the tensorboard package reads them.
    const std::string python = TensorBoardPython();
    ASSERT_FALSE(python.empty()) << "no Python with the tensorboard package (deploy/setup.sh)";
    ProcessOutcome board =
        RunCommand(absl::StrCat(python, " ", TESSERA_READ_TENSORBOARD_SCRIPT, " ", run,
                                "/tensorboard ", run, "/expected-scalars.txt 2>&1"));
    EXPECT_EQ(board.exit_code, 0) << board.output;
    EXPECT_TRUE(fs::exists(run + "/export/model.safetensors.index.json"));
    EXPECT_TRUE(fs::exists(run + "/export/tokenizer.json"));
    // tessera serve on the export (two ranks at TP 2) answers a gRPC client with them too.
    const std::string target = absl::StrCat("127.0.0.1:", 20000 + getpid() % 20000 + tp);
    std::string script = absl::StrCat(
        "export TESSERA_CACHE_DIR=", dir_, "/cache; ", TESSERA_BINARY, " serve --model ", run,
        "/export --np 2 --tp 2 --listen ", target, " --metrics-listen off --http-listen off > ",
        run, "/serve.log 2>&1 & pid=$!; ok=1; for i in $(seq 1 600); do ", TESSERA_BINARY,
        " client health --target ", target, " --timeout 1s >/dev/null 2>&1 && ok=0 && break; ",
        "sleep 0.2; done; ");
    for (const auto& [prompt, completion] : kPairs) {
      absl::StrAppend(&script, "[ $ok = 0 ] && ", TESSERA_BINARY, " client generate --target ",
                      target, " --max-tokens 16 --prompt '", prompt, "'; echo; ");
    }
    absl::StrAppend(&script, "kill -INT $pid; wait $pid; exit $ok");
    std::ofstream(run + "/serve.sh") << script << "\n";
    ProcessOutcome served = RunCommand(absl::StrCat("bash ", run, "/serve.sh 2>/dev/null"));
    EXPECT_EQ(served.exit_code, 0) << served.output;
    if (served.exit_code != 0) {
      std::ifstream serve_log(run + "/serve.log");
      std::stringstream text;
      text << serve_log.rdbuf();
      ADD_FAILURE() << "tessera serve's log:\n" << text.str();
    }
    for (const auto& [prompt, completion] : kPairs) {
      EXPECT_NE(served.output.find(completion + "\n"), std::string::npos)
          << "served, prompt '" << prompt << "':\n"
          << served.output;
    }
    for (int serve_tp : {1, 2}) {
      for (const auto& [prompt, completion] : kPairs) {
        ProcessOutcome generated =
            Run(serve_tp,
                absl::StrCat("generate --tp ", serve_tp, " --model ", run,
                             "/export --max-tokens 16 --prompt '", prompt, "'"),
                "", /*stdout_only=*/true);
        ASSERT_EQ(generated.exit_code, 0) << generated.output;
        EXPECT_NE(generated.output.find(completion + "\n"), std::string::npos)
            << "prompt '" << prompt << "' at generate tp " << serve_tp << ":\n"
            << generated.output;
      }
    }
  }
}

TEST_F(Train, LoraAdaptersMemorizeAndExportAsPeftOrMerged) {
  const std::string run = dir_ + "/lora";
  const std::string flags =
      absl::StrCat("train --tp 2 --data ", dir_, "/pairs.jsonl --steps 60 --lr 1e-2 ",
                   "--seq-len 64 --micro-batch 4 --log-every 30 --lora-r 8 --lora-targets ",
                   "q_proj,v_proj,gate_proj,up_proj,down_proj --output ");
  ProcessOutcome adapter = Run(2, flags + run + "-peft");
  ASSERT_EQ(adapter.exit_code, 0) << adapter.output;
  EXPECT_NE(adapter.output.find("LoRA (r 8"), std::string::npos) << adapter.output;
  EXPECT_TRUE(fs::exists(run + "-peft/export/adapter_config.json"));
  EXPECT_TRUE(fs::exists(run + "-peft/export/adapter_model.safetensors"));
  // The run's last checkpoint exported again, merged into the base weights: generate sees
  // the adapters. (On as many ranks as the checkpoint's TP degree; others are refused.)
  ProcessOutcome wrong_ranks =
      Run(1, absl::StrCat("train export ", run, "-peft --merge --output ", run, "-merged"));
  EXPECT_NE(wrong_ranks.exit_code, 0);
  EXPECT_NE(wrong_ranks.output.find("mpirun -np 2"), std::string::npos) << wrong_ranks.output;
  ProcessOutcome merged =
      Run(2, absl::StrCat("train export ", run, "-peft --merge --output ", run, "-merged"));
  ASSERT_EQ(merged.exit_code, 0) << merged.output;
  EXPECT_TRUE(fs::exists(run + "-merged/model.safetensors.index.json"));
  for (const auto& [prompt, completion] : kPairs) {
    ProcessOutcome generated = Run(
        1,
        absl::StrCat("generate --model ", run, "-merged --max-tokens 16 --prompt '", prompt, "'"),
        "", /*stdout_only=*/true);
    ASSERT_EQ(generated.exit_code, 0) << generated.output;
    EXPECT_NE(generated.output.find(completion + "\n"), std::string::npos)
        << "prompt '" << prompt << "':\n"
        << generated.output;
  }
}

// QLoRA-style: the frozen base held as int8 (--quantize), the adapters learn against it;
// merged into the unquantized base and served quantized the same way, the completions come
// back. A merged export from the quantized run itself is refused before training starts.
TEST_F(Train, LoraOverAQuantizedBaseMemorizes) {
  const std::string run = dir_ + "/qlora";
  const std::string flags =
      absl::StrCat("train --tp 2 --data ", dir_, "/pairs.jsonl --steps 60 --lr 1e-2 ",
                   "--seq-len 64 --micro-batch 4 --log-every 30 --lora-r 8 --lora-targets ",
                   "q_proj,v_proj,gate_proj,up_proj,down_proj --quantize int8 --output ");
  ProcessOutcome refused = Run(2, flags + run + "-refused --merge");
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.output.find("--merge with --quantize"), std::string::npos) << refused.output;
  ProcessOutcome adapter = Run(2, flags + run);
  ASSERT_EQ(adapter.exit_code, 0) << adapter.output;
  ProcessOutcome merged =
      Run(2, absl::StrCat("train export ", run, " --merge --output ", run, "-merged"));
  ASSERT_EQ(merged.exit_code, 0) << merged.output;
  for (const auto& [prompt, completion] : kPairs) {
    ProcessOutcome generated =
        Run(1,
            absl::StrCat("generate --model ", run,
                         "-merged --quantize int8 --max-tokens 16 --prompt '", prompt, "'"),
            "", /*stdout_only=*/true);
    ASSERT_EQ(generated.exit_code, 0) << generated.output;
    EXPECT_NE(generated.output.find(completion + "\n"), std::string::npos)
        << "prompt '" << prompt << "':\n"
        << generated.output;
  }
}

TEST_F(Train, AKilledRunResumesWithBitwiseTheSameLosses) {
  const std::string flags =
      absl::StrCat("train --tp 2 --data ", dir_,
                   "/pairs.jsonl --steps 10 --save-every 3 --keep 1 --seq-len 64 "
                   "--micro-batch 2 --grad-accum 2 --lr 1e-3 --timeout 20s --no-export --output ");
  const std::string whole = dir_ + "/whole", killed = dir_ + "/killed";
  ProcessOutcome uninterrupted = Run(4, flags + whole);
  ASSERT_EQ(uninterrupted.exit_code, 0) << uninterrupted.output;
  // Rank 3 is SIGKILLed as step 8 starts: the others are in its collectives.
  ProcessOutcome crashed = Run(4, flags + killed, "TESSERA_TEST_TRAIN_FAULT=kill:3:8");
  ASSERT_NE(crashed.exit_code, 0) << crashed.output;
  EXPECT_TRUE(fs::exists(killed + "/checkpoints/step-00000006/trainer_state.json"));
  EXPECT_FALSE(fs::exists(killed + "/checkpoints/step-00000003")) << "--keep 1 prunes";
  ProcessOutcome resumed = Run(4, flags + killed + " --resume " + killed);
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("at step 6"), std::string::npos) << resumed.output;
  const std::map<int64_t, double> expected = Losses(whole), got = Losses(killed);
  ASSERT_EQ(expected.size(), 10u);
  ASSERT_EQ(got.size(), 10u);  // steps 7 and more were logged again after the resume
  for (const auto& [step, loss] : expected) {
    EXPECT_EQ(got.at(step), loss) << "step " << step;  // bitwise
  }
}

TEST_F(Train, AStalledRankFailsTheJobWithinTheDeadline) {
  ProcessOutcome stalled =
      Run(2,
          absl::StrCat("train --tp 1 --data ", dir_, "/pairs.jsonl --steps 4 --seq-len 64 ",
                       "--micro-batch 2 --timeout 3s --no-export --output ", dir_, "/stalled"),
          "TESSERA_TEST_TRAIN_FAULT=stall:1:2");
  EXPECT_NE(stalled.exit_code, 0) << stalled.output;
  EXPECT_LT(stalled.seconds, 120) << stalled.output;
  EXPECT_NE(stalled.output.find("DEADLINE_EXCEEDED"), std::string::npos) << stalled.output;
  EXPECT_NE(stalled.output.find("rank 1"), std::string::npos) << stalled.output;
}

TEST_F(Train, ZeroOneCheckpointsResumeWithOrWithoutIt) {
  const std::string flags =
      absl::StrCat("train --tp 1 --data ", dir_,
                   "/pairs.jsonl --steps 6 --save-every 3 --keep 0 --seq-len 64 --lr 1e-3 "
                   "--weight-decay 0.01 --no-export ");
  const std::string zero0 = dir_ + "/zero0", zero1 = dir_ + "/zero1";
  ProcessOutcome replicated = Run(2, flags + "--micro-batch 2 --zero 0 --output " + zero0);
  ASSERT_EQ(replicated.exit_code, 0) << replicated.output;
  ProcessOutcome sharded = Run(2, flags + "--micro-batch 2 --zero 1 --output " + zero1);
  ASSERT_EQ(sharded.exit_code, 0) << sharded.output;
  EXPECT_NE(sharded.output.find("tp 1 x dp 2 (ZeRO-1"), std::string::npos) << sharded.output;
  EXPECT_NE(sharded.output.find("rank 1 peak resident memory"), std::string::npos)
      << sharded.output;
  EXPECT_NE(sharded.output.find("AdamW moments (ZeRO-1: 1/2 of"), std::string::npos)
      << sharded.output;
  // The step-3 checkpoint of one, resumed as the other: at DP 2 with the same micro-batch,
  // or at DP 4 with half of it (the same rows a step, summed over DP in another order).
  const std::string to_zero0 = dir_ + "/zero1-to-zero0", to_zero1 = dir_ + "/zero0-to-zero1";
  ProcessOutcome as_replicated =
      Run(2, absl::StrCat(flags, "--micro-batch 2 --zero 0 --output ", to_zero0, " --resume ",
                          zero1, "/checkpoints/step-00000003"));
  ASSERT_EQ(as_replicated.exit_code, 0) << as_replicated.output;
  EXPECT_NE(as_replicated.output.find("at step 3"), std::string::npos) << as_replicated.output;
  ProcessOutcome as_sharded =
      Run(4, absl::StrCat(flags, "--micro-batch 1 --zero 1 --output ", to_zero1, " --resume ",
                          zero0, "/checkpoints/step-00000003"));
  ASSERT_EQ(as_sharded.exit_code, 0) << as_sharded.output;
  EXPECT_NE(as_sharded.output.find("tp 1 x dp 4 (ZeRO-1"), std::string::npos) << as_sharded.output;
  // The same sums in another order at most (bitwise at DP 2 on this model today, as every
  // gradient sum over two ranks is a + b either way; not promised: the grad norm's sum is
  // grouped differently): 1e-6 relative at the same DP degree, and 1e-4 after the change to
  // DP 4, whose four-way sums move losses near 1e-3 by a few parts in a million.
  const std::map<int64_t, double> expected = Losses(zero0), got = Losses(zero1);
  ASSERT_EQ(expected.size(), 6u);
  ASSERT_EQ(got.size(), 6u);
  for (const auto& [step, loss] : expected) {
    EXPECT_NEAR(got.at(step), loss, 1e-6 * loss) << "zero 1, step " << step;
  }
  for (const auto& [run, tolerance] :
       {std::pair<std::string, double>{to_zero0, 1e-6}, {to_zero1, 1e-4}}) {
    const std::map<int64_t, double> resumed = Losses(run);
    ASSERT_EQ(resumed.size(), 3u) << run;
    for (const auto& [step, loss] : resumed) {
      EXPECT_NEAR(loss, expected.at(step), tolerance * expected.at(step))
          << run << ", step " << step;
    }
  }
  // The files look alike: the same tensors, whoever wrote them.
  for (const char* file : {"/checkpoints/step-00000006/optimizer-tp0-of-1.safetensors",
                           "/checkpoints/step-00000006/model-tp0-of-1.safetensors"}) {
    EXPECT_EQ(fs::file_size(zero1 + file), fs::file_size(zero0 + file)) << file;
  }

  const std::string one_step = absl::StrCat("train --data ", dir_,
                                            "/pairs.jsonl --steps 1 --seq-len 64 --no-export "
                                            "--output ",
                                            dir_, "/zero-refused");
  ProcessOutcome stage2 = Run(1, one_step + " --zero 2");
  EXPECT_NE(stage2.exit_code, 0);
  EXPECT_NE(stage2.output.find("INVALID_ARGUMENT: --zero 2"), std::string::npos) << stage2.output;
  ProcessOutcome alone = Run(1, one_step + " --zero 1");
  EXPECT_EQ(alone.exit_code, 0) << alone.output;
  EXPECT_NE(alone.output.find("--zero 1 with one data-parallel replica"), std::string::npos)
      << alone.output;
}

// {"messages"} lines rendered with the default model's chat template, read by two ranks: each
// conversation trains its reply (the template's "<reply><|end_of_text|>\n").
TEST_F(Train, TrainsOnChatConversations) {
  {
    std::ofstream chat(dir_ + "/chat.jsonl");
    for (const auto& [prompt, completion] : kPairs) {
      chat << nlohmann::json{{"messages",
                              {{{"role", "system"}, {"content", "Be brief."}},
                               {{"role", "user"}, {"content", prompt}},
                               {{"role", "assistant"}, {"content", completion}}}}}
                  .dump()
           << "\n";
    }
  }
  const std::string run = dir_ + "/chat";
  ProcessOutcome trained =
      Run(2, absl::StrCat("train --tp 1 --data ", dir_, "/chat.jsonl --steps 3 --seq-len 128 ",
                          "--micro-batch 2 --no-export --output ", run));
  ASSERT_EQ(trained.exit_code, 0) << trained.output;
  EXPECT_NE(trained.output.find("4 examples (4 lines, 0 skipped, 0 truncated"), std::string::npos)
      << trained.output;
  EXPECT_EQ(Losses(run).size(), 3u);
}

TEST_F(Train, BadCheckpointsAndDataAreRefusedWithAReason) {
  const std::string run = dir_ + "/refused";
  const std::string flags = absl::StrCat("train --data ", dir_, "/pairs.jsonl --steps 2 ",
                                         "--seq-len 64 --micro-batch 2 --no-export --output ");
  ProcessOutcome first = Run(2, absl::StrCat(flags, run, " --tp 2"));
  ASSERT_EQ(first.exit_code, 0) << first.output;
  ProcessOutcome other_tp = Run(1, absl::StrCat(flags, run, " --tp 1 --resume ", run));
  EXPECT_NE(other_tp.exit_code, 0);
  EXPECT_NE(other_tp.output.find("tensor parallelism 2; this run has --tp 1"), std::string::npos)
      << other_tp.output;
  // Another data-parallel degree is fine: the same TP shards, replicated on 4 ranks.
  ProcessOutcome more_replicas =
      Run(4, absl::StrCat(flags, run, " --tp 2 --steps 3 --resume ", run));
  EXPECT_EQ(more_replicas.exit_code, 0) << more_replicas.output;
  EXPECT_NE(more_replicas.output.find("tp 2 x dp 2"), std::string::npos) << more_replicas.output;
  EXPECT_NE(more_replicas.output.find("at step 2"), std::string::npos) << more_replicas.output;
  // A checkpoint whose data fingerprint is of the older kind (hashed tokens, no version).
  const std::string state_file = run + "/checkpoints/step-00000002/trainer_state.json";
  {
    std::ifstream in(state_file);
    nlohmann::json state = nlohmann::json::parse(in);
    state.erase("data_fingerprint_version");
    std::ofstream(state_file) << state.dump(2);
  }
  ProcessOutcome old_fingerprint =
      Run(2, absl::StrCat(flags, run, "-old --tp 2 --steps 3 --resume ", run,
                          "/checkpoints/step-00000002"));
  EXPECT_NE(old_fingerprint.exit_code, 0);
  EXPECT_NE(
      old_fingerprint.output.find("data fingerprint is version 1, this Tessera's is version 2"),
      std::string::npos)
      << old_fingerprint.output;
  EXPECT_NE(old_fingerprint.output.find("tessera train export"), std::string::npos)
      << old_fingerprint.output;
  // A damaged shard: cut in half.
  const std::string shard = run + "/checkpoints/step-00000003/model-tp0-of-2.safetensors";
  ASSERT_TRUE(fs::exists(shard));
  fs::resize_file(shard, fs::file_size(shard) / 2);
  ProcessOutcome corrupt = Run(2, absl::StrCat(flags, run, " --tp 2 --steps 4 --resume ", run));
  EXPECT_NE(corrupt.exit_code, 0);
  EXPECT_NE(corrupt.output.find("model-tp0-of-2.safetensors"), std::string::npos) << corrupt.output;

  {
    std::ofstream bad(dir_ + "/bad.jsonl");
    bad << R"({"prompt": "a", "completion": "b"})"
        << "\n"
        << R"({"prompt": "a", "completion": 7})"
        << "\n"
        << R"({"text": "fine"})"
        << "\n";
  }
  const std::string bad_flags =
      absl::StrCat("train --data ", dir_, "/bad.jsonl --steps 1 ",
                   "--seq-len 32 --micro-batch 1 --no-export --output ", dir_, "/bad");
  ProcessOutcome stop = Run(1, bad_flags);
  EXPECT_NE(stop.exit_code, 0);
  EXPECT_NE(stop.output.find("bad.jsonl:2: completion"), std::string::npos) << stop.output;
  ProcessOutcome skip = Run(1, bad_flags + " --on-bad-line skip");
  EXPECT_EQ(skip.exit_code, 0) << skip.output;
  EXPECT_NE(skip.output.find("2 examples (3 lines, 1 skipped"), std::string::npos) << skip.output;
}

}  // namespace
