#include "runtime/model/gptq_checkpoint.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "runtime/core/half.h"
#include "runtime/core/status_macros.h"
#include "runtime/model/json_file.h"
#include "runtime/model/model_config.h"

namespace tessera::model {
namespace {

using Json = nlohmann::json;

constexpr absl::string_view kQweight = ".qweight";
constexpr absl::string_view kQzeros = ".qzeros";
constexpr absl::string_view kScales = ".scales";
constexpr absl::string_view kGidx = ".g_idx";
// v1 ("gptq") checkpoints store every zero point minus one, subtracted word-wise.
constexpr uint32_t kV1ZeroOffset = 0x11111111u;

uint32_t LoadU32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

float LoadScale(const uint8_t* base, DType dtype, int64_t index) {
  uint16_t bits;
  switch (dtype) {
    case DType::kF16:
      std::memcpy(&bits, base + 2 * index, 2);
      return Half::FromBits(bits).ToFloat();
    case DType::kBF16:
      std::memcpy(&bits, base + 2 * index, 2);
      return BFloat16::FromBits(bits).ToFloat();
    default: {  // f32: CheckQuartet admits floating scales only
      float v;
      std::memcpy(&v, base + 4 * index, 4);
      return v;
    }
  }
}

// `count` f32 values as f16 or bf16 (`dtype`), rounded to nearest even.
void StoreAs(const float* src, int64_t count, DType dtype, uint8_t* dst) {
  for (int64_t i = 0; i < count; ++i) {
    const uint16_t bits =
        dtype == DType::kBF16 ? BFloat16::FromFloat(src[i]).bits : Half::FromFloat(src[i]).bits;
    std::memcpy(dst + 2 * i, &bits, 2);
  }
}

// The output rows and input columns a slice of an [out, in] weight takes, in order.
struct SliceRanges {
  std::vector<IndexRange> rows, cols;
};
SliceRanges RangesOf(const TensorSlice& slice, int64_t out, int64_t in) {
  switch (slice.kind) {
    case TensorSlice::Kind::kRows:
      return {slice.ranges, {{0, in}}};
    case TensorSlice::Kind::kColumns:
      return {{{0, out}}, slice.ranges};
    case TensorSlice::Kind::kWhole:
      break;
  }
  return {{{0, out}}, {{0, in}}};
}

// The outputs of `ranges`, in order.
std::vector<int64_t> OutputsOf(const std::vector<IndexRange>& ranges) {
  std::vector<int64_t> outputs;
  for (const IndexRange& range : ranges) {
    for (int64_t o = range.begin; o < range.end; ++o) outputs.push_back(o);
  }
  return outputs;
}

// Reads an optional field of `object`; INVALID_ARGUMENT naming it when of the wrong type.
template <typename T>
absl::Status Field(const Json& object, const char* key, absl::string_view source, T* value) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return absl::OkStatus();
  bool ok = false;
  if constexpr (std::is_same_v<T, bool>) {
    ok = it->is_boolean();
  } else if constexpr (std::is_same_v<T, std::string>) {
    ok = it->is_string();
  } else {
    ok = it->is_number_integer();
  }
  if (!ok) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": quantization_config.", key, " is ",
                                                   it->dump(), ", of the wrong type"));
  }
  *value = it->get<T>();
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::optional<GptqConfig>> ParseGptqConfig(absl::string_view config_json,
                                                          absl::string_view source) {
  const Json config =
      Json::parse(config_json.begin(), config_json.end(), nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded() || !config.is_object()) return std::nullopt;
  auto it = config.find("quantization_config");
  if (it == config.end() || it->is_null()) return std::nullopt;
  const Json& q = *it;
  auto invalid = [&](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": quantization_config", parts...));
  };
  if (!q.is_object()) return invalid(" is ", q.dump(), ", not an object");

  std::string method;
  TESSERA_RETURN_IF_ERROR(Field(q, "quant_method", source, &method));
  if (absl::AsciiStrToLower(method) != "gptq") {
    return invalid(".quant_method is \"", method,
                   "\": Tessera reads GPTQ checkpoints only (quant_method \"gptq\")");
  }
  GptqConfig gptq;
  int64_t bits = 4;
  TESSERA_RETURN_IF_ERROR(Field(q, "bits", source, &bits));
  if (bits != 4) {
    return invalid(".bits is ", bits, ": Tessera reads 4-bit GPTQ checkpoints only");
  }
  gptq.bits = 4;
  TESSERA_RETURN_IF_ERROR(Field(q, "group_size", source, &gptq.group_size));
  if (gptq.group_size != -1 && gptq.group_size <= 0) {
    return invalid(".group_size is ", gptq.group_size, ": expected a positive size or -1");
  }
  TESSERA_RETURN_IF_ERROR(Field(q, "desc_act", source, &gptq.desc_act));
  TESSERA_RETURN_IF_ERROR(Field(q, "sym", source, &gptq.sym));

  // transformers' GPTQConfig writes checkpoint_format; GPTQModel writes both it and "format".
  const char* format_key = q.contains("checkpoint_format") ? "checkpoint_format" : "format";
  std::string format = "gptq";
  TESSERA_RETURN_IF_ERROR(Field(q, format_key, source, &format));
  if (format == "gptq") {
    gptq.format = GptqConfig::Format::kGptq;
  } else if (format == "gptq_v2") {
    gptq.format = GptqConfig::Format::kGptqV2;
  } else {
    return invalid(".", format_key, " is \"", format,
                   "\": Tessera reads the \"gptq\" and \"gptq_v2\" layouts only");
  }
  bool marlin = false;
  TESSERA_RETURN_IF_ERROR(Field(q, "is_marlin_format", source, &marlin));
  if (marlin) {
    return invalid(
        ".is_marlin_format is true: Tessera reads the \"gptq\" and \"gptq_v2\" layouts only");
  }
  std::string pack_dtype = "int32";
  TESSERA_RETURN_IF_ERROR(Field(q, "pack_dtype", source, &pack_dtype));
  if (pack_dtype != "int32" && pack_dtype != "torch.int32") {
    return invalid(".pack_dtype is \"", pack_dtype, "\": Tessera reads int32 words only");
  }
  auto dynamic = q.find("dynamic");
  if (dynamic != q.end() && !dynamic->is_null() && !dynamic->empty()) {
    return invalid(".dynamic sets per-module quantization (", dynamic->dump(),
                   "), which Tessera does not read");
  }
  return gptq;
}

absl::StatusOr<std::optional<GptqConfig>> LoadGptqConfig(const std::string& dir) {
  const std::string path = (std::filesystem::path(dir) / "config.json").string();
  absl::StatusOr<std::string> text = ReadTextFile(path);
  if (absl::IsNotFound(text.status())) return std::nullopt;
  if (!text.ok()) return text.status();
  TESSERA_ASSIGN_OR_RETURN(std::optional<GptqConfig> gptq, ParseGptqConfig(*text, path));
  if (!gptq.has_value()) return std::nullopt;
  // The model's own errors are LoadModelConfig's to report; here they only leave every bias.
  if (absl::StatusOr<ModelConfig> model = ParseModelConfig(*text, path); model.ok()) {
    gptq->qkv_bias = model->qkv_bias;
    gptq->o_proj_bias = model->o_proj_bias;
    gptq->mlp_bias = false;
  }
  return gptq;
}

absl::StatusOr<std::unique_ptr<GptqCheckpoint>> GptqCheckpoint::Open(
    std::vector<std::unique_ptr<SafetensorsFile>> files, const GptqConfig& config,
    std::string path) {
  if (config.bits != 4) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": GPTQ bits ", config.bits, ": Tessera reads 4-bit checkpoints only"));
  }
  std::unique_ptr<GptqCheckpoint> checkpoint(
      new GptqCheckpoint(std::move(files), config, std::move(path)));
  TESSERA_RETURN_IF_ERROR(checkpoint->Index());
  return checkpoint;
}

absl::StatusOr<GptqCheckpoint::Quantized> GptqCheckpoint::CheckQuartet(
    const std::string& prefix, const std::map<std::string, Stored>& stored) const {
  Quantized q;
  q.qweight = stored.at(prefix + std::string(kQweight));
  auto data_loss = [&](const Stored& where, auto&&... parts) {
    return absl::DataLossError(absl::StrCat(where.file->path(), ": ", parts...));
  };
  auto find = [&](absl::string_view suffix) -> Stored {
    auto it = stored.find(prefix + std::string(suffix));
    return it == stored.end() ? Stored{} : it->second;
  };
  q.qzeros = find(kQzeros);
  q.scales = find(kScales);
  q.g_idx = find(kGidx);
  for (auto [part, suffix] : {std::pair{&q.qzeros, kQzeros}, std::pair{&q.scales, kScales}}) {
    if (part->file == nullptr) {
      return data_loss(q.qweight, "GPTQ weight '", prefix, "' has ", prefix, kQweight, " but no ",
                       prefix, suffix);
    }
  }
  auto expect = [&](const Stored& s, bool dtype_ok, absl::string_view dtypes,
                    size_t rank) -> absl::Status {
    if (!dtype_ok) {
      return data_loss(s, "tensor '", s.info->name, "' is ", NameOf(s.info->dtype), ", expected ",
                       dtypes);
    }
    if (s.info->shape.size() != rank) {
      return data_loss(s, "tensor '", s.info->name, "' is ", ShapeToString(s.info->shape),
                       ", expected ", rank, " dimensions");
    }
    return absl::OkStatus();
  };
  TESSERA_RETURN_IF_ERROR(expect(q.qweight, q.qweight.info->dtype == DType::kI32, "i32", 2));
  TESSERA_RETURN_IF_ERROR(expect(q.qzeros, q.qzeros.info->dtype == DType::kI32, "i32", 2));
  TESSERA_RETURN_IF_ERROR(
      expect(q.scales, IsFloatingPoint(q.scales.info->dtype), "f16, bf16 or f32", 2));
  const int64_t packed = q.qweight.info->shape[0];
  q.out = q.qweight.info->shape[1];
  q.in = 8 * packed;
  if (q.g_idx.file != nullptr) {
    TESSERA_RETURN_IF_ERROR(expect(q.g_idx, q.g_idx.info->dtype == DType::kI32, "i32", 1));
    q.in = q.g_idx.info->shape[0];
    if ((q.in + 7) / 8 != packed) {
      return data_loss(q.g_idx, "tensor '", q.g_idx.info->name, "' has ", q.in, " inputs but ",
                       q.qweight.info->name, " is ", ShapeToString(q.qweight.info->shape),
                       ", which packs ", 8 * packed);
    }
  }
  if (packed <= 0 || q.out <= 0 || q.in <= 0) {
    return data_loss(q.qweight, "tensor '", q.qweight.info->name, "' is ",
                     ShapeToString(q.qweight.info->shape), ", an empty weight");
  }
  q.group_size = config_.group_size == -1 ? q.in : config_.group_size;
  q.groups = (q.in + q.group_size - 1) / q.group_size;
  const std::string because =
      absl::StrCat(" for ", q.qweight.info->name, " ", ShapeToString(q.qweight.info->shape),
                   " and group_size ", config_.group_size, " in config.json");
  const Shape zeros_shape = {q.groups, (q.out + 7) / 8};
  if (q.qzeros.info->shape != zeros_shape) {
    return data_loss(q.qzeros, "tensor '", q.qzeros.info->name, "' is ",
                     ShapeToString(q.qzeros.info->shape), ", expected ", ShapeToString(zeros_shape),
                     because);
  }
  const Shape scales_shape = {q.groups, q.out};
  if (q.scales.info->shape != scales_shape) {
    return data_loss(q.scales, "tensor '", q.scales.info->name, "' is ",
                     ShapeToString(q.scales.info->shape), ", expected ",
                     ShapeToString(scales_shape), because);
  }
  q.group_of.resize(q.in);
  if (q.g_idx.file == nullptr) {
    for (int64_t i = 0; i < q.in; ++i) q.group_of[i] = static_cast<int32_t>(i / q.group_size);
  } else {
    const uint8_t* bytes = q.g_idx.file->Bytes(*q.g_idx.info).data();
    for (int64_t i = 0; i < q.in; ++i) {
      const int32_t g = static_cast<int32_t>(LoadU32(bytes + 4 * i));
      if (g < 0 || g >= q.groups) {
        return data_loss(q.g_idx, "tensor '", q.g_idx.info->name, "' puts input ", i, " in group ",
                         g, ", outside [0, ", q.groups, ")", because);
      }
      q.group_of[i] = g;
      q.sequential = q.sequential && g == i / q.group_size;
    }
  }
  return q;
}

absl::StatusOr<bool> GptqCheckpoint::IsUnwantedZeroBias(
    const std::string& prefix, const std::map<std::string, Stored>& stored) const {
  auto it = stored.find(prefix + ".bias");
  if (it == stored.end()) return false;
  const bool attention_qkv =
      absl::EndsWith(prefix, ".q_proj") || absl::EndsWith(prefix, ".k_proj") ||
      absl::EndsWith(prefix, ".v_proj") || absl::EndsWith(prefix, ".qkv_proj");
  const bool wanted = attention_qkv                       ? config_.qkv_bias
                      : absl::EndsWith(prefix, ".o_proj") ? config_.o_proj_bias
                                                          : config_.mlp_bias;
  if (wanted || !IsFloatingPoint(it->second.info->dtype)) return false;
  TESSERA_ASSIGN_OR_RETURN(Tensor bias,
                           it->second.file->Read(it->first, TensorSlice(), DType::kF32));
  const float* values = bias.data<float>();
  return std::all_of(values, values + bias.numel(), [](float v) { return v == 0.0f; });
}

absl::Status GptqCheckpoint::Index() {
  std::map<std::string, Stored> stored;
  for (const auto& file : files_) {
    for (const TensorInfo& info : file->tensors()) {
      auto [it, inserted] = stored.emplace(info.name, Stored{file.get(), &info});
      if (!inserted) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor '", info.name, "' is stored twice, in ", it->second.file->path(),
                         " and ", file->path()));
      }
    }
  }
  // X.qweight names a quantized weight X.weight; its quartet's tensors are not shown.
  std::map<std::string, int> quantized_of;  // "X.qweight" -> index into quantized_
  std::set<std::string> hidden;
  for (const auto& [name, where] : stored) {
    if (!absl::EndsWith(name, kQweight)) continue;
    const std::string prefix = name.substr(0, name.size() - kQweight.size());
    if (stored.count(prefix + ".weight") > 0) {
      return absl::InvalidArgumentError(absl::StrCat(where.file->path(), ": tensor '", prefix,
                                                     ".weight' is stored beside '", name, "'"));
    }
    TESSERA_ASSIGN_OR_RETURN(Quantized q, CheckQuartet(prefix, stored));
    quantized_of[name] = static_cast<int>(quantized_.size());
    quantized_.push_back(std::move(q));
    for (absl::string_view suffix : {kQweight, kQzeros, kScales, kGidx}) {
      hidden.insert(prefix + std::string(suffix));
    }
    TESSERA_ASSIGN_OR_RETURN(bool zero_bias, IsUnwantedZeroBias(prefix, stored));
    if (zero_bias) hidden.insert(prefix + ".bias");
  }
  for (const auto& [name, where] : stored) {
    if (hidden.count(name) > 0) continue;
    for (absl::string_view suffix : {kQzeros, kGidx}) {
      if (absl::EndsWith(name, suffix)) {
        return absl::DataLossError(absl::StrCat(where.file->path(), ": tensor '", name, "' has no ",
                                                name.substr(0, name.size() - suffix.size()),
                                                kQweight, " beside it"));
      }
    }
  }
  // In the files' order, each quantized weight where its qweight lies.
  for (const auto& file : files_) {
    for (const TensorInfo& info : file->tensors()) {
      Entry entry;
      TensorInfo shown = info;
      if (auto it = quantized_of.find(info.name); it != quantized_of.end()) {
        const Quantized& q = quantized_[it->second];
        shown.name = info.name.substr(0, info.name.size() - kQweight.size()) + ".weight";
        shown.dtype = DType::kF32;
        shown.shape = {q.out, q.in};
        entry.quantized = it->second;
      } else if (hidden.count(info.name) > 0) {
        continue;
      } else {
        entry.passthrough = Stored{file.get(), &info};
      }
      index_.emplace(shown.name, tensors_.size());
      tensors_.push_back(std::move(shown));
      entries_.push_back(entry);
    }
  }
  return absl::OkStatus();
}

const TensorInfo* GptqCheckpoint::Find(absl::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

bool GptqCheckpoint::IsQuantized(absl::string_view name) const {
  auto it = index_.find(name);
  return it != index_.end() && entries_[it->second].quantized >= 0;
}

absl::StatusOr<Tensor> GptqCheckpoint::Read(absl::string_view name, const TensorSlice& slice,
                                            std::optional<DType> dtype) const {
  auto it = index_.find(name);
  if (it == index_.end()) {
    return absl::NotFoundError(absl::StrCat(path_, " holds no tensor '", name, "'"));
  }
  const Entry& entry = entries_[it->second];
  if (entry.quantized < 0) return entry.passthrough.file->Read(name, slice, dtype);
  const DType to = dtype.value_or(DType::kF32);
  if (!IsFloatingPoint(to)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": tensor '", name, "' (GPTQ) cannot be read as ", NameOf(to)));
  }
  return ReadQuantized(std::string(name), quantized_[entry.quantized], slice, to);
}

void GptqCheckpoint::LoadGroupRow(const Quantized& q, int64_t g, const std::vector<int64_t>& rows,
                                  float* scale, int8_t* zero) const {
  const uint8_t* scales = q.scales.file->Bytes(*q.scales.info).data();
  const uint8_t* qzeros = q.qzeros.file->Bytes(*q.qzeros.info).data();
  const int64_t zero_words = (q.out + 7) / 8;
  const bool v1 = config_.format == GptqConfig::Format::kGptq;
  for (size_t r = 0; r < rows.size(); ++r) {
    const int64_t o = rows[r];
    scale[r] = LoadScale(scales, q.scales.info->dtype, g * q.out + o);
    uint32_t word = LoadU32(qzeros + 4 * (g * zero_words + o / 8));
    if (v1) word += kV1ZeroOffset;
    zero[r] = static_cast<int8_t>((word >> (4 * (o % 8))) & 0xF);
  }
}

template <typename Visit>
void GptqCheckpoint::ForEachCode(const Quantized& q, const std::vector<int64_t>& rows,
                                 const std::vector<IndexRange>& cols, Visit&& visit) {
  // Tiles of 64 output rows: each packed row's words of a tile are one stretch of the file,
  // and the tile's output rows few enough pages to stay in the TLB.
  constexpr int64_t kTile = 64;
  const uint8_t* qweight = q.qweight.file->Bytes(*q.qweight.info).data();
  const int64_t num_rows = static_cast<int64_t>(rows.size());
  for (int64_t tile = 0; tile < num_rows; tile += kTile) {
    const int64_t tile_end = std::min(tile + kTile, num_rows);
    int64_t column = 0;  // of the range's first input
    for (const IndexRange& range : cols) {
      for (int64_t p = range.begin / 8; 8 * p < range.end; ++p) {
        // The inputs of packed row p inside the range (all 8 but at a range's ends).
        const int k_begin = static_cast<int>(std::max<int64_t>(range.begin - 8 * p, 0));
        const int k_end = static_cast<int>(std::min<int64_t>(range.end - 8 * p, 8));
        const uint8_t* words = qweight + 4 * p * q.out;
        for (int64_t r = tile; r < tile_end; ++r) {
          const uint32_t word = LoadU32(words + 4 * rows[r]);
          for (int k = k_begin; k < k_end; ++k) {
            const int64_t i = 8 * p + k;
            visit(r, column + i - range.begin, i, static_cast<int32_t>((word >> (4 * k)) & 0xF));
          }
        }
      }
      column += range.size();
    }
  }
}

absl::StatusOr<Tensor> GptqCheckpoint::ReadQuantized(const std::string& name, const Quantized& q,
                                                     const TensorSlice& slice, DType dtype) const {
  absl::StatusOr<Shape> shape = slice.SlicedShape({q.out, q.in});
  if (!shape.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": tensor '", name, "': ", shape.status().message()));
  }
  const SliceRanges ranges = RangesOf(slice, q.out, q.in);
  const std::vector<int64_t> rows = OutputsOf(ranges.rows);
  const int64_t width = (*shape)[1];
  const int64_t num_rows = static_cast<int64_t>(rows.size());

  // Scale and zero point of every (group, slice row) the slice uses: a row-parallel slice
  // without act-order touches only its own groups' scales and zero points.
  std::vector<char> used(q.groups, 0);
  for (const IndexRange& range : ranges.cols) {
    for (int64_t i = range.begin; i < range.end; ++i) used[q.group_of[i]] = 1;
  }
  std::vector<float> scale(q.groups * num_rows);
  std::vector<int8_t> zero(q.groups * num_rows);
  for (int64_t g = 0; g < q.groups; ++g) {
    if (used[g]) LoadGroupRow(q, g, rows, &scale[g * num_rows], &zero[g * num_rows]);
  }

  int64_t cols = 0;
  for (const IndexRange& range : ranges.cols) cols += range.size();
  // Every element is written unless the slice is padded (a vocabulary shard past the end).
  const bool padded = (*shape)[0] != num_rows || width != cols;
  TESSERA_ASSIGN_OR_RETURN(Tensor values, padded ? Tensor::Zeros(DType::kF32, *shape)
                                                 : Tensor::Empty(DType::kF32, *shape));
  float* out = values.data<float>();
  ForEachCode(q, rows, ranges.cols, [&](int64_t r, int64_t column, int64_t i, int32_t code) {
    const int64_t at = q.group_of[i] * num_rows + r;
    // Exact in f32: an f16 scale times an integer in [-15, 15].
    out[r * width + column] = scale[at] * static_cast<float>(code - zero[at]);
  });
  if (dtype == DType::kF32) return values;
  TESSERA_ASSIGN_OR_RETURN(Tensor converted, Tensor::Empty(dtype, *shape));
  StoreAs(out, values.numel(), dtype, static_cast<uint8_t*>(converted.data()));
  return converted;
}

absl::StatusOr<std::optional<StoredGroups>> GptqCheckpoint::ReadStoredGroups(
    absl::string_view name, const TensorSlice& slice) const {
  auto it = index_.find(name);
  if (it == index_.end()) {
    return absl::NotFoundError(absl::StrCat(path_, " holds no tensor '", name, "'"));
  }
  const Entry& entry = entries_[it->second];
  if (entry.quantized < 0) return entry.passthrough.file->ReadStoredGroups(name, slice);
  const Quantized& q = quantized_[entry.quantized];
  // Tessera's int4 kernels take groups of 32 or 128 in input order: act-order weights, other
  // group sizes and a last group shorter than the rest are dequantized instead.
  if (!q.StoredAsGroups()) return std::nullopt;
  auto invalid = [&](auto&&... parts) {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": tensor '", name, "' (GPTQ): ", parts...));
  };
  absl::StatusOr<Shape> shape = slice.SlicedShape({q.out, q.in});
  if (!shape.ok()) return invalid(shape.status().message());
  const SliceRanges ranges = RangesOf(slice, q.out, q.in);
  const std::vector<int64_t> rows = OutputsOf(ranges.rows);
  const int64_t num_rows = static_cast<int64_t>(rows.size());
  int64_t cols = 0;
  for (const IndexRange& range : ranges.cols) {
    if (range.begin % q.group_size != 0 || range.end % q.group_size != 0) {
      return invalid("the slice ", slice.ToString(), " cuts its groups of ", q.group_size,
                     " inputs");
    }
    cols += range.size();
  }
  if ((*shape)[1] != cols) return invalid("the slice ", slice.ToString(), " pads its inputs");

  StoredGroups groups;
  groups.quant = kernels::WeightQuant::kInt4;
  groups.rows = (*shape)[0];  // rows past the ranges (a padded slice) stay zero
  groups.cols = cols;
  groups.group_size = q.group_size;
  const int64_t row_groups = cols / q.group_size;
  groups.codes.assign(groups.rows * cols, 0);
  groups.scales.assign(groups.rows * row_groups, 0.0f);
  groups.offsets.assign(groups.rows * row_groups, 0.0f);
  std::vector<float> scale(num_rows);
  std::vector<int8_t> zero(num_rows);
  int64_t column_group = 0;
  for (const IndexRange& range : ranges.cols) {
    for (int64_t g = range.begin / q.group_size; g < range.end / q.group_size; ++g) {
      LoadGroupRow(q, g, rows, scale.data(), zero.data());
      for (int64_t r = 0; r < num_rows; ++r) {
        groups.scales[r * row_groups + column_group] = scale[r];
        groups.offsets[r * row_groups + column_group] = -scale[r] * static_cast<float>(zero[r]);
      }
      ++column_group;
    }
  }
  int8_t* codes = groups.codes.data();
  ForEachCode(q, rows, ranges.cols, [&](int64_t r, int64_t column, int64_t, int32_t code) {
    codes[r * cols + column] = static_cast<int8_t>(code);
  });
  return groups;
}

std::optional<StoredGroupFormat> GptqCheckpoint::StoredFormat(absl::string_view name) const {
  auto it = index_.find(name);
  if (it == index_.end()) return std::nullopt;
  const Entry& entry = entries_[it->second];
  if (entry.quantized < 0) return entry.passthrough.file->StoredFormat(name);
  const Quantized& q = quantized_[entry.quantized];
  if (!q.StoredAsGroups()) return std::nullopt;
  return StoredGroupFormat{kernels::WeightQuant::kInt4, q.group_size};
}

void GptqCheckpoint::ReleasePages(const TensorInfo& info) const {
  auto it = index_.find(info.name);
  if (it == index_.end()) return;
  const Entry& entry = entries_[it->second];
  if (entry.quantized < 0) {
    entry.passthrough.file->ReleasePages(*entry.passthrough.info);
    return;
  }
  const Quantized& q = quantized_[entry.quantized];
  for (const Stored* part : {&q.qweight, &q.qzeros, &q.scales, &q.g_idx}) {
    if (part->file != nullptr) part->file->ReleasePages(*part->info);
  }
}

}  // namespace tessera::model
