#include "runtime/train/tensorboard.h"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <system_error>

#include "absl/strings/str_cat.h"

namespace tessera::train {
namespace {

// CRC-32C, byte at a time: records are small and written once per step.
constexpr std::array<uint32_t, 256> MakeCrc32cTable() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t crc = i;
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ ((crc & 1) ? 0x82F63B78u : 0u);
    table[i] = crc;
  }
  return table;
}
constexpr std::array<uint32_t, 256> kCrc32cTable = MakeCrc32cTable();

// Above this many buffered bytes AddScalar writes them out.
constexpr size_t kBufferLimit = 64 << 10;

// Protocol buffer wire types (protobuf.dev/programming-guides/encoding).
constexpr uint32_t kVarint = 0;
constexpr uint32_t kFixed64 = 1;
constexpr uint32_t kLengthDelimited = 2;
constexpr uint32_t kFixed32 = 5;

// Field numbers, from tensorflow/core/util/event.proto:
//   message Event { double wall_time = 1; int64 step = 2;
//                   oneof what { string file_version = 3; ...; Summary summary = 5; ... } }
constexpr uint32_t kEventWallTime = 1;
constexpr uint32_t kEventStep = 2;
constexpr uint32_t kEventFileVersion = 3;
constexpr uint32_t kEventSummary = 5;
// and tensorflow/core/framework/summary.proto:
//   message Summary { repeated Value value = 1; }
//   message Summary.Value { string tag = 1; oneof value { float simple_value = 2; ... } }
constexpr uint32_t kSummaryValue = 1;
constexpr uint32_t kValueTag = 1;
constexpr uint32_t kValueSimpleValue = 2;

// With version 2 TensorBoard keeps every point of a file whose steps go back (a run resumed
// from a checkpoint repeats steps); with version 1 it would discard the points at or past
// the repeated step.
constexpr absl::string_view kFileVersion = "brain.Event:2";

void PutFixed32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>(v >> (8 * i)));
}

void PutFixed64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>(v >> (8 * i)));
}

void PutVarint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

void PutKey(std::string& out, uint32_t field, uint32_t wire_type) {
  PutVarint(out, (field << 3) | wire_type);
}

void PutBytesField(std::string& out, uint32_t field, absl::string_view bytes) {
  PutKey(out, field, kLengthDelimited);
  PutVarint(out, bytes.size());
  out.append(bytes.data(), bytes.size());
}

void PutDoubleField(std::string& out, uint32_t field, double v) {
  uint64_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  PutKey(out, field, kFixed64);
  PutFixed64(out, bits);
}

void PutFloatField(std::string& out, uint32_t field, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  PutKey(out, field, kFixed32);
  PutFixed32(out, bits);
}

// int64 fields are varints of the two's complement: a negative step takes 10 bytes.
void PutInt64Field(std::string& out, uint32_t field, int64_t v) {
  PutKey(out, field, kVarint);
  PutVarint(out, static_cast<uint64_t>(v));
}

double WallTimeNow() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Converting a double outside float's range is undefined behaviour; saturate instead.
float ToFloat(double v) {
  constexpr double kMax = std::numeric_limits<float>::max();
  constexpr float kInf = std::numeric_limits<float>::infinity();
  if (std::abs(v) > kMax) return v > 0 ? kInf : -kInf;  // false for NaN, which converts
  return static_cast<float>(v);
}

std::string HostName() {
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0') return "localhost";
  return host;
}

absl::Status WriteAll(int fd, absl::string_view data, const std::string& path) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, absl::StrCat("cannot write ", path));
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

}  // namespace

uint32_t Crc32c(absl::string_view data) {
  uint32_t crc = 0xFFFFFFFFu;
  for (const char c : data) {
    crc = kCrc32cTable[(crc ^ static_cast<uint8_t>(c)) & 0xFF] ^ (crc >> 8);
  }
  return crc ^ 0xFFFFFFFFu;
}

uint32_t MaskedCrc32c(absl::string_view data) {
  const uint32_t crc = Crc32c(data);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

absl::StatusOr<std::unique_ptr<TensorBoardWriter>> TensorBoardWriter::Create(
    const std::string& dir) {
  if (dir.empty()) return absl::InvalidArgumentError("TensorBoard log directory is empty");
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error) {
    return absl::ErrnoToStatus(error.value(), absl::StrCat("cannot create directory ", dir));
  }

  static std::atomic<int> writers_created{0};
  const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(
                           std::chrono::system_clock::now().time_since_epoch())
                           .count();
  std::string path =
      (std::filesystem::path(dir) / absl::StrCat("events.out.tfevents.", seconds, ".", HostName(),
                                                 ".", getpid(), ".", writers_created.fetch_add(1)))
          .string();
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("cannot create ", path));

  std::unique_ptr<TensorBoardWriter> writer(new TensorBoardWriter(std::move(path), fd));
  std::string event;
  PutDoubleField(event, kEventWallTime, WallTimeNow());
  PutBytesField(event, kEventFileVersion, kFileVersion);
  if (absl::Status status = writer->AppendRecord(event); !status.ok()) return status;
  if (absl::Status status = writer->Flush(); !status.ok()) return status;
  return writer;
}

TensorBoardWriter::~TensorBoardWriter() {
  Flush().IgnoreError();
  ::close(fd_);
}

absl::Status TensorBoardWriter::AddScalar(absl::string_view tag, double value, int64_t step) {
  if (!error_.ok()) return error_;
  if (tag.empty()) return absl::InvalidArgumentError("TensorBoard scalar with an empty tag");

  std::string summary_value;
  PutBytesField(summary_value, kValueTag, tag);
  PutFloatField(summary_value, kValueSimpleValue, ToFloat(value));
  std::string summary;
  PutBytesField(summary, kSummaryValue, summary_value);
  std::string event;
  PutDoubleField(event, kEventWallTime, WallTimeNow());
  PutInt64Field(event, kEventStep, step);
  PutBytesField(event, kEventSummary, summary);
  if (absl::Status status = AppendRecord(event); !status.ok()) return status;
  return buffer_.size() >= kBufferLimit ? Flush() : absl::OkStatus();
}

absl::Status TensorBoardWriter::Flush() {
  if (!error_.ok()) return error_;
  error_ = WriteAll(fd_, buffer_, path_);
  buffer_.clear();
  return error_;
}

absl::Status TensorBoardWriter::AppendRecord(absl::string_view event) {
  if (!error_.ok()) return error_;
  std::string length;
  PutFixed64(length, event.size());
  buffer_ += length;
  PutFixed32(buffer_, MaskedCrc32c(length));
  buffer_.append(event.data(), event.size());
  PutFixed32(buffer_, MaskedCrc32c(event));
  return absl::OkStatus();
}

}  // namespace tessera::train
