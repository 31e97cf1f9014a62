// Tests of runtime/model/resident_memory.h, and that reading through the mapping keeps a
// rank's resident memory near its share: a row slice faults in only its own pages, and
// loading one rank of a model peaks near that rank's bytes, not the checkpoint's.

#include "runtime/model/resident_memory.h"

#ifdef __GLIBC__
#include <malloc.h>
#endif

#include <algorithm>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "runtime/model/model_config.h"
#include "runtime/model/safetensors.h"
#include "runtime/model/weight_loader.h"
#include "runtime/model/weight_plan.h"
#include "tests/model/model_test_util.h"
#include "tests/unit/status_test_util.h"

namespace tessera::model {
namespace {

using ::tessera::model::testing::PatternTensor;
using ::tessera::model::testing::PatternValue;
using ::tessera::model::testing::ScratchDir;
using ::tessera::model::testing::WriteBytes;
using ::tessera::testing::IsError;

constexpr uint64_t kMiB = uint64_t{1} << 20;

TEST(ResidentMemoryTest, ParsesProcStatus) {
  constexpr absl::string_view kStatus =
      "Name:\ttessera\nVmPeak:\t  900000 kB\nVmHWM:\t    5000 kB\nVmRSS:\t    4000 kB\n"
      "RssAnon:\t    1000 kB\nRssFile:\t    2500 kB\nRssShmem:\t     500 kB\nThreads:\t1\n";
  ASSERT_OK_AND_ASSIGN(ResidentMemory memory, ParseProcStatus(std::string(kStatus)));
  EXPECT_EQ(memory.peak_rss_bytes, 5000u * 1024);
  EXPECT_EQ(memory.rss_bytes, 4000u * 1024);
  EXPECT_EQ(memory.rss_anon_bytes, 1000u * 1024);
  EXPECT_EQ(memory.rss_file_bytes, 2500u * 1024);
  EXPECT_EQ(memory.rss_shmem_bytes, 500u * 1024);
  EXPECT_EQ(memory.mapped_file_bytes(), 3000u * 1024);

  EXPECT_TRUE(
      IsError(ParseProcStatus("VmRSS:\t1 kB\n"), absl::StatusCode::kUnavailable, {"RssAnon"}));
  EXPECT_TRUE(IsError(ParseProcStatus(std::string(kStatus) + "VmRSS:\tlots\n"),
                      absl::StatusCode::kUnavailable, {"lots"}));
}

TEST(ResidentMemoryTest, ReadsThisProcess) {
  ASSERT_OK_AND_ASSIGN(ResidentMemory memory, ReadResidentMemory());
  EXPECT_GT(memory.rss_bytes, 0u);
  EXPECT_GE(memory.rss_bytes, memory.rss_anon_bytes);
  EXPECT_GE(memory.peak_rss_bytes, memory.rss_bytes);
}

TEST(ResidentMemoryTest, FormatsBytes) {
  EXPECT_EQ(FormatBytes(512), "512 B");
  EXPECT_EQ(FormatBytes(3 * 1024 + 512), "3.5 KiB");
  EXPECT_EQ(FormatBytes(3 * kMiB + kMiB / 2), "3.5 MiB");
  EXPECT_EQ(FormatBytes(uint64_t{1288490189}), "1.20 GiB");
}

uint64_t MappedFileBytes() {
  absl::StatusOr<ResidentMemory> memory = ReadResidentMemory();
  EXPECT_TRUE(memory.ok()) << memory.status();
  return memory.ok() ? memory->mapped_file_bytes() : 0;
}

// One rank's rows of a 64 MiB tensor fault in that rank's 8 MiB, not the file; reading the
// whole tensor, the control, does. The kernel maps file pages in whole folios (up to 2 MiB
// on recent kernels) around each fault, so either edge of the slice may bring in up to
// 2 MiB of its neighbours.
TEST(ResidentMemoryTest, RowSliceFaultsInOnlyItsPages) {
  ScratchDir dir;
  const int64_t rows = 8192, cols = 2048;  // f32: 64 MiB
  {
    Tensor weight = PatternTensor(DType::kF32, {rows, cols}, 0);
    ASSERT_OK(WriteSafetensors(dir.File("big.safetensors"), {{"w", weight}}));
  }
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<SafetensorsFile> file,
                       SafetensorsFile::Open(dir.File("big.safetensors")));
  const TensorInfo& info = *file->Find("w");
  file->ReleasePages(info);

  const uint64_t before = MappedFileBytes();
  ASSERT_OK_AND_ASSIGN(Tensor slice, file->Read("w", TensorSlice::Rows(1024, 2048)));
  const uint64_t after_slice = MappedFileBytes();
  const uint64_t slice_bytes = slice.nbytes();
  ASSERT_EQ(slice_bytes, 8 * kMiB);
  EXPECT_EQ(slice.span<float>()[0], PatternValue(0, 1024 * cols));
  EXPECT_EQ(slice.span<float>()[slice.numel() - 1], PatternValue(0, 2048 * cols - 1));
  const uint64_t slice_growth = after_slice - before;
  std::printf("row slice of %s: mapped file pages grew by %s\n", FormatBytes(info.nbytes).c_str(),
              FormatBytes(slice_growth).c_str());
  EXPECT_GE(slice_growth + kMiB, slice_bytes) << "the slice's own pages should be counted";
  EXPECT_LE(slice_growth, slice_bytes + 4 * kMiB) << "a row slice touched pages outside itself";

  file->ReleasePages(info);
  EXPECT_LE(MappedFileBytes(), before + kMiB / 4) << "ReleasePages left the pages mapped";

  // Control: the whole tensor maps the whole 64 MiB, so the bound above can fail.
  ASSERT_OK_AND_ASSIGN(Tensor whole, file->Read("w"));
  const uint64_t whole_growth = MappedFileBytes() - before;
  EXPECT_GE(whole_growth, info.nbytes - kMiB);
  file->ReleasePages(info);
}

// Loading rank 1 of 4 of a ~61 MiB model peaks at about its share (a quarter, plus the
// replicated norms) plus one tensor's pages, far below the checkpoint's size.
TEST(ResidentMemoryTest, LoadingOneRankPeaksNearItsShare) {
  constexpr absl::string_view kConfig = R"({"architectures": ["LlamaForCausalLM"],
    "vocab_size": 8192, "hidden_size": 512, "intermediate_size": 2048,
    "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2,
    "torch_dtype": "float32"})";
  ScratchDir dir;
  ASSERT_OK_AND_ASSIGN(ModelConfig config, ParseModelConfig(kConfig));
  uint64_t checkpoint_bytes = 0;
  uint64_t largest_split_tensor = 0;
  {
    ASSERT_OK_AND_ASSIGN(WeightPlan full, PlanWeights(config, 1, 0));
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (const PlannedTensor& planned : full.tensors) {
      tensors.emplace_back(planned.name, PatternTensor(DType::kF32, planned.shape, 1));
      checkpoint_bytes += tensors.back().second.nbytes();
      if (planned.kind != ShardKind::kVocabParallel) {
        largest_split_tensor =
            std::max<uint64_t>(largest_split_tensor, tensors.back().second.nbytes());
      }
    }
    WriteBytes(dir.File("config.json"), kConfig);
    ASSERT_OK(WriteSafetensors(dir.File("model.safetensors"), tensors));
  }
  // Hand the freed generator memory back to the system, so that the loader's allocations
  // show up as growth rather than reuse of pages already resident.
#ifdef __GLIBC__
  malloc_trim(0);
#endif
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(dir.path()));
  ASSERT_OK_AND_ASSIGN(WeightPlan plan, PlanWeights(config, 4, 1));
  const uint64_t share = plan.RankBytes(DType::kF32);

  if (!ResetPeakResidentMemory().ok()) GTEST_SKIP() << "cannot reset VmHWM here";
  ASSERT_OK_AND_ASSIGN(ResidentMemory start, ReadResidentMemory());
  ASSERT_OK_AND_ASSIGN(RankWeights weights, LoadRankWeights(*checkpoint, plan));
  ASSERT_OK_AND_ASSIGN(ResidentMemory end, ReadResidentMemory());
  EXPECT_EQ(weights.bytes, share);
  const uint64_t peak_growth = end.peak_rss_bytes - start.rss_bytes;
  std::printf(
      "checkpoint %s, rank 1 of 4 holds %s; peak resident growth while loading %s, "
      "mapped file pages after %s\n",
      FormatBytes(checkpoint_bytes).c_str(), FormatBytes(share).c_str(),
      FormatBytes(peak_growth).c_str(),
      FormatBytes(end.mapped_file_bytes() - start.mapped_file_bytes()).c_str());
  // Column-parallel reads may map a whole tensor's pages (the kernel maps cached neighbours
  // of a faulting page) until they are released, so allow one tensor beyond the share.
  EXPECT_LE(peak_growth, share + largest_split_tensor + 8 * kMiB);
  EXPECT_LT(peak_growth, checkpoint_bytes / 2);
  EXPECT_LE(end.mapped_file_bytes(), start.mapped_file_bytes() + kMiB)
      << "the loader left file pages mapped";
}

}  // namespace
}  // namespace tessera::model
