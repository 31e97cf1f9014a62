#ifndef TESSERA_RUNTIME_TRAIN_TENSORBOARD_H_
#define TESSERA_RUNTIME_TRAIN_TENSORBOARD_H_

// TensorBoard event files of scalar series, written without TensorFlow or a protobuf library.
//
// File format (TFRecord): records one after another, each
//   uint64 length                       little endian
//   uint32 MaskedCrc32c(length bytes)   little endian
//   byte   data[length]                 one serialized tensorflow.Event
//   uint32 MaskedCrc32c(data)           little endian
// The first record is the Event {wall_time, file_version: "brain.Event:2"}; every scalar is an
// Event {wall_time, step, summary {value {tag, simple_value}}} (field numbers in
// tensorboard.cc). TensorBoard (`tensorboard --logdir <dir>`) reads every
// events.out.tfevents.* file of a directory as one run, and reads a file while it grows.

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tessera::train {

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) of `data`: Crc32c("123456789") is
// 0xE3069283.
uint32_t Crc32c(absl::string_view data);

// The checksum TFRecord stores: Crc32c(data) rotated right by 15 bits plus 0xa282ead8.
uint32_t MaskedCrc32c(absl::string_view data);

// Writes one event file of scalar series:
//   <dir>/events.out.tfevents.<unix seconds>.<hostname>.<pid>.<n>
// where n counts the writers this process created, so that two writers never share a file.
// Values are stored as float32 (simple_value is a float): a double beyond float's range
// becomes an infinity of its sign, and NaN stays NaN.
//
// After a write fails, every later call returns that error: the file may end in a partial
// record, which readers take for a file still being written. The destructor flushes and
// closes the file, ignoring errors (call Flush first to see them).
//
// Thread compatible: a writer may be used from one thread at a time; distinct writers may be
// used concurrently.
class TensorBoardWriter {
 public:
  // Creates `dir` (and its parents) when missing, then the file, and writes the file_version
  // event. INVALID_ARGUMENT for an empty `dir`; otherwise the errno-derived code (for example
  // PERMISSION_DENIED, or FAILED_PRECONDITION when a path component is not a directory),
  // with a message naming the path.
  static absl::StatusOr<std::unique_ptr<TensorBoardWriter>> Create(const std::string& dir);

  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  // Appends one point of the series `tag` (for example "train/loss"): `value` at `step`, with
  // the wall time now. INVALID_ARGUMENT for an empty tag. May only buffer the record; a full
  // buffer (64 KiB) is written out.
  absl::Status AddScalar(absl::string_view tag, double value, int64_t step);

  // Hands every buffered record to the OS (write(2), not fsync): readers then see it.
  absl::Status Flush();

  // The event file's path.
  const std::string& path() const { return path_; }

 private:
  TensorBoardWriter(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}

  // Frames `event` (a serialized Event) as a TFRecord into the buffer.
  absl::Status AppendRecord(absl::string_view event);

  const std::string path_;
  const int fd_;
  std::string buffer_;  // records not yet written to fd_
  absl::Status error_;  // the first write error, returned by every later call
};

}  // namespace tessera::train

#endif  // TESSERA_RUNTIME_TRAIN_TENSORBOARD_H_
