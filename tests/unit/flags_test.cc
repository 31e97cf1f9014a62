// Tests of launcher/flags.h: FlagSet parsing of every flag kind and spelling, its errors,
// and the byte-count helpers; and of the device flags every model subcommand shares
// (launcher/model_job.h, launcher/worker_job.h).

#include "launcher/flags.h"

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "launcher/model_job.h"
#include "launcher/worker_job.h"
#include "runtime/core/device.h"
#include "tests/unit/status_test_util.h"

namespace tessera::launcher {
namespace {

using ::tessera::testing::Contains;
using ::tessera::testing::IsError;

// A FlagSet over one flag of each kind, with their defaults.
class FlagSetTest : public ::testing::Test {
 protected:
  FlagSetTest() : flags_("tessera comm-bench", "Measures collectives.") {
    flags_.String("model", &model_, "model name", 'm');
    flags_.Int("steps", &steps_, "number of steps", 'n');
    flags_.Bool("verbose", &verbose_, "print more");
    flags_.Bool("validate", &validate_, "check results");
    flags_.Duration("timeout", &timeout_, "collective timeout");
    flags_.Bytes("bytes", &bytes_, "message size", 'b');
  }

  absl::Status Parse(const std::vector<std::string>& args) {
    return flags_.Parse(args, &help_requested_);
  }

  FlagSet flags_;
  std::string model_ = "tiny";
  int steps_ = 10;
  bool verbose_ = false;
  bool validate_ = true;
  absl::Duration timeout_ = absl::Seconds(30);
  int64_t bytes_ = 1 << 20;
  bool help_requested_ = true;  // Parse must reset it
};

TEST_F(FlagSetTest, NoArgumentsKeepDefaults) {
  ASSERT_OK(Parse({}));
  EXPECT_FALSE(help_requested_);
  EXPECT_EQ(model_, "tiny");
  EXPECT_EQ(steps_, 10);
  EXPECT_FALSE(verbose_);
  EXPECT_TRUE(validate_);
  EXPECT_EQ(timeout_, absl::Seconds(30));
  EXPECT_EQ(bytes_, 1 << 20);
}

TEST_F(FlagSetTest, NameSpaceValue) {
  ASSERT_OK(Parse({"--model", "llama", "--steps", "12", "--timeout", "250ms", "--bytes", "64K"}));
  EXPECT_EQ(model_, "llama");
  EXPECT_EQ(steps_, 12);
  EXPECT_EQ(timeout_, absl::Milliseconds(250));
  EXPECT_EQ(bytes_, 65536);
  EXPECT_FALSE(help_requested_);
}

TEST_F(FlagSetTest, NameEqualsValue) {
  ASSERT_OK(Parse({"--model=a=b", "--steps=-3", "--timeout=5m", "--bytes=256M", "--model="}));
  EXPECT_EQ(model_, "");  // the last occurrence wins
  EXPECT_EQ(steps_, -3);
  EXPECT_EQ(timeout_, absl::Minutes(5));
  EXPECT_EQ(bytes_, int64_t{256} << 20);
  ASSERT_OK(Parse({"--model=a=b"}));
  EXPECT_EQ(model_, "a=b");  // only the first '=' separates
}

TEST_F(FlagSetTest, ShortNames) {
  ASSERT_OK(Parse({"-b", "8", "-n", "7", "-m", "gpt"}));
  EXPECT_EQ(bytes_, 8);
  EXPECT_EQ(steps_, 7);
  EXPECT_EQ(model_, "gpt");
}

TEST_F(FlagSetTest, ValueMayLookLikeAFlag) {
  ASSERT_OK(Parse({"--steps", "-4", "--model", "--verbose"}));
  EXPECT_EQ(steps_, -4);
  EXPECT_EQ(model_, "--verbose");
  EXPECT_FALSE(verbose_);
}

TEST_F(FlagSetTest, Booleans) {
  ASSERT_OK(Parse({"--verbose", "--no-validate"}));
  EXPECT_TRUE(verbose_);
  EXPECT_FALSE(validate_);
  ASSERT_OK(Parse({"--no-verbose", "--validate"}));
  EXPECT_FALSE(verbose_);
  EXPECT_TRUE(validate_);
  ASSERT_OK(Parse({"--verbose=true", "--validate=0"}));
  EXPECT_TRUE(verbose_);
  EXPECT_FALSE(validate_);
  ASSERT_OK(Parse({"--verbose=false", "--validate=1"}));
  EXPECT_FALSE(verbose_);
  EXPECT_TRUE(validate_);
}

TEST_F(FlagSetTest, BooleanDoesNotTakeNextArgument) {
  // "--verbose false" is the flag followed by a stray argument.
  EXPECT_TRUE(IsError(Parse({"--verbose", "false"}), absl::StatusCode::kInvalidArgument,
                      {"unexpected argument 'false'"}));
}

TEST_F(FlagSetTest, BadBooleanValue) {
  EXPECT_TRUE(IsError(Parse({"--verbose=yes"}), absl::StatusCode::kInvalidArgument,
                      {"--verbose", "'yes'"}));
}

TEST_F(FlagSetTest, HelpSetsHelpRequestedAndParsesNothing) {
  ASSERT_OK(Parse({"--model", "big", "--help", "--steps", "notanumber"}));
  EXPECT_TRUE(help_requested_);
  EXPECT_EQ(model_, "tiny");
  EXPECT_EQ(steps_, 10);
  ASSERT_OK(Parse({"-h"}));
  EXPECT_TRUE(help_requested_);
  ASSERT_OK(Parse({"--unknown", "--help"}));
  EXPECT_TRUE(help_requested_);
  ASSERT_OK(Parse({"--steps=3"}));
  EXPECT_FALSE(help_requested_);
}

TEST_F(FlagSetTest, UnknownFlagIsNamed) {
  EXPECT_TRUE(IsError(Parse({"--steps", "3", "--colour", "red"}),
                      absl::StatusCode::kInvalidArgument,
                      {"tessera comm-bench", "unknown flag '--colour'"}));
  EXPECT_TRUE(IsError(Parse({"-x"}), absl::StatusCode::kInvalidArgument, {"unknown flag '-x'"}));
  // --no- only negates booleans.
  EXPECT_TRUE(IsError(Parse({"--no-model"}), absl::StatusCode::kInvalidArgument,
                      {"unknown flag '--no-model'"}));
  EXPECT_TRUE(
      IsError(Parse({"--no-verbose=true"}), absl::StatusCode::kInvalidArgument, {"unknown flag"}));
}

TEST_F(FlagSetTest, MissingValue) {
  EXPECT_TRUE(IsError(Parse({"--steps"}), absl::StatusCode::kInvalidArgument,
                      {"tessera comm-bench", "flag '--steps' needs a value"}));
  EXPECT_TRUE(IsError(Parse({"--model", "x", "-b"}), absl::StatusCode::kInvalidArgument,
                      {"flag '-b' needs a value"}));
}

TEST_F(FlagSetTest, BadInt) {
  for (const char* bad : {"abc", "1.5", "", "12x", "99999999999"}) {
    EXPECT_TRUE(
        IsError(Parse({"--steps", bad}), absl::StatusCode::kInvalidArgument,
                {"tessera comm-bench: --steps", absl::StrCat("'", bad, "'"), "not an integer"}))
        << bad;
    EXPECT_EQ(steps_, 10) << "a rejected value must leave the flag unchanged: " << bad;
  }
}

TEST_F(FlagSetTest, LongSpellingOfAShortNameIsUnknown) {
  EXPECT_TRUE(
      IsError(Parse({"--b", "8"}), absl::StatusCode::kInvalidArgument, {"unknown flag '--b'"}));
}

TEST_F(FlagSetTest, BadDurationAndBytes) {
  EXPECT_TRUE(IsError(Parse({"--timeout=0"}), absl::StatusCode::kInvalidArgument,
                      {"--timeout", "must be positive"}));
  EXPECT_TRUE(IsError(Parse({"--timeout", "soon"}), absl::StatusCode::kInvalidArgument,
                      {"--timeout", "'soon'"}));
  EXPECT_TRUE(
      IsError(Parse({"-b", "64Q"}), absl::StatusCode::kInvalidArgument, {"--bytes", "'64Q'"}));
}

TEST(FlagSetDurationOrOff, TakesADurationOrOff) {
  FlagSet flags("tessera coordinator", "");
  absl::Duration limit = absl::Minutes(30);
  flags.DurationOrOff("limit", &limit, "a limit");
  EXPECT_TRUE(absl::StrContains(flags.Usage(), "a limit (default: 30m)"));
  bool help = false;
  ASSERT_TRUE(flags.Parse({"--limit", "90s"}, &help).ok());
  EXPECT_EQ(limit, absl::Seconds(90));
  for (const char* off : {"off", "0"}) {
    limit = absl::Minutes(30);
    ASSERT_TRUE(flags.Parse({"--limit", off}, &help).ok()) << off;
    EXPECT_EQ(limit, absl::ZeroDuration()) << off;
  }
  absl::Status bad = flags.Parse({"--limit", "-3s"}, &help);
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(bad.message(), "--limit")) << bad;
  EXPECT_TRUE(absl::StrContains(bad.message(), "(or off)")) << bad;
}

TEST_F(FlagSetTest, PositionalArgumentRejected) {
  EXPECT_TRUE(IsError(Parse({"extra"}), absl::StatusCode::kInvalidArgument,
                      {"unexpected argument 'extra'"}));
  EXPECT_TRUE(
      IsError(Parse({"-"}), absl::StatusCode::kInvalidArgument, {"unexpected argument '-'"}));
}

TEST_F(FlagSetTest, UsageListsFlagsWithDefaults) {
  std::string usage = flags_.Usage();
  EXPECT_TRUE(Contains(usage, "usage: tessera comm-bench [flags]"));
  EXPECT_TRUE(Contains(usage, "Measures collectives."));
  EXPECT_TRUE(Contains(usage, "-m, --model"));
  EXPECT_TRUE(Contains(usage, "model name (default: tiny)"));
  EXPECT_TRUE(Contains(usage, "number of steps (default: 10)"));
  EXPECT_TRUE(Contains(usage, "print more (default: false)"));
  EXPECT_TRUE(Contains(usage, "check results (default: true)"));
  EXPECT_TRUE(Contains(usage, "collective timeout (default: 30s)"));
  EXPECT_TRUE(Contains(usage, "message size (default: 1M)"));
  EXPECT_TRUE(Contains(usage, "--help"));
  EXPECT_EQ(flags_.command(), "tessera comm-bench");
}

TEST(ParseBytesTest, PlainAndSuffixed) {
  const struct {
    const char* text;
    int64_t expected;
  } cases[] = {{"0", 0},
               {"8", 8},
               {"64K", 65536},
               {"64k", 65536},
               {"256M", int64_t{256} << 20},
               {"1G", int64_t{1} << 30},
               {"3g", int64_t{3} << 30},
               {"1048576G", int64_t{1} << 50}};
  for (const auto& c : cases) {
    int64_t bytes = -1;
    ASSERT_OK(ParseBytes(c.text, &bytes)) << c.text;
    EXPECT_EQ(bytes, c.expected) << c.text;
  }
}

TEST(ParseBytesTest, RejectsMalformed) {
  for (const char* bad : {"", "K", "1.5M", "-1", "-1K", "12X", "1T", "8KB", "0x10", "1048577G"}) {
    int64_t bytes = 77;
    EXPECT_TRUE(IsError(ParseBytes(bad, &bytes), absl::StatusCode::kInvalidArgument,
                        {absl::StrCat("'", bad, "'"), "not a byte count"}))
        << bad;
    EXPECT_EQ(bytes, 77) << "output written on failure for '" << bad << "'";
  }
}

TEST(FormatBytesTest, ExactMultiplesUseSuffix) {
  EXPECT_EQ(FormatBytes(0), "0");
  EXPECT_EQ(FormatBytes(8), "8");
  EXPECT_EQ(FormatBytes(1000), "1000");
  EXPECT_EQ(FormatBytes(1024), "1K");
  EXPECT_EQ(FormatBytes(1536), "1536");
  EXPECT_EQ(FormatBytes(65536), "64K");
  EXPECT_EQ(FormatBytes(int64_t{3} << 19), "1536K");  // 1.5M
  EXPECT_EQ(FormatBytes(int64_t{256} << 20), "256M");
  EXPECT_EQ(FormatBytes(int64_t{1} << 30), "1G");
  EXPECT_EQ(FormatBytes(int64_t{3} << 30), "3G");
  EXPECT_EQ(FormatBytes((int64_t{1} << 30) + (int64_t{1} << 20)), "1025M");
}

TEST(FormatBytesTest, RoundTripsThroughParseBytes) {
  for (int64_t bytes : {int64_t{0}, int64_t{7}, int64_t{4096}, int64_t{1} << 25, int64_t{5} << 30,
                        int64_t{1234567}}) {
    int64_t parsed = -1;
    ASSERT_OK(ParseBytes(FormatBytes(bytes), &parsed)) << bytes;
    EXPECT_EQ(parsed, bytes);
  }
}

TEST(DoubleFlagTest, ParsesDecimalsAndRefusesTheRest) {
  FlagSet flags("tessera generate", "Generates.");
  double fraction = 0.9;
  flags.Double("fraction", &fraction, "a share");
  bool help = false;
  EXPECT_TRUE(Contains(flags.Usage(), "a share (default: 0.9)"));
  ASSERT_OK(flags.Parse({"--fraction", "0.25"}, &help));
  EXPECT_EQ(fraction, 0.25);
  ASSERT_OK(flags.Parse({"--fraction=1e-1"}, &help));
  EXPECT_EQ(fraction, 0.1);
  for (const char* bad : {"", "abc", "0.5x", "inf", "nan"}) {
    EXPECT_TRUE(
        IsError(flags.Parse({"--fraction", bad}, &help), absl::StatusCode::kInvalidArgument,
                {"tessera generate: --fraction", absl::StrCat("'", bad, "'"), "not a number"}))
        << bad;
    EXPECT_EQ(fraction, 0.1) << "a rejected value must leave the flag unchanged: " << bad;
  }
}

TEST(DeviceFlagTest, CpuAlwaysCudaWhenBuiltWithIt) {
  ASSERT_OK_AND_ASSIGN(DeviceType cpu, ParseDeviceFlag("cpu"));
  EXPECT_EQ(cpu, DeviceType::kCpu);
  if (BuiltWithCuda()) {
    ASSERT_OK_AND_ASSIGN(DeviceType cuda, ParseDeviceFlag("cuda"));
    EXPECT_EQ(cuda, DeviceType::kCuda);
  } else {
    EXPECT_TRUE(IsError(ParseDeviceFlag("cuda"), absl::StatusCode::kFailedPrecondition,
                        {"--device cuda", "no CUDA support"}));
  }
  for (const char* bad : {"gpu", "CUDA", "cuda:0", ""}) {
    EXPECT_TRUE(IsError(ParseDeviceFlag(bad), absl::StatusCode::kInvalidArgument,
                        {"--device", absl::StrCat("'", bad, "'"), "not cpu or cuda"}))
        << bad;
  }
}

TEST(DeviceFlagTest, KvCacheMemoryFractionMustBeAShare) {
  for (double good : {1e-3, 0.5, 0.9, 1.0}) EXPECT_OK(CheckKvCacheMemoryFraction(good)) << good;
  for (double bad : {0.0, -0.5, 1.01, 2.0}) {
    EXPECT_TRUE(IsError(CheckKvCacheMemoryFraction(bad), absl::StatusCode::kInvalidArgument,
                        {"--kv-cache-memory-fraction", "not in (0, 1]"}))
        << bad;
  }
}

TEST(DeviceFlagTest, SubcommandsDeclareThemWithDefaults) {
  FlagSet flags("tessera generate", "Generates.");
  std::string device = "cpu";
  double fraction = kDefaultKvCacheMemoryFraction;
  AddDeviceFlag(flags, &device);
  AddKvCacheMemoryFractionFlag(flags, &fraction);
  EXPECT_TRUE(Contains(flags.Usage(), "--device"));
  EXPECT_TRUE(Contains(flags.Usage(), "(default: cpu)"));
  EXPECT_TRUE(Contains(flags.Usage(), "--kv-cache-memory-fraction"));
  EXPECT_TRUE(Contains(flags.Usage(), "(default: 0.9)"));
  bool help = false;
  ASSERT_OK(flags.Parse({"--device", "cuda", "--kv-cache-memory-fraction=0.5"}, &help));
  EXPECT_EQ(device, "cuda");
  EXPECT_EQ(fraction, 0.5);
}

// tessera serve starts one mpirun job per group: -np is the group's TP degree, and each job
// names its replica (so groups register as host/replica0, host/replica1, ...).
TEST(WorkerJobTest, EachReplicaIsAJobOfItsOwn) {
  WorkerJobConfig config;
  config.np = 4;
  config.tp = 2;
  ASSERT_OK(CheckWorkerJobConfig(config));
  for (int replica : {0, 1}) {
    std::vector<std::string> argv = WorkerCommand(config, 50051, {.first_replica = replica});
    auto np = std::find(argv.begin(), argv.end(), "-np");
    ASSERT_NE(np, argv.end());
    EXPECT_EQ(*(np + 1), "2");
    auto offset = std::find(argv.begin(), argv.end(), "--replica-offset");
    ASSERT_NE(offset, argv.end());
    EXPECT_EQ(*(offset + 1), std::to_string(replica));
    // Jobs that share a machine must not all bind to its first cores.
    auto bind = std::find(argv.begin(), argv.end(), "--bind-to");
    ASSERT_NE(bind, argv.end());
    EXPECT_EQ(*(bind + 1), "none");
    // ... nor take the same first GPUs: replica 1's ranks start at slot 2.
    EXPECT_NE(
        std::find(argv.begin(), argv.end(), absl::StrCat("TESSERA_NODE_FIRST_SLOT=", 2 * replica)),
        argv.end());
    EXPECT_NE(std::find(argv.begin(), argv.end(), "TESSERA_NODE_RANKS=4"), argv.end());
  }
  config.supervision.max_failed_starts = 0;
  EXPECT_TRUE(IsError(CheckWorkerJobConfig(config), absl::StatusCode::kInvalidArgument,
                      {"--max-failed-starts"}));
}

// With --train-groups N the first N groups are one job (mpirun -np N x tp), which alone runs
// --train-config; the other groups keep a job each.
TEST(WorkerJobTest, TheGroupsOfADataParallelFineTuneAreOneJob) {
  WorkerJobConfig config;
  config.np = 6;
  config.tp = 2;
  config.train_config = "train.json";
  config.train_groups = 2;
  ASSERT_OK(CheckWorkerJobConfig(config));
  const std::vector<JobGroups> jobs = LocalJobs(config);
  ASSERT_EQ(jobs.size(), 2u);
  EXPECT_EQ(jobs[0].first_replica, 0);
  EXPECT_EQ(jobs[0].groups, 2);
  EXPECT_EQ(jobs[1].first_replica, 2);
  EXPECT_EQ(jobs[1].groups, 1);
  auto value_of = [](const std::vector<std::string>& argv, const std::string& flag) {
    auto at = std::find(argv.begin(), argv.end(), flag);
    return at == argv.end() || at + 1 == argv.end() ? std::string("(absent)") : *(at + 1);
  };
  auto has = [](const std::vector<std::string>& argv, const std::string& word) {
    return std::find(argv.begin(), argv.end(), word) != argv.end();
  };
  const std::vector<std::string> tune = WorkerCommand(config, 50051, jobs[0]);
  EXPECT_EQ(value_of(tune, "-np"), "4");
  EXPECT_EQ(value_of(tune, "--tp"), "2");
  EXPECT_EQ(value_of(tune, "--replica-offset"), "0");
  EXPECT_EQ(value_of(tune, "--train-config"), "train.json");
  EXPECT_TRUE(has(tune, "TESSERA_NODE_FIRST_SLOT=0"));
  EXPECT_TRUE(has(tune, "TESSERA_NODE_RANKS=6"));
  const std::vector<std::string> other = WorkerCommand(config, 50051, jobs[1]);
  EXPECT_EQ(value_of(other, "-np"), "2");
  EXPECT_EQ(value_of(other, "--replica-offset"), "2");
  EXPECT_FALSE(has(other, "--train-config"));
  EXPECT_TRUE(has(other, "TESSERA_NODE_FIRST_SLOT=4"));

  // Every group in the fine-tune: one job, which binds its ranks as mpirun does.
  config.train_groups = 3;
  ASSERT_OK(CheckWorkerJobConfig(config));
  ASSERT_EQ(LocalJobs(config).size(), 1u);
  const std::vector<std::string> all = WorkerCommand(config, 50051, LocalJobs(config)[0]);
  EXPECT_EQ(value_of(all, "-np"), "6");
  EXPECT_FALSE(has(all, "--bind-to"));

  config.train_groups = 4;
  EXPECT_TRUE(IsError(CheckWorkerJobConfig(config), absl::StatusCode::kInvalidArgument,
                      {"--train-groups 4", "3 group(s)"}));
  config.train_groups = 0;
  EXPECT_TRUE(IsError(CheckWorkerJobConfig(config), absl::StatusCode::kInvalidArgument,
                      {"--train-groups 0"}));

  // Without --train-config the groups still run as one job, for a fine-tune that the
  // coordinator's StartTraining starts on them; no worker runs one from the start.
  config.train_groups = 2;
  config.train_config.clear();
  ASSERT_OK(CheckWorkerJobConfig(config));
  ASSERT_EQ(LocalJobs(config).size(), 2u);
  EXPECT_EQ(LocalJobs(config)[0].groups, 2);
  EXPECT_FALSE(has(WorkerCommand(config, 50051, LocalJobs(config)[0]), "--train-config"));
}

// --quantize-activations defaults to auto: int8 activations for int4 weights, f32 for int8
// ones; a job passes the flag on only when it was given, so its workers resolve auto alike.
TEST(QuantizeFlagsTest, ActivationsFollowTheWeightsUnlessGiven) {
  QuantizeFlags quantize;
  FlagSet flags("test", "test");
  AddQuantizeFlags(flags, &quantize);
  bool help = false;
  ASSERT_OK(flags.Parse({"--quantize", "int4"}, &help));
  ASSERT_OK_AND_ASSIGN(std::optional<model::WeightQuantization> int4, ParseQuantizeFlags(quantize));
  EXPECT_EQ(int4->activations, kernels::ActivationQuant::kInt8);
  EXPECT_EQ(QuantizeArguments(quantize), (std::vector<std::string>{"--quantize", "int4"}));
  ASSERT_OK(flags.Parse({"--quantize", "int8"}, &help));
  ASSERT_OK_AND_ASSIGN(std::optional<model::WeightQuantization> int8, ParseQuantizeFlags(quantize));
  EXPECT_EQ(int8->activations, kernels::ActivationQuant::kF32);
  ASSERT_OK(flags.Parse({"--quantize", "int4", "--quantize-activations", "f32"}, &help));
  ASSERT_OK_AND_ASSIGN(std::optional<model::WeightQuantization> exact,
                       ParseQuantizeFlags(quantize));
  EXPECT_EQ(exact->activations, kernels::ActivationQuant::kF32);
  EXPECT_EQ(QuantizeArguments(quantize),
            (std::vector<std::string>{"--quantize", "int4", "--quantize-activations", "f32"}));
}

TEST(DeviceFlagTest, WorkerJobPassesTheDeviceToItsWorkers) {
  WorkerJobConfig config;
  std::vector<std::string> cpu = WorkerCommand(config, 50051, {});
  EXPECT_EQ(std::find(cpu.begin(), cpu.end(), "--device"), cpu.end());
  ASSERT_OK(CheckWorkerJobConfig(config));

  config.device = "cuda";
  config.kv_cache_memory_fraction = 0.75;
  std::vector<std::string> cuda = WorkerCommand(config, 50051, {});
  auto device = std::find(cuda.begin(), cuda.end(), "--device");
  ASSERT_NE(device, cuda.end());
  ASSERT_NE(device + 1, cuda.end());
  EXPECT_EQ(*(device + 1), "cuda");
  auto fraction = std::find(cuda.begin(), cuda.end(), "--kv-cache-memory-fraction");
  ASSERT_NE(fraction, cuda.end());
  ASSERT_NE(fraction + 1, cuda.end());
  EXPECT_EQ(*(fraction + 1), "0.75");
  if (BuiltWithCuda()) {
    ASSERT_OK(CheckWorkerJobConfig(config));
  } else {
    EXPECT_TRUE(IsError(CheckWorkerJobConfig(config), absl::StatusCode::kFailedPrecondition,
                        {"--device cuda"}));
  }
  config.kv_cache_memory_fraction = 1.5;
  EXPECT_FALSE(CheckWorkerJobConfig(config).ok());
  config.device = "tpu";
  EXPECT_TRUE(IsError(CheckWorkerJobConfig(config), absl::StatusCode::kInvalidArgument,
                      {"--device", "'tpu'"}));
}

}  // namespace
}  // namespace tessera::launcher
