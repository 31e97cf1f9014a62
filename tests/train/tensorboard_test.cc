// Tests of the TensorBoard event writer (runtime/train/tensorboard.h): CRC-32C against the
// RFC 3720 vectors, the file read back by a TFRecord and protobuf reader written here (both
// CRCs of every record, every Event field), and, in TensorBoardPackageTest, the same file
// read by the tensorboard Python package (tests/train/read_tensorboard.py).

#include "runtime/train/tensorboard.h"

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <memory>
#include <optional>
#include <regex>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "gtest/gtest.h"
#include "tests/unit/status_test_util.h"

namespace tessera::train {
namespace {

using ::tessera::testing::IsError;

// A fresh directory under the test temp dir, removed with everything in it.
class ScratchDir {
 public:
  ScratchDir() {
    std::string pattern =
        (std::filesystem::path(::testing::TempDir()) / "tessera_tensorboard_XXXXXX");
    if (::mkdtemp(pattern.data()) == nullptr) ADD_FAILURE() << "mkdtemp failed for " << pattern;
    path_ = pattern;
  }
  ~ScratchDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// ---- A reader of TFRecord files of Events, independent of the writer's encoder. ----

// One decoded tensorflow.Event (event.proto, summary.proto).
struct Event {
  std::optional<double> wall_time;          // field 1, fixed64
  std::optional<int64_t> step;              // field 2, varint
  std::optional<std::string> file_version;  // field 3, bytes
  // Summary (field 5) values (Summary field 1): tag (field 1), simple_value (field 2, fixed32).
  std::vector<std::pair<std::string, float>> values;
};

uint64_t LittleEndian(absl::string_view bytes) {
  uint64_t v = 0;
  for (size_t i = bytes.size(); i-- > 0;) v = (v << 8) | static_cast<uint8_t>(bytes[i]);
  return v;
}

// One protobuf field: its number and wire type, and the varint, fixed or bytes payload.
struct Field {
  uint32_t number = 0;
  uint32_t wire_type = 0;
  uint64_t integer = 0;     // varint, fixed32 or fixed64
  absl::string_view bytes;  // length-delimited
};

absl::StatusOr<uint64_t> ReadVarint(absl::string_view& in) {
  uint64_t v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (in.empty()) return absl::DataLossError("varint runs past the end");
    const uint8_t byte = static_cast<uint8_t>(in[0]);
    in.remove_prefix(1);
    v |= static_cast<uint64_t>(byte & 0x7F) << shift;
    if ((byte & 0x80) == 0) return v;
  }
  return absl::DataLossError("varint longer than 10 bytes");
}

absl::StatusOr<std::vector<Field>> ReadFields(absl::string_view in) {
  std::vector<Field> fields;
  while (!in.empty()) {
    absl::StatusOr<uint64_t> key = ReadVarint(in);
    if (!key.ok()) return key.status();
    Field field{static_cast<uint32_t>(*key >> 3), static_cast<uint32_t>(*key & 7)};
    size_t fixed = 0;
    switch (field.wire_type) {
      case 0: {
        absl::StatusOr<uint64_t> v = ReadVarint(in);
        if (!v.ok()) return v.status();
        field.integer = *v;
        break;
      }
      case 1:
        fixed = 8;
        break;
      case 5:
        fixed = 4;
        break;
      case 2: {
        absl::StatusOr<uint64_t> length = ReadVarint(in);
        if (!length.ok()) return length.status();
        if (*length > in.size()) return absl::DataLossError("field runs past the end");
        field.bytes = in.substr(0, *length);
        in.remove_prefix(*length);
        break;
      }
      default:
        return absl::DataLossError(absl::StrCat("wire type ", field.wire_type));
    }
    if (fixed > 0) {
      if (in.size() < fixed) return absl::DataLossError("fixed field runs past the end");
      field.integer = LittleEndian(in.substr(0, fixed));
      in.remove_prefix(fixed);
    }
    fields.push_back(field);
  }
  return fields;
}

// Decodes an Event holding only the fields the writer may write; anything else is an error.
absl::StatusOr<Event> DecodeEvent(absl::string_view data) {
  absl::StatusOr<std::vector<Field>> fields = ReadFields(data);
  if (!fields.ok()) return fields.status();
  Event event;
  for (const Field& f : *fields) {
    if (f.number == 1 && f.wire_type == 1) {
      double v;
      std::memcpy(&v, &f.integer, sizeof(v));
      event.wall_time = v;
    } else if (f.number == 2 && f.wire_type == 0) {
      event.step = static_cast<int64_t>(f.integer);
    } else if (f.number == 3 && f.wire_type == 2) {
      event.file_version = std::string(f.bytes);
    } else if (f.number == 5 && f.wire_type == 2) {
      absl::StatusOr<std::vector<Field>> summary = ReadFields(f.bytes);
      if (!summary.ok()) return summary.status();
      for (const Field& s : *summary) {
        if (s.number != 1 || s.wire_type != 2) return absl::DataLossError("Summary field");
        absl::StatusOr<std::vector<Field>> value = ReadFields(s.bytes);
        if (!value.ok()) return value.status();
        std::optional<std::string> tag;
        std::optional<float> simple_value;
        for (const Field& v : *value) {
          if (v.number == 1 && v.wire_type == 2) {
            tag = std::string(v.bytes);
          } else if (v.number == 2 && v.wire_type == 5) {
            const uint32_t bits = static_cast<uint32_t>(v.integer);
            float x;
            std::memcpy(&x, &bits, sizeof(x));
            simple_value = x;
          } else {
            return absl::DataLossError(absl::StrCat("Summary.Value field ", v.number));
          }
        }
        if (!tag || !simple_value) return absl::DataLossError("Summary.Value lacks a field");
        event.values.emplace_back(*tag, *simple_value);
      }
    } else {
      return absl::DataLossError(absl::StrCat("Event field ", f.number, " type ", f.wire_type));
    }
  }
  return event;
}

// Every record of a TFRecord file, each checked against both of its CRCs, decoded.
absl::StatusOr<std::vector<Event>> ReadEventFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(path);
  const std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  absl::string_view rest = file;
  std::vector<Event> events;
  while (!rest.empty()) {
    const std::string where = absl::StrCat(path, " record ", events.size());
    if (rest.size() < 12) return absl::DataLossError(absl::StrCat(where, ": truncated header"));
    const absl::string_view length_bytes = rest.substr(0, 8);
    if (LittleEndian(rest.substr(8, 4)) != MaskedCrc32c(length_bytes)) {
      return absl::DataLossError(absl::StrCat(where, ": length CRC"));
    }
    const uint64_t length = LittleEndian(length_bytes);
    rest.remove_prefix(12);
    if (rest.size() < length + 4) return absl::DataLossError(absl::StrCat(where, ": truncated"));
    const absl::string_view data = rest.substr(0, length);
    if (LittleEndian(rest.substr(length, 4)) != MaskedCrc32c(data)) {
      return absl::DataLossError(absl::StrCat(where, ": data CRC"));
    }
    rest.remove_prefix(length + 4);
    absl::StatusOr<Event> event = DecodeEvent(data);
    if (!event.ok()) {
      return absl::DataLossError(absl::StrCat(where, ": ", event.status().message()));
    }
    events.push_back(*std::move(event));
  }
  return events;
}

double Now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string LocalHostName() {
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0') return "localhost";
  return host;
}

// Whether two floats are the same value, NaN included.
bool SameFloat(float a, float b) { return (std::isnan(a) && std::isnan(b)) || a == b; }

// ---- CRC-32C ----

TEST(Crc32cTest, MatchesKnownVectors) {
  EXPECT_EQ(Crc32c(""), 0u);
  EXPECT_EQ(Crc32c("123456789"), 0xE3069283u);
  // RFC 3720 (iSCSI) appendix B.4.
  std::string bytes(32, '\0');
  EXPECT_EQ(Crc32c(bytes), 0x8A9136AAu);
  bytes.assign(32, '\xFF');
  EXPECT_EQ(Crc32c(bytes), 0x62A8AB43u);
  for (int i = 0; i < 32; ++i) bytes[i] = static_cast<char>(i);
  EXPECT_EQ(Crc32c(bytes), 0x46DD794Eu);
  for (int i = 0; i < 32; ++i) bytes[i] = static_cast<char>(31 - i);
  EXPECT_EQ(Crc32c(bytes), 0x113FDB5Cu);
}

TEST(Crc32cTest, MaskedAsTFRecordMasksIt) {
  // Values computed by tensorboard's own masked_crc32c.
  EXPECT_EQ(MaskedCrc32c(""), 0xA282EAD8u);
  EXPECT_EQ(MaskedCrc32c("123456789"), 0xC78AB0E5u);
  EXPECT_EQ(MaskedCrc32c("a"), 0x28E46E78u);
}

// ---- The writer, read back here ----

TEST(TensorBoardWriterTest, WritesTheFileVersionThenEveryScalar) {
  ScratchDir scratch;
  const std::string dir = scratch.path() + "/run/tb";  // created with its parent
  const double before = Now();
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<TensorBoardWriter> writer, TensorBoardWriter::Create(dir));

  const std::string name = std::filesystem::path(writer->path()).filename().string();
  EXPECT_EQ(std::filesystem::path(writer->path()).parent_path(), std::filesystem::path(dir));
  const std::regex pattern(
      absl::StrCat(R"(events\.out\.tfevents\.(\d+)\.)",
                   std::regex_replace(LocalHostName(), std::regex(R"(\.)"), R"(\.)"), R"(\.)",
                   getpid(), R"(\.\d+)"));
  std::smatch match;
  ASSERT_TRUE(std::regex_match(name, match, pattern)) << name;
  const double seconds = std::stod(match[1].str());
  EXPECT_GE(seconds, std::floor(before));
  EXPECT_LE(seconds, Now());

  EXPECT_OK(writer->AddScalar("train/loss", 2.5, 1));
  EXPECT_OK(writer->AddScalar("train/learning_rate", 1e-4, 1));
  EXPECT_OK(writer->AddScalar("train/loss", 2.25, 2));
  EXPECT_OK(writer->Flush());
  const double after = Now();

  ASSERT_OK_AND_ASSIGN(std::vector<Event> events, ReadEventFile(writer->path()));
  ASSERT_EQ(events.size(), 4u);
  EXPECT_EQ(events[0].file_version, "brain.Event:2");
  EXPECT_TRUE(events[0].values.empty());
  const std::vector<std::pair<std::string, float>> expected_values = {
      {"train/loss", 2.5f}, {"train/learning_rate", 1e-4f}, {"train/loss", 2.25f}};
  const std::vector<int64_t> expected_steps = {1, 1, 2};
  double previous_time = before;
  for (size_t i = 0; i < events.size(); ++i) {
    SCOPED_TRACE(absl::StrCat("event ", i));
    ASSERT_TRUE(events[i].wall_time.has_value());
    EXPECT_GE(*events[i].wall_time, previous_time);
    EXPECT_LE(*events[i].wall_time, after);
    previous_time = *events[i].wall_time;
    if (i == 0) continue;
    EXPECT_FALSE(events[i].file_version.has_value());
    EXPECT_EQ(events[i].step, expected_steps[i - 1]);
    ASSERT_EQ(events[i].values.size(), 1u);
    EXPECT_EQ(events[i].values[0], expected_values[i - 1]);
  }
}

TEST(TensorBoardWriterTest, StoresFloat32ValuesAndAnyInt64Step) {
  ScratchDir scratch;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<TensorBoardWriter> writer,
                       TensorBoardWriter::Create(scratch.path()));
  constexpr double kInf = std::numeric_limits<double>::infinity();
  const std::vector<std::pair<double, int64_t>> written = {
      {0.1, 0},
      {-3.75, -5},  // a negative step is a 10-byte varint
      {1e300, int64_t{1} << 40},
      {-1e300, std::numeric_limits<int64_t>::max()},
      {std::nan(""), std::numeric_limits<int64_t>::min()},
      {kInf, 7},
      {-kInf, 8},
      {1e-50, 9},  // below float's smallest subnormal: rounds to 0
  };
  const std::vector<float> stored = {0.1f,
                                     -3.75f,
                                     std::numeric_limits<float>::infinity(),
                                     -std::numeric_limits<float>::infinity(),
                                     std::numeric_limits<float>::quiet_NaN(),
                                     std::numeric_limits<float>::infinity(),
                                     -std::numeric_limits<float>::infinity(),
                                     0.0f};
  for (const auto& [value, step] : written) EXPECT_OK(writer->AddScalar("v", value, step));
  EXPECT_OK(writer->Flush());

  ASSERT_OK_AND_ASSIGN(std::vector<Event> events, ReadEventFile(writer->path()));
  ASSERT_EQ(events.size(), written.size() + 1);
  for (size_t i = 0; i < written.size(); ++i) {
    SCOPED_TRACE(absl::StrCat("value ", written[i].first));
    const Event& event = events[i + 1];
    EXPECT_EQ(event.step, written[i].second);
    ASSERT_EQ(event.values.size(), 1u);
    EXPECT_EQ(event.values[0].first, "v");
    EXPECT_TRUE(SameFloat(event.values[0].second, stored[i])) << event.values[0].second;
  }
}

TEST(TensorBoardWriterTest, FlushMakesRecordsVisibleAndTheDestructorFlushes) {
  ScratchDir scratch;
  std::string path;
  {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<TensorBoardWriter> writer,
                         TensorBoardWriter::Create(scratch.path()));
    path = writer->path();
    // The file_version event is on disk from the start, so an empty run is a valid file.
    ASSERT_OK_AND_ASSIGN(std::vector<Event> events, ReadEventFile(path));
    EXPECT_EQ(events.size(), 1u);

    EXPECT_OK(writer->AddScalar("a", 1, 1));
    EXPECT_OK(writer->Flush());
    ASSERT_OK_AND_ASSIGN(events, ReadEventFile(path));
    EXPECT_EQ(events.size(), 2u);
    EXPECT_OK(writer->AddScalar("a", 2, 2));  // left for the destructor
  }
  ASSERT_OK_AND_ASSIGN(std::vector<Event> events, ReadEventFile(path));
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[2].step, 2);
}

TEST(TensorBoardWriterTest, WritesOutAFullBuffer) {
  ScratchDir scratch;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<TensorBoardWriter> writer,
                       TensorBoardWriter::Create(scratch.path()));
  // About 50 bytes a record: several times the 64 KiB buffer.
  constexpr int kPoints = 5000;
  for (int step = 0; step < kPoints; ++step) {
    ASSERT_OK(writer->AddScalar("train/tokens_per_second", step * 0.5, step));
  }
  EXPECT_GT(std::filesystem::file_size(writer->path()), size_t{64} << 10);  // before Flush
  EXPECT_OK(writer->Flush());
  ASSERT_OK_AND_ASSIGN(std::vector<Event> events, ReadEventFile(writer->path()));
  ASSERT_EQ(events.size(), kPoints + 1u);
  for (int step = 0; step < kPoints; ++step) {
    EXPECT_EQ(events[step + 1].step, step);
    EXPECT_EQ(events[step + 1].values.at(0).second, static_cast<float>(step * 0.5));
  }
}

TEST(TensorBoardWriterTest, TwoWritersOfADirectoryWriteTwoFiles) {
  ScratchDir scratch;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<TensorBoardWriter> first,
                       TensorBoardWriter::Create(scratch.path()));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<TensorBoardWriter> second,
                       TensorBoardWriter::Create(scratch.path()));
  EXPECT_NE(first->path(), second->path());
  EXPECT_OK(first->AddScalar("x", 1, 1));
  EXPECT_OK(second->AddScalar("x", 2, 1));
  EXPECT_OK(first->Flush());
  EXPECT_OK(second->Flush());
  ASSERT_OK_AND_ASSIGN(std::vector<Event> events, ReadEventFile(second->path()));
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[1].values.at(0).second, 2.0f);
}

TEST(TensorBoardWriterTest, RefusesBadArguments) {
  EXPECT_TRUE(IsError(TensorBoardWriter::Create(""), absl::StatusCode::kInvalidArgument));

  ScratchDir scratch;
  const std::string file = scratch.path() + "/not_a_directory";
  std::ofstream(file) << "x";
  absl::StatusOr<std::unique_ptr<TensorBoardWriter>> under_file =
      TensorBoardWriter::Create(file + "/tb");
  EXPECT_FALSE(under_file.ok());
  EXPECT_TRUE(::tessera::testing::Contains(std::string(under_file.status().message()), file));

  ASSERT_OK_AND_ASSIGN(std::unique_ptr<TensorBoardWriter> writer,
                       TensorBoardWriter::Create(scratch.path()));
  EXPECT_TRUE(IsError(writer->AddScalar("", 1, 1), absl::StatusCode::kInvalidArgument));
}

// ---- The same file, read by TensorBoard itself ----

std::string ShellQuote(const std::string& s) {
  std::string quoted = "'";
  for (const char c : s) quoted += c == '\'' ? std::string(R"('\'')") : std::string(1, c);
  return quoted + "'";
}

// The first interpreter of TESSERA_TENSORBOARD_PYTHONS (':'-separated, from CMake: the
// virtual environment deploy/setup.sh makes, then the configured python3) that imports the
// tensorboard package; chosen now rather than at configure time, so that running setup.sh
// after configuring is enough.
std::optional<std::string> FindTensorBoardPython() {
  for (const absl::string_view candidate :
       absl::StrSplit(TESSERA_TENSORBOARD_PYTHONS, ':', absl::SkipEmpty())) {
    const std::string python(candidate);
    if (::access(python.c_str(), X_OK) != 0) continue;
    const std::string probe = absl::StrCat(
        ShellQuote(python),
        " -c 'import tensorboard.backend.event_processing.event_accumulator' >/dev/null 2>&1");
    if (std::system(probe.c_str()) == 0) return python;
  }
  return std::nullopt;
}

TEST(TensorBoardPackageTest, ShowsTheScalarsWritten) {
  const std::optional<std::string> python = FindTensorBoardPython();
  ASSERT_TRUE(python.has_value())
      << "no Python with the tensorboard package among " << TESSERA_TENSORBOARD_PYTHONS
      << "; run deploy/setup.sh, which installs it into ~/.local/share/tessera/venv";

  ScratchDir scratch;
  const std::string logdir = scratch.path() + "/tb";
  std::string expected;  // TAG STEP VALUE, one point a line (read_tensorboard.py)
  {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<TensorBoardWriter> writer,
                         TensorBoardWriter::Create(logdir));
    struct Point {
      const char* tag;
      int64_t step;
      double value;
      const char* shown;  // float32, as TensorBoard shows it
    };
    // Steps going back (5 then 3) are what a resumed run writes; TensorBoard keeps them.
    const Point points[] = {
        {"train/loss", 1, 2.5, "2.5"},
        {"train/learning_rate", 1, 1e-4, "0.0001"},
        {"train/loss", 5, 0.1, "0.1"},
        {"train/loss", 3, -1.25, "-1.25"},
        {"train/grad_norm", int64_t{1} << 40, 1e300, "inf"},
        {"train/grad_norm", int64_t{1} << 41, std::nan(""), "nan"},
        {"eval/loss", -2, 3, "3"},
    };
    for (const Point& p : points) {
      ASSERT_OK(writer->AddScalar(p.tag, p.value, p.step));
      absl::StrAppend(&expected, p.tag, " ", p.step, " ", p.shown, "\n");
    }
    ASSERT_OK(writer->Flush());
  }
  const std::string expected_path = scratch.path() + "/expected.txt";
  std::ofstream(expected_path) << expected;

  const std::string command =
      absl::StrCat(ShellQuote(*python), " ", ShellQuote(TESSERA_READ_TENSORBOARD_SCRIPT), " ",
                   ShellQuote(logdir), " ", ShellQuote(expected_path));
  const int status = std::system(command.c_str());
  ASSERT_NE(status, -1) << command;
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
      << command << " failed (its messages are above)";
}

}  // namespace
}  // namespace tessera::train
