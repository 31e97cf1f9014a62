#ifndef TESSERA_RUNTIME_MODEL_GGUF_FILE_H_
#define TESSERA_RUNTIME_MODEL_GGUF_FILE_H_

// GGUF files (the llama.cpp format), mapped read-only (mapped_file.h) and validated when
// opened. Versions 2 and 3, little-endian:
//
//   "GGUF"  u32 version  u64 tensor_count  u64 metadata_count
//   metadata_count x (string key, u32 value type, value)
//   tensor_count x (string name, u32 n_dims, u64 dims[n_dims], u32 ggml type, u64 offset)
//   padding to `general.alignment` (default 32), then the tensor data; each offset is
//   relative to the data's start and a multiple of the alignment.
//
// A string is a u64 length and that many bytes (UTF-8, not terminated). A value type is one of
// GgufValueType; an array is a u32 element type, a u64 count and the elements. Dimensions are
// in ggml's order: dims[0] is the contiguous one, so a Hugging Face (out, in) weight is stored
// with dims {in, out}.

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "runtime/core/tensor.h"
#include "runtime/model/gguf_quants.h"
#include "runtime/model/mapped_file.h"

namespace tessera::model {

enum class GgufValueType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};
absl::string_view GgufValueTypeName(GgufValueType type);  // "u32", "string", "array", ...

// One metadata value.
class GgufValue {
 public:
  GgufValueType type() const { return type_; }
  // An array's element type (meaningless for other values).
  GgufValueType element_type() const { return element_type_; }

  // nullopt when the value is not of a fitting type: AsUnsigned takes every integer type
  // with a non-negative value, AsSigned every integer type whose value fits int64, AsFloat
  // f32 and f64 values.
  std::optional<uint64_t> AsUnsigned() const;
  std::optional<int64_t> AsSigned() const;
  std::optional<double> AsFloat() const;
  std::optional<bool> AsBool() const;
  // nullptr when not a string / not an array.
  const std::string* AsString() const;
  const std::vector<GgufValue>* AsArray() const;

  // The value as text, for messages: 42, "llama", [3 strings].
  std::string DebugString() const;

 private:
  friend class GgufParser;
  GgufValueType type_ = GgufValueType::kU8;
  GgufValueType element_type_ = GgufValueType::kU8;
  uint64_t unsigned_ = 0;  // kU8 .. kU64, kBool
  int64_t signed_ = 0;     // kI8 .. kI64
  double float_ = 0;       // kF32, kF64
  std::string string_;
  std::vector<GgufValue> array_;
};

// One tensor of a GGUF file.
struct GgufTensorInfo {
  std::string name;
  GgmlType type = GgmlType::kF32;
  std::vector<int64_t> dims;  // ggml order: dims[0] contiguous
  uint64_t offset = 0;        // of the first byte, from the start of the file
  uint64_t nbytes = 0;        // rows x GgmlRowBytes(type, dims[0])

  // Row-major shape: dims reversed ({in, out} -> (out, in)).
  Shape shape() const;
  // dims[1] x dims[2] x ...: the number of stored rows of dims[0] elements.
  int64_t rows() const;
};

class GgufFile {
 public:
  // Maps and validates a GGUF file. Every problem is an error naming the file, and the key or
  // tensor to blame, never a crash:
  //   DATA_LOSS         not a GGUF file (magic); a count, length, dimension or offset that runs
  //                     past the end of the file, overflows, overlaps another tensor's data or
  //                     breaks the alignment; a value type or element type that does not exist;
  //                     a key or tensor name given twice.
  //   INVALID_ARGUMENT  a version other than 2 or 3; a tensor type Tessera cannot read (naming
  //                     the type and the tensor); a first dimension that is not a whole number
  //                     of the type's blocks.
  //   and the errors of MappedFile::Open.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path);

  const std::string& path() const { return file_->path(); }
  uint64_t file_size() const { return file_->size(); }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }

  const std::map<std::string, GgufValue, std::less<>>& metadata() const { return metadata_; }
  // nullptr when absent.
  const GgufValue* Find(absl::string_view key) const;
  // Typed reads of a metadata key. NOT_FOUND naming the key and the file when absent;
  // INVALID_ARGUMENT naming both and the value's type when it does not fit.
  absl::StatusOr<uint64_t> GetUnsigned(absl::string_view key) const;
  absl::StatusOr<double> GetFloat(absl::string_view key) const;
  absl::StatusOr<std::string> GetString(absl::string_view key) const;
  absl::StatusOr<bool> GetBool(absl::string_view key) const;
  // An array whose elements are all of `element` (INVALID_ARGUMENT otherwise).
  absl::StatusOr<const std::vector<GgufValue>*> GetArray(absl::string_view key,
                                                         GgufValueType element) const;

  // In the order of the file's tensor table.
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* FindTensor(absl::string_view name) const;
  // A tensor's stored bytes, inside the mapping (valid while this object lives).
  absl::Span<const uint8_t> Bytes(const GgufTensorInfo& info) const;
  void ReleasePages(const GgufTensorInfo& info) const;

 private:
  explicit GgufFile(std::unique_ptr<MappedFile> file) : file_(std::move(file)) {}
  absl::Status Parse();
  // NOT_FOUND naming the key and the file when absent.
  absl::StatusOr<const GgufValue*> Required(absl::string_view key) const;

  std::unique_ptr<MappedFile> file_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  std::map<std::string, GgufValue, std::less<>> metadata_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

}  // namespace tessera::model

#endif  // TESSERA_RUNTIME_MODEL_GGUF_FILE_H_
