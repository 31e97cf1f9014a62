#include "runtime/model/safetensors.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "runtime/core/half.h"
#include "runtime/core/status_macros.h"
#include "runtime/model/gguf_checkpoint.h"
#include "runtime/model/gptq_checkpoint.h"
#include "runtime/model/json_file.h"

namespace tessera::model {
namespace {

using Json = nlohmann::json;

// The reference implementation refuses headers above 100 MB; a real one is a few hundred KB.
constexpr uint64_t kMaxHeaderBytes = uint64_t{100} << 20;

constexpr std::pair<absl::string_view, DType> kSafetensorsDTypes[] = {
    {"F32", DType::kF32}, {"BF16", DType::kBF16}, {"F16", DType::kF16},
    {"I8", DType::kI8},   {"I32", DType::kI32},   {"I64", DType::kI64},
};

std::string SupportedSafetensorsDTypes() {
  std::vector<absl::string_view> names;
  for (const auto& [name, dtype] : kSafetensorsDTypes) names.push_back(name);
  return absl::StrJoin(names, ", ");
}

uint64_t ReadLittleEndian64(const uint8_t* bytes) {
  uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = (value << 8) | bytes[i];
  return value;
}

// A non-negative JSON integer, or nullopt.
std::optional<uint64_t> AsUnsigned(const Json& value) {
  if (!value.is_number_unsigned()) return std::nullopt;
  return value.get<uint64_t>();
}

bool Convertible(DType from, DType to) {
  return from == to || (IsFloatingPoint(from) && IsFloatingPoint(to));
}

float LoadAsFloat(const uint8_t* src, DType dtype) {
  switch (dtype) {
    case DType::kF32: {
      float value;
      std::memcpy(&value, src, sizeof(value));
      return value;
    }
    case DType::kBF16: {
      uint16_t bits;
      std::memcpy(&bits, src, sizeof(bits));
      return BFloat16::FromBits(bits).ToFloat();
    }
    case DType::kF16: {
      uint16_t bits;
      std::memcpy(&bits, src, sizeof(bits));
      return Half::FromBits(bits).ToFloat();
    }
    default:
      return 0;  // unreachable: Convertible() admits floating types only
  }
}

void StoreFloat(float value, uint8_t* dst, DType dtype) {
  switch (dtype) {
    case DType::kF32:
      std::memcpy(dst, &value, sizeof(value));
      return;
    case DType::kBF16: {
      uint16_t bits = BFloat16::FromFloat(value).bits;
      std::memcpy(dst, &bits, sizeof(bits));
      return;
    }
    case DType::kF16: {
      uint16_t bits = Half::FromFloat(value).bits;
      std::memcpy(dst, &bits, sizeof(bits));
      return;
    }
    default:
      return;
  }
}

// Copies `count` consecutive elements, converting from `from` to `to` (see Convertible).
// Source bytes need not be aligned: safetensors only promises byte offsets.
void CopyElements(const uint8_t* src, DType from, uint8_t* dst, DType to, int64_t count) {
  if (from == to) {
    std::memcpy(dst, src, StorageBytes(from, count));
    return;
  }
  const size_t src_size = BitsOf(from) / 8;
  const size_t dst_size = BitsOf(to) / 8;
  for (int64_t i = 0; i < count; ++i) {
    StoreFloat(LoadAsFloat(src + i * src_size, from), dst + i * dst_size, to);
  }
}

// Elements in dimensions [first, rank) of `shape`.
int64_t TrailingElements(const Shape& shape, int first) {
  int64_t n = 1;
  for (int i = first; i < static_cast<int>(shape.size()); ++i) n *= shape[i];
  return n;
}

}  // namespace

absl::StatusOr<Shape> TensorSlice::SlicedShape(const Shape& full) const {
  if (kind == Kind::kWhole) {
    if (!ranges.empty() || padded_size != 0) {
      return absl::InvalidArgumentError("a whole-tensor slice takes no ranges or padding");
    }
    return full;
  }
  const int dim = kind == Kind::kRows ? 0 : 1;
  if (static_cast<int>(full.size()) <= dim) {
    return absl::InvalidArgumentError(absl::StrCat("cannot take ", ToString(), " of a tensor of ",
                                                   "shape ", ShapeToString(full)));
  }
  if (ranges.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(ToString(), ": no ranges"));
  }
  int64_t total = 0;
  for (const IndexRange& range : ranges) {
    if (range.begin < 0 || range.end < range.begin || range.end > full[dim]) {
      return absl::InvalidArgumentError(absl::StrCat(ToString(), " does not fit dimension ", dim,
                                                     " of shape ", ShapeToString(full)));
    }
    total += range.size();
  }
  if (padded_size != 0 && padded_size < total) {
    return absl::InvalidArgumentError(
        absl::StrCat(ToString(), ": padded size is below the ", total, " elements sliced"));
  }
  Shape shape = full;
  shape[dim] = std::max(total, padded_size);
  return shape;
}

std::string TensorSlice::ToString() const {
  if (kind == Kind::kWhole) return "whole";
  std::string text = kind == Kind::kRows ? "rows " : "columns ";
  absl::StrAppend(&text, absl::StrJoin(ranges, "+", [](std::string* out, const IndexRange& r) {
    absl::StrAppend(out, "[", r.begin, ",", r.end, ")");
  }));
  if (padded_size != 0) absl::StrAppend(&text, " padded to ", padded_size);
  return text;
}

absl::StatusOr<absl::string_view> SafetensorsDTypeName(DType dtype) {
  for (const auto& [name, candidate] : kSafetensorsDTypes) {
    if (candidate == dtype) return name;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("safetensors has no dtype for Tessera's ", NameOf(dtype)));
}

absl::StatusOr<Tensor> ReadTensorSlice(const TensorInfo& info, const uint8_t* data,
                                       const TensorSlice& slice, std::optional<DType> dtype) {
  const DType to = dtype.value_or(info.dtype);
  if (!Convertible(info.dtype, to)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", info.name, "' is ", NameOf(info.dtype), " and cannot be read as ", NameOf(to)));
  }
  absl::StatusOr<Shape> shape = slice.SlicedShape(info.shape);
  if (!shape.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", info.name, "': ", shape.status().message()));
  }
  int64_t sliced = 0;
  for (const IndexRange& range : slice.ranges) sliced += range.size();
  const bool padded = slice.padded_size > sliced;
  TESSERA_ASSIGN_OR_RETURN(Tensor out,
                           padded ? Tensor::Zeros(to, *shape) : Tensor::Empty(to, *shape));

  const DType from = info.dtype;
  auto src_at = [&](int64_t element) { return data + StorageBytes(from, element); };
  auto* dst = static_cast<uint8_t*>(out.data());
  switch (slice.kind) {
    case TensorSlice::Kind::kWhole:
      CopyElements(data, from, dst, to, out.numel());
      break;
    case TensorSlice::Kind::kRows: {
      const int64_t row = TrailingElements(info.shape, 1);
      int64_t written = 0;
      for (const IndexRange& range : slice.ranges) {
        CopyElements(src_at(range.begin * row), from, dst + StorageBytes(to, written), to,
                     range.size() * row);
        written += range.size() * row;
      }
      break;
    }
    case TensorSlice::Kind::kColumns: {
      const int64_t inner = TrailingElements(info.shape, 2);
      const int64_t src_row = info.shape[1] * inner;
      const int64_t dst_row = (*shape)[1] * inner;
      for (int64_t r = 0; r < info.shape[0]; ++r) {
        int64_t written = r * dst_row;
        for (const IndexRange& range : slice.ranges) {
          CopyElements(src_at(r * src_row + range.begin * inner), from,
                       dst + StorageBytes(to, written), to, range.size() * inner);
          written += range.size() * inner;
        }
      }
      break;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// SafetensorsFile

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> mapped, MappedFile::Open(path));
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile(std::move(mapped)));
  TESSERA_RETURN_IF_ERROR(file->ParseHeader());
  return file;
}

absl::Status SafetensorsFile::ParseHeader() {
  const std::string& path = file_->path();
  const uint8_t* base = file_->bytes().data();
  const uint64_t size = file_->size();
  auto corrupt = [&](auto&&... parts) {
    return absl::DataLossError(absl::StrCat(path, ": ", parts...));
  };
  if (size < 8) {
    return corrupt("file is ", size, " bytes, too short for the 8-byte header length");
  }
  const uint64_t header_bytes = ReadLittleEndian64(base);
  if (header_bytes > size - 8) {
    return corrupt("header length ", header_bytes, " runs past the end of the file (", size,
                   " bytes): truncated or not a safetensors file");
  }
  if (header_bytes > kMaxHeaderBytes) {
    return corrupt("header length ", header_bytes, " is over the ", kMaxHeaderBytes, "-byte limit");
  }
  const char* header = reinterpret_cast<const char*>(base + 8);
  Json root;
  try {
    root = Json::parse(header, header + header_bytes);
  } catch (const Json::exception& e) {
    return corrupt("header is not valid JSON: ", e.what());
  }
  if (!root.is_object()) return corrupt("header is a JSON ", root.type_name(), ", not an object");

  const uint64_t data_start = 8 + header_bytes;
  const uint64_t data_bytes = size - data_start;
  // (begin, end) relative to the data, per tensor, to check for overlaps.
  std::vector<std::pair<uint64_t, uint64_t>> extents;
  for (const auto& item : root.items()) {
    // Named, not structured, bindings: the lambdas below capture them.
    const std::string& name = item.key();
    const Json& entry = item.value();
    if (name == "__metadata__") {
      if (!entry.is_object()) return corrupt("__metadata__ is not an object");
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) return corrupt("__metadata__ '", key, "' is not a string");
        metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    auto bad = [&](auto&&... parts) { return corrupt("tensor '", name, "': ", parts...); };
    if (!entry.is_object()) return bad("entry is not an object");
    auto dtype_it = entry.find("dtype");
    auto shape_it = entry.find("shape");
    auto offsets_it = entry.find("data_offsets");
    if (dtype_it == entry.end() || !dtype_it->is_string()) return bad("no dtype string");
    if (shape_it == entry.end() || !shape_it->is_array()) return bad("no shape list");
    if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2) {
      return bad("no data_offsets pair");
    }

    TensorInfo info;
    info.name = name;
    const std::string dtype_name = dtype_it->get<std::string>();
    bool known = false;
    for (const auto& [candidate, dtype] : kSafetensorsDTypes) {
      if (candidate == dtype_name) {
        info.dtype = dtype;
        known = true;
      }
    }
    if (!known) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": tensor '", name, "' has dtype '",
                                                     dtype_name, "', which Tessera does not read (",
                                                     SupportedSafetensorsDTypes(), ")"));
    }
    // Dimensions are bounded so that their product, in bytes, cannot overflow unnoticed.
    uint64_t numel = 1;
    for (const Json& dim : *shape_it) {
      std::optional<uint64_t> d = AsUnsigned(dim);
      if (!d.has_value()) return bad("shape ", shape_it->dump(), " has a non-integer dimension");
      if (*d > (uint64_t{1} << 48) || (*d != 0 && numel > (uint64_t{1} << 56) / *d)) {
        return bad("shape ", shape_it->dump(), " is impossibly large");
      }
      numel *= *d;
      info.shape.push_back(static_cast<int64_t>(*d));
    }
    std::optional<uint64_t> begin = AsUnsigned((*offsets_it)[0]);
    std::optional<uint64_t> end = AsUnsigned((*offsets_it)[1]);
    if (!begin.has_value() || !end.has_value()) {
      return bad("data_offsets ", offsets_it->dump(), " are not non-negative integers");
    }
    if (*begin > *end || *end > data_bytes) {
      return bad("data_offsets [", *begin, ", ", *end, ") fall outside the ", data_bytes,
                 " bytes of data (truncated file?)");
    }
    info.nbytes = StorageBytes(info.dtype, static_cast<int64_t>(numel));
    if (*end - *begin != info.nbytes) {
      return bad("data_offsets [", *begin, ", ", *end, ") hold ", *end - *begin, " bytes, but ",
                 dtype_name, " ", ShapeToString(info.shape), " needs ", info.nbytes);
    }
    info.offset = data_start + *begin;
    tensors_.push_back(std::move(info));
    extents.emplace_back(*begin, *end);
  }

  // Sort by offset (ties by end, so empty tensors come first), then any non-empty tensor
  // that starts before the previous one ends overlaps it.
  std::vector<size_t> order(tensors_.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return extents[a] != extents[b] ? extents[a] < extents[b] : tensors_[a].name < tensors_[b].name;
  });
  std::optional<size_t> previous;
  for (size_t i : order) {
    if (extents[i].first == extents[i].second) continue;
    if (previous.has_value() && extents[i].first < extents[*previous].second) {
      return corrupt("tensors '", tensors_[*previous].name, "' and '", tensors_[i].name,
                     "' overlap");
    }
    previous = i;
  }
  std::vector<TensorInfo> sorted;
  sorted.reserve(tensors_.size());
  for (size_t i : order) sorted.push_back(std::move(tensors_[i]));
  tensors_ = std::move(sorted);
  for (size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
  return absl::OkStatus();
}

const TensorInfo* SafetensorsFile::Find(absl::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

absl::Span<const uint8_t> SafetensorsFile::Bytes(const TensorInfo& info) const {
  return file_->bytes().subspan(info.offset, info.nbytes);
}

absl::StatusOr<Tensor> SafetensorsFile::Read(absl::string_view name, const TensorSlice& slice,
                                             std::optional<DType> dtype) const {
  const TensorInfo* info = Find(name);
  if (info == nullptr) {
    return absl::NotFoundError(absl::StrCat(path(), " holds no tensor '", name, "'"));
  }
  absl::StatusOr<Tensor> tensor = ReadTensorSlice(*info, Bytes(*info).data(), slice, dtype);
  if (!tensor.ok()) {
    return absl::Status(tensor.status().code(),
                        absl::StrCat(path(), ": ", tensor.status().message()));
  }
  return tensor;
}

void SafetensorsFile::ReleasePages(const TensorInfo& info) const {
  file_->ReleasePages(info.offset, info.nbytes);
}

// ---------------------------------------------------------------------------------------------
// Checkpoint

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code error;
  if (!fs::is_directory(dir, error)) {
    return absl::NotFoundError(absl::StrCat(dir, ": no such checkpoint directory"));
  }
  std::unique_ptr<Checkpoint> checkpoint(new Checkpoint());
  checkpoint->dir_ = dir;
  const std::string index_path = (fs::path(dir) / "model.safetensors.index.json").string();
  const std::string single_path = (fs::path(dir) / "model.safetensors").string();

  const std::string gguf_path = (fs::path(dir) / "model.gguf").string();

  if (!fs::exists(index_path, error)) {
    if (!fs::exists(single_path, error) && fs::exists(gguf_path, error)) {
      TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<GgufCheckpointFile> file,
                               GgufCheckpointFile::Open(gguf_path));
      TESSERA_RETURN_IF_ERROR(checkpoint->AddFile(std::move(file)));
      return checkpoint;
    }
    if (!fs::exists(single_path, error)) {
      return absl::NotFoundError(absl::StrCat(
          dir, " holds none of model.safetensors, model.safetensors.index.json and model.gguf"));
    }
    TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                             SafetensorsFile::Open(single_path));
    TESSERA_ASSIGN_OR_RETURN(std::optional<GptqConfig> gptq, LoadGptqConfig(dir));
    if (gptq.has_value()) {
      // A GPTQ checkpoint's quantized projections read as their dequantized weights.
      std::vector<std::unique_ptr<SafetensorsFile>> files;
      files.push_back(std::move(file));
      TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<GptqCheckpoint> source,
                               GptqCheckpoint::Open(std::move(files), *gptq, single_path));
      TESSERA_RETURN_IF_ERROR(checkpoint->AddFile(std::move(source)));
      return checkpoint;
    }
    TESSERA_RETURN_IF_ERROR(checkpoint->AddFile(std::move(file)));
    return checkpoint;
  }

  TESSERA_ASSIGN_OR_RETURN(std::string text, ReadTextFile(index_path));
  TESSERA_ASSIGN_OR_RETURN(Json index, ParseJson(text, index_path));
  auto map_it = index.is_object() ? index.find("weight_map") : index.end();
  if (map_it == index.end() || !map_it->is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": no \"weight_map\" object"));
  }
  std::vector<std::string> shard_names;  // in order of first mention
  std::set<std::string> seen;
  for (const auto& [tensor, shard] : map_it->items()) {
    if (!shard.is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": weight_map entry '", tensor, "' is not a file name"));
    }
    const std::string name = shard.get<std::string>();
    // Shards live beside the index; anything else would read files outside the checkpoint.
    if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": weight_map maps '", tensor,
                                                     "' to '", name,
                                                     "', which is not a file name in ", dir));
    }
    if (seen.insert(name).second) shard_names.push_back(name);
  }
  for (const std::string& name : shard_names) {
    const std::string path = (fs::path(dir) / name).string();
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
    if (absl::IsNotFound(file.status())) {
      return absl::NotFoundError(
          absl::StrCat(index_path, " names shard ", name, ", which does not exist in ", dir));
    }
    if (!file.ok()) return file.status();
    TESSERA_RETURN_IF_ERROR(checkpoint->AddFile(*std::move(file)));
  }
  for (const auto& [tensor, shard] : map_it->items()) {
    const TensorSource* holder = checkpoint->FileOf(tensor);
    if (holder == nullptr || fs::path(holder->path()).filename() != shard.get<std::string>()) {
      return absl::InvalidArgumentError(absl::StrCat(index_path, " maps tensor '", tensor, "' to ",
                                                     shard.get<std::string>(),
                                                     ", which does not hold it"));
    }
  }
  TESSERA_ASSIGN_OR_RETURN(std::optional<GptqConfig> gptq, LoadGptqConfig(dir));
  if (gptq.has_value()) {
    // One source over every shard: a projection's qweight, qzeros, scales and g_idx may lie
    // in different shards. The index was checked against the stored names above.
    std::vector<std::unique_ptr<SafetensorsFile>> shards;
    for (std::unique_ptr<TensorSource>& file : checkpoint->files_) {
      shards.emplace_back(static_cast<SafetensorsFile*>(file.release()));  // all safetensors
    }
    checkpoint->files_.clear();
    checkpoint->index_.clear();
    TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<GptqCheckpoint> source,
                             GptqCheckpoint::Open(std::move(shards), *gptq, index_path));
    TESSERA_RETURN_IF_ERROR(checkpoint->AddFile(std::move(source)));
  }
  return checkpoint;
}

absl::Status Checkpoint::AddFile(std::unique_ptr<TensorSource> file) {
  for (const TensorInfo& info : file->tensors()) {
    auto [it, inserted] = index_.emplace(info.name, file.get());
    if (!inserted) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", info.name,
                                                     "' is stored twice, in ", it->second->path(),
                                                     " and ", file->path()));
    }
  }
  files_.push_back(std::move(file));
  return absl::OkStatus();
}

std::vector<std::string> Checkpoint::TensorNames() const {
  std::vector<std::string> names;
  names.reserve(index_.size());
  for (const auto& [name, file] : index_) names.push_back(name);
  return names;
}

const TensorSource* Checkpoint::FileOf(absl::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

absl::StatusOr<TensorInfo> Checkpoint::Info(absl::string_view name) const {
  const TensorSource* file = FileOf(name);
  if (file == nullptr) {
    return absl::NotFoundError(absl::StrCat("checkpoint ", dir_, " has no tensor '", name, "'"));
  }
  return *file->Find(name);
}

absl::StatusOr<Tensor> Checkpoint::Read(absl::string_view name, const TensorSlice& slice,
                                        std::optional<DType> dtype) const {
  const TensorSource* file = FileOf(name);
  if (file == nullptr) {
    return absl::NotFoundError(absl::StrCat("checkpoint ", dir_, " has no tensor '", name, "'"));
  }
  return file->Read(name, slice, dtype);
}

void Checkpoint::ReleasePages(absl::string_view name) const {
  if (const TensorSource* file = FileOf(name)) file->ReleasePages(*file->Find(name));
}

std::optional<StoredGroupFormat> Checkpoint::StoredFormat(absl::string_view name) const {
  const TensorSource* file = FileOf(name);
  return file == nullptr ? std::nullopt : file->StoredFormat(name);
}

absl::StatusOr<std::optional<StoredGroups>> Checkpoint::ReadStoredGroups(
    absl::string_view name, const TensorSlice& slice) const {
  const TensorSource* file = FileOf(name);
  if (file == nullptr) {
    return absl::NotFoundError(absl::StrCat("checkpoint ", dir_, " has no tensor '", name, "'"));
  }
  return file->ReadStoredGroups(name, slice);
}

// ---------------------------------------------------------------------------------------------
// Writing

absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<std::pair<std::string, Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  std::vector<const std::pair<std::string, Tensor>*> order;
  for (const auto& entry : tensors) order.push_back(&entry);
  std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->first < b->first; });

  Json header = Json::object();
  uint64_t offset = 0;
  for (size_t i = 0; i < order.size(); ++i) {
    const auto& [name, tensor] = *order[i];
    if (name == "__metadata__" || (i > 0 && order[i - 1]->first == name)) {
      return absl::InvalidArgumentError(absl::StrCat("cannot write tensor name '", name, "' to ",
                                                     path, ": reserved or repeated"));
    }
    if (!tensor.device().is_cpu()) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot write ", name, " (", tensor.DebugString(), "): not on the host"));
    }
    TESSERA_ASSIGN_OR_RETURN(absl::string_view dtype, SafetensorsDTypeName(tensor.dtype()));
    header[name] = {{"dtype", dtype},
                    {"shape", std::vector<int64_t>(tensor.shape().begin(), tensor.shape().end())},
                    {"data_offsets", {offset, offset + tensor.nbytes()}}};
    offset += tensor.nbytes();
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;

  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  uint8_t length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<uint8_t>(uint64_t{text.size()} >> (8 * i));

  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::ErrnoToStatus(errno, absl::StrCat("cannot create ", path));
  out.write(reinterpret_cast<const char*>(length), sizeof(length));
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  for (const auto* entry : order) {
    out.write(static_cast<const char*>(entry->second.data()),
              static_cast<std::streamsize>(entry->second.nbytes()));
  }
  out.close();
  if (!out) return absl::DataLossError(absl::StrCat("error writing ", path));
  return absl::OkStatus();
}

}  // namespace tessera::model
