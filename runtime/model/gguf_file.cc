#include "runtime/model/gguf_file.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "runtime/core/status_macros.h"

namespace tessera::model {
namespace {

constexpr uint32_t kMaxDims = 4;  // GGML_MAX_DIMS
// Arrays inside arrays are allowed by the format but used by no model; two levels bound the
// recursion a damaged file could ask for.
constexpr int kMaxArrayDepth = 2;
// Dimensions and element counts stay below this, so that no byte count overflows.
constexpr uint64_t kMaxElements = uint64_t{1} << 56;

bool IsKnownValueType(uint32_t type) { return type <= static_cast<uint32_t>(GgufValueType::kF64); }

// The bytes a fixed-size value type takes; 0 for strings and arrays.
uint64_t FixedSize(GgufValueType type) {
  switch (type) {
    case GgufValueType::kU8:
    case GgufValueType::kI8:
    case GgufValueType::kBool:
      return 1;
    case GgufValueType::kU16:
    case GgufValueType::kI16:
      return 2;
    case GgufValueType::kU32:
    case GgufValueType::kI32:
    case GgufValueType::kF32:
      return 4;
    case GgufValueType::kU64:
    case GgufValueType::kI64:
    case GgufValueType::kF64:
      return 8;
    case GgufValueType::kString:
    case GgufValueType::kArray:
      return 0;
  }
  return 0;
}

}  // namespace

absl::string_view GgufValueTypeName(GgufValueType type) {
  switch (type) {
    case GgufValueType::kU8:
      return "u8";
    case GgufValueType::kI8:
      return "i8";
    case GgufValueType::kU16:
      return "u16";
    case GgufValueType::kI16:
      return "i16";
    case GgufValueType::kU32:
      return "u32";
    case GgufValueType::kI32:
      return "i32";
    case GgufValueType::kF32:
      return "f32";
    case GgufValueType::kBool:
      return "bool";
    case GgufValueType::kString:
      return "string";
    case GgufValueType::kArray:
      return "array";
    case GgufValueType::kU64:
      return "u64";
    case GgufValueType::kI64:
      return "i64";
    case GgufValueType::kF64:
      return "f64";
  }
  return "unknown";
}

// ---------------------------------------------------------------------------------------------
// GgufValue

std::optional<uint64_t> GgufValue::AsUnsigned() const {
  switch (type_) {
    case GgufValueType::kU8:
    case GgufValueType::kU16:
    case GgufValueType::kU32:
    case GgufValueType::kU64:
      return unsigned_;
    case GgufValueType::kI8:
    case GgufValueType::kI16:
    case GgufValueType::kI32:
    case GgufValueType::kI64:
      if (signed_ < 0) return std::nullopt;
      return static_cast<uint64_t>(signed_);
    default:
      return std::nullopt;
  }
}

std::optional<int64_t> GgufValue::AsSigned() const {
  switch (type_) {
    case GgufValueType::kU8:
    case GgufValueType::kU16:
    case GgufValueType::kU32:
    case GgufValueType::kU64:
      if (unsigned_ > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return std::nullopt;
      }
      return static_cast<int64_t>(unsigned_);
    case GgufValueType::kI8:
    case GgufValueType::kI16:
    case GgufValueType::kI32:
    case GgufValueType::kI64:
      return signed_;
    default:
      return std::nullopt;
  }
}

std::optional<double> GgufValue::AsFloat() const {
  if (type_ == GgufValueType::kF32 || type_ == GgufValueType::kF64) return float_;
  return std::nullopt;
}

std::optional<bool> GgufValue::AsBool() const {
  if (type_ != GgufValueType::kBool) return std::nullopt;
  return unsigned_ != 0;
}

const std::string* GgufValue::AsString() const {
  return type_ == GgufValueType::kString ? &string_ : nullptr;
}

const std::vector<GgufValue>* GgufValue::AsArray() const {
  return type_ == GgufValueType::kArray ? &array_ : nullptr;
}

std::string GgufValue::DebugString() const {
  switch (type_) {
    case GgufValueType::kString:
      return absl::StrCat("\"", string_.substr(0, 64), string_.size() > 64 ? "...\"" : "\"");
    case GgufValueType::kArray:
      return absl::StrCat("[", array_.size(), " ", GgufValueTypeName(element_type_), "]");
    case GgufValueType::kBool:
      return unsigned_ != 0 ? "true" : "false";
    case GgufValueType::kF32:
    case GgufValueType::kF64:
      return absl::StrCat(float_);
    case GgufValueType::kI8:
    case GgufValueType::kI16:
    case GgufValueType::kI32:
    case GgufValueType::kI64:
      return absl::StrCat(signed_);
    default:
      return absl::StrCat(unsigned_);
  }
}

// ---------------------------------------------------------------------------------------------
// GgufTensorInfo

Shape GgufTensorInfo::shape() const { return Shape(dims.rbegin(), dims.rend()); }

int64_t GgufTensorInfo::rows() const {
  int64_t rows = 1;
  for (size_t i = 1; i < dims.size(); ++i) rows *= dims[i];
  return rows;
}

// ---------------------------------------------------------------------------------------------
// Parsing

// Reads the header's fields in order, every read checked against the end of the file.
class GgufParser {
 public:
  GgufParser(absl::Span<const uint8_t> bytes, const std::string& path)
      : bytes_(bytes), path_(path) {}

  uint64_t position() const { return position_; }
  uint64_t remaining() const { return bytes_.size() - position_; }

  // DATA_LOSS naming the file, the position and what was being read.
  template <typename... Parts>
  absl::Status Corrupt(const Parts&... parts) const {
    return absl::DataLossError(absl::StrCat(path_, ": ", parts...));
  }

  template <typename T>
  absl::StatusOr<T> Read(absl::string_view what) {
    if (remaining() < sizeof(T)) {
      return Corrupt(what, " at byte ", position_, " runs past the end of the file (",
                     bytes_.size(), " bytes): truncated?");
    }
    T value;
    std::memcpy(&value, bytes_.data() + position_, sizeof(T));
    position_ += sizeof(T);
    return value;
  }

  absl::StatusOr<std::string> ReadString(absl::string_view what) {
    TESSERA_ASSIGN_OR_RETURN(uint64_t length, Read<uint64_t>(what));
    if (length > remaining()) {
      return Corrupt(what, ": a string of ", length, " bytes at byte ", position_,
                     " runs past the end of the file (", bytes_.size(), " bytes)");
    }
    std::string text(reinterpret_cast<const char*>(bytes_.data() + position_), length);
    position_ += length;
    return text;
  }

  absl::StatusOr<GgufValue> ReadValue(GgufValueType type, absl::string_view what, int depth) {
    GgufValue value;
    value.type_ = type;
    switch (type) {
      case GgufValueType::kU8: {
        TESSERA_ASSIGN_OR_RETURN(uint8_t v, Read<uint8_t>(what));
        value.unsigned_ = v;
        break;
      }
      case GgufValueType::kBool: {
        TESSERA_ASSIGN_OR_RETURN(uint8_t v, Read<uint8_t>(what));
        if (v > 1) return Corrupt(what, ": bool value ", int{v}, " is neither 0 nor 1");
        value.unsigned_ = v;
        break;
      }
      case GgufValueType::kI8: {
        TESSERA_ASSIGN_OR_RETURN(int8_t v, Read<int8_t>(what));
        value.signed_ = v;
        break;
      }
      case GgufValueType::kU16: {
        TESSERA_ASSIGN_OR_RETURN(uint16_t v, Read<uint16_t>(what));
        value.unsigned_ = v;
        break;
      }
      case GgufValueType::kI16: {
        TESSERA_ASSIGN_OR_RETURN(int16_t v, Read<int16_t>(what));
        value.signed_ = v;
        break;
      }
      case GgufValueType::kU32: {
        TESSERA_ASSIGN_OR_RETURN(uint32_t v, Read<uint32_t>(what));
        value.unsigned_ = v;
        break;
      }
      case GgufValueType::kI32: {
        TESSERA_ASSIGN_OR_RETURN(int32_t v, Read<int32_t>(what));
        value.signed_ = v;
        break;
      }
      case GgufValueType::kU64: {
        TESSERA_ASSIGN_OR_RETURN(value.unsigned_, Read<uint64_t>(what));
        break;
      }
      case GgufValueType::kI64: {
        TESSERA_ASSIGN_OR_RETURN(value.signed_, Read<int64_t>(what));
        break;
      }
      case GgufValueType::kF32: {
        TESSERA_ASSIGN_OR_RETURN(float v, Read<float>(what));
        value.float_ = v;
        break;
      }
      case GgufValueType::kF64: {
        TESSERA_ASSIGN_OR_RETURN(value.float_, Read<double>(what));
        break;
      }
      case GgufValueType::kString: {
        TESSERA_ASSIGN_OR_RETURN(value.string_, ReadString(what));
        break;
      }
      case GgufValueType::kArray: {
        TESSERA_ASSIGN_OR_RETURN(uint32_t element, Read<uint32_t>(what));
        if (!IsKnownValueType(element)) {
          return Corrupt(what, ": array element type ", element, " does not exist");
        }
        value.element_type_ = static_cast<GgufValueType>(element);
        if (value.element_type_ == GgufValueType::kArray && depth >= kMaxArrayDepth) {
          return Corrupt(what, ": arrays nested more than ", kMaxArrayDepth, " deep");
        }
        TESSERA_ASSIGN_OR_RETURN(uint64_t count, Read<uint64_t>(what));
        // Every element takes at least one byte (a string or array at least eight): a count
        // the rest of the file cannot hold is refused before anything is allocated.
        const uint64_t least = std::max<uint64_t>(FixedSize(value.element_type_), 1);
        if (count > remaining() / least) {
          return Corrupt(what, ": an array of ", count, " ", GgufValueTypeName(value.element_type_),
                         " at byte ", position_, " runs past the end of the file (", bytes_.size(),
                         " bytes)");
        }
        value.array_.reserve(count);
        for (uint64_t i = 0; i < count; ++i) {
          TESSERA_ASSIGN_OR_RETURN(GgufValue element_value,
                                   ReadValue(value.element_type_, what, depth + 1));
          value.array_.push_back(std::move(element_value));
        }
        break;
      }
    }
    return value;
  }

 private:
  absl::Span<const uint8_t> bytes_;
  const std::string& path_;
  uint64_t position_ = 0;
};

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path) {
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> mapped, MappedFile::Open(path));
  std::unique_ptr<GgufFile> file(new GgufFile(std::move(mapped)));
  TESSERA_RETURN_IF_ERROR(file->Parse());
  return file;
}

absl::Status GgufFile::Parse() {
  GgufParser parser(file_->bytes(), path());
  TESSERA_ASSIGN_OR_RETURN(uint32_t magic, parser.Read<uint32_t>("the magic number"));
  if (magic != 0x46554747) {  // "GGUF" read little-endian
    return parser.Corrupt("not a GGUF file (its first bytes are not \"GGUF\")");
  }
  TESSERA_ASSIGN_OR_RETURN(version_, parser.Read<uint32_t>("the version"));
  if (version_ != 2 && version_ != 3) {
    return absl::InvalidArgumentError(absl::StrCat(
        path(), ": GGUF version ", version_, ", which Tessera does not read (versions 2 and 3)"));
  }
  TESSERA_ASSIGN_OR_RETURN(uint64_t tensor_count, parser.Read<uint64_t>("the tensor count"));
  TESSERA_ASSIGN_OR_RETURN(uint64_t metadata_count, parser.Read<uint64_t>("the metadata count"));
  // A key-value pair takes at least 12 bytes (an empty key and a u32 type) plus one for the
  // value; a tensor entry at least 8 + 4 + 4 + 8.
  if (metadata_count > parser.remaining() / 13) {
    return parser.Corrupt("metadata count ", metadata_count, " is more than the file can hold");
  }
  if (tensor_count > parser.remaining() / 24) {
    return parser.Corrupt("tensor count ", tensor_count, " is more than the file can hold");
  }

  for (uint64_t i = 0; i < metadata_count; ++i) {
    const std::string what = absl::StrCat("metadata entry ", i);
    TESSERA_ASSIGN_OR_RETURN(std::string key, parser.ReadString(absl::StrCat(what, "'s key")));
    const std::string of_key = absl::StrCat("metadata '", key, "'");
    TESSERA_ASSIGN_OR_RETURN(uint32_t type, parser.Read<uint32_t>(of_key));
    if (!IsKnownValueType(type)) {
      return parser.Corrupt(of_key, ": value type ", type, " does not exist");
    }
    TESSERA_ASSIGN_OR_RETURN(GgufValue value,
                             parser.ReadValue(static_cast<GgufValueType>(type), of_key, 0));
    if (!metadata_.emplace(key, std::move(value)).second) {
      return parser.Corrupt(of_key, " is given twice");
    }
  }
  if (const GgufValue* alignment = Find("general.alignment")) {
    std::optional<uint64_t> value = alignment->AsUnsigned();
    if (!value.has_value() || *value == 0 || (*value & (*value - 1)) != 0 || *value > (1u << 20)) {
      return parser.Corrupt("general.alignment ", alignment->DebugString(),
                            " is not a power of two up to 1 MiB");
    }
    alignment_ = *value;
  }

  std::vector<uint64_t> relative_offsets;
  for (uint64_t i = 0; i < tensor_count; ++i) {
    GgufTensorInfo info;
    TESSERA_ASSIGN_OR_RETURN(info.name, parser.ReadString(absl::StrCat("the name of tensor ", i)));
    const std::string of_tensor = absl::StrCat("tensor '", info.name, "'");
    TESSERA_ASSIGN_OR_RETURN(uint32_t n_dims, parser.Read<uint32_t>(of_tensor));
    if (n_dims == 0 || n_dims > kMaxDims) {
      return parser.Corrupt(of_tensor, " has ", n_dims, " dimensions (1 to ", kMaxDims, ")");
    }
    uint64_t elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      TESSERA_ASSIGN_OR_RETURN(uint64_t dim, parser.Read<uint64_t>(of_tensor));
      if (dim == 0 || dim > kMaxElements || elements > kMaxElements / dim) {
        return parser.Corrupt(of_tensor, " has dimension ", d, " of ", dim,
                              ", which is zero or impossibly large");
      }
      elements *= dim;
      info.dims.push_back(static_cast<int64_t>(dim));
    }
    TESSERA_ASSIGN_OR_RETURN(uint32_t type, parser.Read<uint32_t>(of_tensor));
    info.type = static_cast<GgmlType>(type);
    absl::StatusOr<uint64_t> row_bytes = GgmlRowBytes(info.type, info.dims[0]);
    if (!row_bytes.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path(), ": ", of_tensor, ": ", row_bytes.status().message()));
    }
    const uint64_t rows = static_cast<uint64_t>(info.rows());
    if (*row_bytes != 0 && rows > kMaxElements / *row_bytes) {
      return parser.Corrupt(of_tensor, " is impossibly large");
    }
    info.nbytes = rows * *row_bytes;
    TESSERA_ASSIGN_OR_RETURN(uint64_t offset, parser.Read<uint64_t>(of_tensor));
    if (offset % alignment_ != 0) {
      return parser.Corrupt(of_tensor, ": data offset ", offset, " is not a multiple of the ",
                            alignment_, "-byte alignment");
    }
    relative_offsets.push_back(offset);
    if (!tensor_index_.emplace(info.name, tensors_.size()).second) {
      return parser.Corrupt(of_tensor, " is given twice");
    }
    tensors_.push_back(std::move(info));
  }

  const uint64_t data_start = (parser.position() + alignment_ - 1) / alignment_ * alignment_;
  const uint64_t data_bytes = file_size() > data_start ? file_size() - data_start : 0;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    GgufTensorInfo& info = tensors_[i];
    if (relative_offsets[i] > data_bytes || info.nbytes > data_bytes - relative_offsets[i]) {
      return parser.Corrupt("tensor '", info.name, "': its ", info.nbytes, " bytes at data offset ",
                            relative_offsets[i], " fall outside the file's ", data_bytes,
                            " bytes of data (truncated file?)");
    }
    info.offset = data_start + relative_offsets[i];
  }
  // Sorted by offset, a tensor that starts before the previous one ends overlaps it.
  std::vector<const GgufTensorInfo*> by_offset;
  for (const GgufTensorInfo& info : tensors_) by_offset.push_back(&info);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const GgufTensorInfo* a, const GgufTensorInfo* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    if (by_offset[i]->offset < by_offset[i - 1]->offset + by_offset[i - 1]->nbytes) {
      return parser.Corrupt("tensors '", by_offset[i - 1]->name, "' and '", by_offset[i]->name,
                            "' overlap");
    }
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// Access

const GgufValue* GgufFile::Find(absl::string_view key) const {
  auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

namespace {

absl::Status WrongType(const std::string& path, absl::string_view key, const GgufValue& value,
                       absl::string_view wanted) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": metadata '", key, "' is ",
                                                 GgufValueTypeName(value.type()), " ",
                                                 value.DebugString(), ", expected ", wanted));
}

}  // namespace

absl::StatusOr<const GgufValue*> GgufFile::Required(absl::string_view key) const {
  const GgufValue* value = Find(key);
  if (value == nullptr) {
    return absl::NotFoundError(absl::StrCat(path(), ": no metadata '", key, "'"));
  }
  return value;
}

absl::StatusOr<uint64_t> GgufFile::GetUnsigned(absl::string_view key) const {
  TESSERA_ASSIGN_OR_RETURN(const GgufValue* value, Required(key));
  std::optional<uint64_t> result = value->AsUnsigned();
  if (!result.has_value()) return WrongType(path(), key, *value, "a non-negative integer");
  return *result;
}

absl::StatusOr<double> GgufFile::GetFloat(absl::string_view key) const {
  TESSERA_ASSIGN_OR_RETURN(const GgufValue* value, Required(key));
  std::optional<double> result = value->AsFloat();
  if (!result.has_value()) return WrongType(path(), key, *value, "a number");
  return *result;
}

absl::StatusOr<std::string> GgufFile::GetString(absl::string_view key) const {
  TESSERA_ASSIGN_OR_RETURN(const GgufValue* value, Required(key));
  if (value->AsString() == nullptr) return WrongType(path(), key, *value, "a string");
  return *value->AsString();
}

absl::StatusOr<bool> GgufFile::GetBool(absl::string_view key) const {
  TESSERA_ASSIGN_OR_RETURN(const GgufValue* value, Required(key));
  std::optional<bool> result = value->AsBool();
  if (!result.has_value()) return WrongType(path(), key, *value, "a bool");
  return *result;
}

absl::StatusOr<const std::vector<GgufValue>*> GgufFile::GetArray(absl::string_view key,
                                                                 GgufValueType element) const {
  TESSERA_ASSIGN_OR_RETURN(const GgufValue* value, Required(key));
  if (value->AsArray() == nullptr || value->element_type() != element) {
    return WrongType(path(), key, *value, absl::StrCat("an array of ", GgufValueTypeName(element)));
  }
  return value->AsArray();
}

const GgufTensorInfo* GgufFile::FindTensor(absl::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

absl::Span<const uint8_t> GgufFile::Bytes(const GgufTensorInfo& info) const {
  return file_->bytes().subspan(info.offset, info.nbytes);
}

void GgufFile::ReleasePages(const GgufTensorInfo& info) const {
  file_->ReleasePages(info.offset, info.nbytes);
}

}  // namespace tessera::model
