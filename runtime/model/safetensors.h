#ifndef TESSERA_RUNTIME_MODEL_SAFETENSORS_H_
#define TESSERA_RUNTIME_MODEL_SAFETENSORS_H_

// Checkpoints: safetensors files (and GGUF files, gguf_checkpoint.h) read through a
// read-only private mapping (mapped_file.h), so that a rank only ever touches the pages of
// the slices it reads.
//
// File format: an 8-byte little-endian header length N, N bytes of JSON
//   {"name": {"dtype": "BF16", "shape": [4096, 4096], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"key": "value", ...}}
// then the data; offsets are relative to the first byte after the header and every tensor is
// dense, row-major and little-endian.
//
// A checkpoint directory (Hugging Face layout) holds either model.safetensors, or
// model.safetensors.index.json whose "weight_map" names the shard file of every tensor, or
// model.gguf (a GGUF file's model as Tessera prepares it: gguf_model.h).

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "runtime/core/tensor.h"
#include "runtime/model/mapped_file.h"
#include "runtime/model/stored_groups.h"

namespace tessera::model {

// One tensor of a checkpoint file, as its header describes it (validated when opened).
struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;  // as stored; for a GGUF tensor, the type it reads as by default
  Shape shape;
  uint64_t offset = 0;  // of the first byte, from the start of the file
  uint64_t nbytes = 0;  // stored bytes: StorageBytes(dtype, NumElements(shape)) in safetensors
};

// [begin, end) along one dimension.
struct IndexRange {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t size() const { return end - begin; }
  friend bool operator==(const IndexRange&, const IndexRange&) = default;
};

// Which part of a stored tensor to read.
//   kWhole    the whole tensor.
//   kRows     along dimension 0: the `ranges` one after another. One range is the
//             column-parallel split of an [out, in] weight (or of a bias); several pick one
//             rank's part of each block of a fused weight (gate_up, qkv).
//   kColumns  along dimension 1 (every row keeps the columns of `ranges`, in order): the
//             row-parallel split of an [out, in] weight.
// `padded_size`, when larger than the total length of `ranges`, extends the sliced dimension
// with zeros up to that size (vocab shards of a vocabulary that tp does not divide).
struct TensorSlice {
  enum class Kind { kWhole, kRows, kColumns };
  Kind kind = Kind::kWhole;
  std::vector<IndexRange> ranges;
  int64_t padded_size = 0;

  static TensorSlice Whole() { return TensorSlice{}; }
  static TensorSlice Rows(int64_t begin, int64_t end) {
    return TensorSlice{Kind::kRows, {{begin, end}}, 0};
  }
  static TensorSlice Columns(int64_t begin, int64_t end) {
    return TensorSlice{Kind::kColumns, {{begin, end}}, 0};
  }

  // The shape of the slice of a tensor shaped `full`; INVALID_ARGUMENT when the slice does
  // not fit it (a range outside the dimension, kColumns of a tensor of rank < 2, ...).
  absl::StatusOr<Shape> SlicedShape(const Shape& full) const;
  std::string ToString() const;  // "whole", "rows [0,128)+[512,640)", "columns [0,64)"

  friend bool operator==(const TensorSlice&, const TensorSlice&) = default;
};

// "F32", "BF16", "F16", "I8", "I32", "I64" for the dtypes safetensors shares with Tensor.
absl::StatusOr<absl::string_view> SafetensorsDTypeName(DType dtype);

// Copies a slice of a tensor stored at `data` (dtype and shape from `info`) into a new host
// tensor of `dtype` (the stored dtype when nullopt). Conversions: between f32, bf16 and f16
// (rounding to nearest even); integer dtypes only to themselves. Reads only the bytes of the
// slice. INVALID_ARGUMENT for a slice that does not fit or a conversion not offered.
absl::StatusOr<Tensor> ReadTensorSlice(const TensorInfo& info, const uint8_t* data,
                                       const TensorSlice& slice, std::optional<DType> dtype);

// A file of named tensors that a checkpoint reads slices of. Thread compatible: concurrent
// reads are safe.
class TensorSource {
 public:
  virtual ~TensorSource() = default;
  virtual const std::string& path() const = 0;
  virtual const std::vector<TensorInfo>& tensors() const = 0;
  // nullptr when there is no such tensor.
  virtual const TensorInfo* Find(absl::string_view name) const = 0;
  // A slice of tensor `name` as a new host tensor of `dtype` (the info's dtype when nullopt).
  // NOT_FOUND naming the tensor and file when absent; INVALID_ARGUMENT for a slice that does
  // not fit or a conversion not offered.
  virtual absl::StatusOr<Tensor> Read(absl::string_view name,
                                      const TensorSlice& slice = TensorSlice(),
                                      std::optional<DType> dtype = std::nullopt) const = 0;
  // Drops this process's mapping of a tensor's pages (see MappedFile::ReleasePages).
  virtual void ReleasePages(const TensorInfo& info) const = 0;
  // A slice (kWhole, kRows or kColumns) of a 2-D weight that the file stores quantized in
  // groups Tessera's kernels take as they are, without dequantizing; nullopt when `name` is
  // not stored so (then Read it). INVALID_ARGUMENT for a slice that cuts a group.
  virtual absl::StatusOr<std::optional<StoredGroups>> ReadStoredGroups(
      absl::string_view /*name*/, const TensorSlice& /*slice*/) const {
    return std::nullopt;
  }
  // The format ReadStoredGroups gives `name` in, from the file's header alone; nullopt when
  // it gives nullopt.
  virtual std::optional<StoredGroupFormat> StoredFormat(absl::string_view /*name*/) const {
    return std::nullopt;
  }
};

// One safetensors file, mapped read-only.
class SafetensorsFile : public TensorSource {
 public:
  // Maps the file and validates its header. Every structural problem is an error naming the
  // file (and the tensor, where one is to blame), never a crash:
  //   DATA_LOSS         file shorter than 8 bytes; header length past the end of the file;
  //                     header not JSON or not an object of the expected form; data_offsets
  //                     out of range, reversed, overlapping another tensor's, or not
  //                     matching dtype x shape.
  //   INVALID_ARGUMENT  a dtype Tessera does not hold (F64, U8, F8_E4M3, ..., or unknown).
  //   NOT_FOUND         no such file; other I/O errors by errno.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);

  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile() override = default;

  const std::string& path() const override { return file_->path(); }
  uint64_t file_size() const { return file_->size(); }
  // In the order of their data in the file.
  const std::vector<TensorInfo>& tensors() const override { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const TensorInfo* Find(absl::string_view name) const override;

  // See ReadTensorSlice.
  absl::StatusOr<Tensor> Read(absl::string_view name, const TensorSlice& slice = TensorSlice(),
                              std::optional<DType> dtype = std::nullopt) const override;
  // The stored bytes of a tensor, inside the mapping (valid while this object lives).
  absl::Span<const uint8_t> Bytes(const TensorInfo& info) const;
  void ReleasePages(const TensorInfo& info) const override;

 private:
  explicit SafetensorsFile(std::unique_ptr<MappedFile> file) : file_(std::move(file)) {}
  absl::Status ParseHeader();

  std::unique_ptr<MappedFile> file_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> index_;  // name -> position in tensors_
  std::map<std::string, std::string> metadata_;
};

// A model directory's safetensors files seen as one set of tensors.
class Checkpoint {
 public:
  // Opens `dir`/model.safetensors.index.json and every shard it names, or else
  // `dir`/model.safetensors, or else `dir`/model.gguf. When `dir`/config.json has a GPTQ
  // "quantization_config", the safetensors files are read through one GptqCheckpoint
  // (gptq_checkpoint.h: X.weight for every X.qweight quartet). Errors name the file:
  //   NOT_FOUND         none of those files; a shard the index names is missing.
  //   INVALID_ARGUMENT  an index that is not JSON, has no "weight_map", names a file outside
  //                     the directory, or names a tensor its shard lacks; a tensor stored in
  //                     two files.
  //   and every error of SafetensorsFile::Open, GgufCheckpointFile::Open, ParseGptqConfig
  //   and GptqCheckpoint::Open.
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& dir);

  const std::string& directory() const { return dir_; }
  const std::vector<std::unique_ptr<TensorSource>>& files() const { return files_; }
  // Sorted.
  std::vector<std::string> TensorNames() const;
  bool Contains(absl::string_view name) const { return index_.find(name) != index_.end(); }
  // NOT_FOUND naming the tensor and the directory.
  absl::StatusOr<TensorInfo> Info(absl::string_view name) const;
  // The file that holds `name`, or nullptr.
  const TensorSource* FileOf(absl::string_view name) const;

  absl::StatusOr<Tensor> Read(absl::string_view name, const TensorSlice& slice = TensorSlice(),
                              std::optional<DType> dtype = std::nullopt) const;
  void ReleasePages(absl::string_view name) const;
  // See TensorSource::ReadStoredGroups; NOT_FOUND as Read.
  absl::StatusOr<std::optional<StoredGroups>> ReadStoredGroups(absl::string_view name,
                                                               const TensorSlice& slice) const;
  // See TensorSource::StoredFormat; nullopt for a tensor the checkpoint lacks.
  std::optional<StoredGroupFormat> StoredFormat(absl::string_view name) const;

 private:
  Checkpoint() = default;
  absl::Status AddFile(std::unique_ptr<TensorSource> file);

  std::string dir_;
  std::vector<std::unique_ptr<TensorSource>> files_;
  std::map<std::string, const TensorSource*, std::less<>> index_;
};

// Writes host tensors (dtypes f32, bf16, f16, i8, i32, i64) to a safetensors file, in name
// order, with the header padded to a multiple of 8 bytes as the reference writer does.
absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<std::pair<std::string, Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

}  // namespace tessera::model

#endif  // TESSERA_RUNTIME_MODEL_SAFETENSORS_H_
