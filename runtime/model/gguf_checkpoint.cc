#include "runtime/model/gguf_checkpoint.h"

#include <cstring>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "runtime/core/half.h"
#include "runtime/core/status_macros.h"

namespace tessera::model {
namespace {

constexpr std::pair<absl::string_view, absl::string_view> kModelTensors[] = {
    {"token_embd.weight", "model.embed_tokens.weight"},
    {"output_norm.weight", "model.norm.weight"},
    {"output.weight", "lm_head.weight"},
};

constexpr std::pair<absl::string_view, absl::string_view> kLayerTensors[] = {
    {"attn_norm.weight", "input_layernorm.weight"},
    {"ffn_norm.weight", "post_attention_layernorm.weight"},
    {"attn_q.weight", "self_attn.q_proj.weight"},
    {"attn_q.bias", "self_attn.q_proj.bias"},
    {"attn_k.weight", "self_attn.k_proj.weight"},
    {"attn_k.bias", "self_attn.k_proj.bias"},
    {"attn_v.weight", "self_attn.v_proj.weight"},
    {"attn_v.bias", "self_attn.v_proj.bias"},
    {"attn_output.weight", "self_attn.o_proj.weight"},
    {"ffn_gate.weight", "mlp.gate_proj.weight"},
    {"ffn_up.weight", "mlp.up_proj.weight"},
    {"ffn_down.weight", "mlp.down_proj.weight"},
};

// The stored row of Hugging Face row `row` of a q/k projection whose heads have `head_rows`
// rows, reordered by llama.cpp's converter.
int64_t StoredRow(int64_t row, int64_t head_rows) {
  const int64_t half = head_rows / 2;
  const int64_t head = row / head_rows;
  const int64_t within = row % head_rows;
  return head * head_rows + 2 * (within % half) + within / half;
}

void StoreAs(const float* src, int64_t count, DType dtype, uint8_t* dst) {
  switch (dtype) {
    case DType::kF32:
      std::memcpy(dst, src, sizeof(float) * count);
      return;
    case DType::kBF16:
      for (int64_t i = 0; i < count; ++i) {
        const uint16_t bits = BFloat16::FromFloat(src[i]).bits;
        std::memcpy(dst + 2 * i, &bits, 2);
      }
      return;
    case DType::kF16:
      for (int64_t i = 0; i < count; ++i) {
        const uint16_t bits = Half::FromFloat(src[i]).bits;
        std::memcpy(dst + 2 * i, &bits, 2);
      }
      return;
    default:
      return;  // unreachable: Read admits floating dtypes only
  }
}

}  // namespace

std::string HuggingFaceTensorName(absl::string_view gguf_name) {
  for (const auto& [gguf, hf] : kModelTensors) {
    if (gguf_name == gguf) return std::string(hf);
  }
  absl::string_view rest = gguf_name;
  if (!absl::ConsumePrefix(&rest, "blk.")) return "";
  const size_t dot = rest.find('.');
  int layer = 0;
  if (dot == absl::string_view::npos || !absl::SimpleAtoi(rest.substr(0, dot), &layer) ||
      layer < 0) {
    return "";
  }
  rest.remove_prefix(dot + 1);
  for (const auto& [gguf, hf] : kLayerTensors) {
    if (rest == gguf) return absl::StrCat("model.layers.", layer, ".", hf);
  }
  return "";
}

absl::StatusOr<std::unique_ptr<GgufCheckpointFile>> GgufCheckpointFile::Open(
    const std::string& path) {
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> file, GgufFile::Open(path));
  std::unique_ptr<GgufCheckpointFile> checkpoint(new GgufCheckpointFile(std::move(file)));
  TESSERA_RETURN_IF_ERROR(checkpoint->NameTensors());
  return checkpoint;
}

absl::Status GgufCheckpointFile::NameTensors() {
  auto invalid = [&](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat(path(), ": ", parts...));
  };
  // Only the Llama architecture's converter reorders q and k.
  const GgufValue* arch = file_->Find("general.architecture");
  const bool reordered =
      arch != nullptr && arch->AsString() != nullptr && *arch->AsString() == "llama";
  uint64_t heads = 0, kv_heads = 0;
  if (reordered) {
    TESSERA_ASSIGN_OR_RETURN(heads, file_->GetUnsigned("llama.attention.head_count"));
    kv_heads = heads;
    if (file_->Find("llama.attention.head_count_kv") != nullptr) {
      TESSERA_ASSIGN_OR_RETURN(kv_heads, file_->GetUnsigned("llama.attention.head_count_kv"));
    }
  }
  for (const GgufTensorInfo& stored : file_->tensors()) {
    const std::string name = HuggingFaceTensorName(stored.name);
    if (name.empty()) {
      return invalid("tensor '", stored.name,
                     "' has no Hugging Face counterpart that Tessera knows");
    }
    if (stored.dims.size() > 2) {
      return invalid("tensor '", stored.name, "' has ", stored.dims.size(),
                     " dimensions (a model's tensors have 1 or 2)");
    }
    TensorInfo info;
    info.name = name;
    info.shape = stored.shape();
    info.offset = stored.offset;
    info.nbytes = stored.nbytes;
    switch (stored.type) {
      case GgmlType::kF16:
        info.dtype = DType::kF16;
        break;
      case GgmlType::kBF16:
        info.dtype = DType::kBF16;
        break;
      default:
        info.dtype = DType::kF32;
    }
    Entry entry{&stored, 0};
    const bool is_q = absl::EndsWith(name, "self_attn.q_proj.weight") ||
                      absl::EndsWith(name, "self_attn.q_proj.bias");
    const bool is_k = absl::EndsWith(name, "self_attn.k_proj.weight") ||
                      absl::EndsWith(name, "self_attn.k_proj.bias");
    if (reordered && (is_q || is_k)) {
      const uint64_t n = is_q ? heads : kv_heads;
      const int64_t rows = info.shape[0];
      if (n == 0 || rows % static_cast<int64_t>(n) != 0 || (rows / n) % 2 != 0) {
        return invalid("tensor '", stored.name, "': its ", rows, " rows are not ", n,
                       " heads of an even number of rows");
      }
      entry.permuted_head_rows = rows / static_cast<int64_t>(n);
    }
    if (!index_.emplace(name, tensors_.size()).second) {
      return invalid("two tensors are both '", name, "'");
    }
    tensors_.push_back(std::move(info));
    entries_.push_back(entry);
  }
  return absl::OkStatus();
}

const TensorInfo* GgufCheckpointFile::Find(absl::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const GgufTensorInfo* GgufCheckpointFile::Stored(absl::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : entries_[it->second].stored;
}

absl::StatusOr<size_t> GgufCheckpointFile::IndexOf(absl::string_view name) const {
  auto it = index_.find(name);
  if (it == index_.end()) {
    return absl::NotFoundError(absl::StrCat(path(), " holds no tensor '", name, "'"));
  }
  return it->second;
}

absl::StatusOr<Tensor> GgufCheckpointFile::Read(absl::string_view name, const TensorSlice& slice,
                                                std::optional<DType> dtype) const {
  TESSERA_ASSIGN_OR_RETURN(const size_t at, IndexOf(name));
  const TensorInfo& info = tensors_[at];
  const Entry& entry = entries_[at];
  const GgufTensorInfo& stored = *entry.stored;
  const DType to = dtype.value_or(info.dtype);
  auto invalid = [&](auto&&... parts) {
    return absl::InvalidArgumentError(
        absl::StrCat(path(), ": tensor '", name, "' (", stored.name, "): ", parts...));
  };
  if (!IsFloatingPoint(to)) return invalid("cannot be read as ", NameOf(to));
  absl::StatusOr<Shape> shape = slice.SlicedShape(info.shape);
  if (!shape.ok()) return invalid(shape.status().message());

  // Dequantizes Hugging Face row `row` (of a 1-D tensor: the whole tensor) into `dst`.
  const int64_t row_length = stored.dims[0];
  const uint64_t row_bytes = stored.nbytes / static_cast<uint64_t>(stored.rows());
  const absl::Span<const uint8_t> bytes = file_->Bytes(stored);
  auto dequantize_row = [&](int64_t row, float* dst) -> absl::Status {
    const int64_t source = entry.permuted_head_rows > 0 && info.shape.size() == 2
                               ? StoredRow(row, entry.permuted_head_rows)
                               : row;
    return DequantizeGgmlRow(stored.type, bytes.subspan(source * row_bytes, row_bytes),
                             absl::MakeSpan(dst, row_length));
  };

  TESSERA_ASSIGN_OR_RETURN(Tensor values, Tensor::Zeros(DType::kF32, *shape));
  float* out = values.data<float>();
  if (info.shape.size() == 1) {
    // Norms and biases: the whole vector, then the elements the slice takes.
    std::vector<float> whole(row_length);
    TESSERA_RETURN_IF_ERROR(dequantize_row(0, whole.data()));
    if (entry.permuted_head_rows > 0) {
      std::vector<float> ordered(row_length);
      for (int64_t i = 0; i < row_length; ++i) {
        ordered[i] = whole[StoredRow(i, entry.permuted_head_rows)];
      }
      whole = std::move(ordered);
    }
    if (slice.kind == TensorSlice::Kind::kWhole) {
      std::memcpy(out, whole.data(), sizeof(float) * row_length);
    } else {
      int64_t written = 0;
      for (const IndexRange& range : slice.ranges) {
        std::memcpy(out + written, whole.data() + range.begin, sizeof(float) * range.size());
        written += range.size();
      }
    }
  } else if (slice.kind == TensorSlice::Kind::kColumns) {
    std::vector<float> row(row_length);
    const int64_t width = (*shape)[1];
    for (int64_t r = 0; r < info.shape[0]; ++r) {
      TESSERA_RETURN_IF_ERROR(dequantize_row(r, row.data()));
      int64_t written = 0;
      for (const IndexRange& range : slice.ranges) {
        std::memcpy(out + r * width + written, row.data() + range.begin,
                    sizeof(float) * range.size());
        written += range.size();
      }
    }
  } else {
    const std::vector<IndexRange> ranges = slice.kind == TensorSlice::Kind::kWhole
                                               ? std::vector<IndexRange>{{0, info.shape[0]}}
                                               : slice.ranges;
    int64_t written = 0;
    for (const IndexRange& range : ranges) {
      for (int64_t r = range.begin; r < range.end; ++r, ++written) {
        TESSERA_RETURN_IF_ERROR(dequantize_row(r, out + written * row_length));
      }
    }
  }
  if (to == DType::kF32) return values;
  TESSERA_ASSIGN_OR_RETURN(Tensor converted, Tensor::Empty(to, *shape));
  StoreAs(out, values.numel(), to, static_cast<uint8_t*>(converted.data()));
  return converted;
}

std::optional<StoredGroupFormat> GgufCheckpointFile::StoredFormat(absl::string_view name) const {
  auto it = index_.find(name);
  if (it == index_.end() || tensors_[it->second].shape.size() != 2) return std::nullopt;
  switch (entries_[it->second].stored->type) {
    case GgmlType::kQ8_0:
      return StoredGroupFormat{kernels::WeightQuant::kInt8, GgmlGroups::kGroupElements};
    case GgmlType::kQ4_0:
    case GgmlType::kQ4_1:
    case GgmlType::kQ4_K:
      return StoredGroupFormat{kernels::WeightQuant::kInt4, GgmlGroups::kGroupElements};
    default:
      return std::nullopt;
  }
}

absl::StatusOr<std::optional<StoredGroups>> GgufCheckpointFile::ReadStoredGroups(
    absl::string_view name, const TensorSlice& slice) const {
  TESSERA_ASSIGN_OR_RETURN(const size_t at, IndexOf(name));
  const TensorInfo& info = tensors_[at];
  const Entry& entry = entries_[at];
  const GgufTensorInfo& stored = *entry.stored;
  const std::optional<StoredGroupFormat> format = StoredFormat(name);
  if (!format.has_value()) return std::nullopt;
  StoredGroups groups;
  groups.quant = format->quant;
  auto invalid = [&](auto&&... parts) {
    return absl::InvalidArgumentError(
        absl::StrCat(path(), ": tensor '", name, "' (", stored.name, "): ", parts...));
  };
  absl::StatusOr<Shape> shape = slice.SlicedShape(info.shape);
  if (!shape.ok()) return invalid(shape.status().message());
  constexpr int64_t kGroup = GgmlGroups::kGroupElements;
  const int64_t row_length = info.shape[1];
  std::vector<IndexRange> rows{{0, info.shape[0]}};
  std::vector<IndexRange> columns{{0, row_length}};
  if (slice.kind == TensorSlice::Kind::kRows) rows = slice.ranges;
  if (slice.kind == TensorSlice::Kind::kColumns) columns = slice.ranges;
  for (const IndexRange& range : columns) {
    if (range.begin % kGroup != 0 || range.end % kGroup != 0) {
      return invalid("the inputs ", slice.ToString(), " cut its groups of ", kGroup);
    }
  }
  groups.rows = (*shape)[0];
  groups.cols = (*shape)[1];
  groups.group_size = kGroup;
  groups.codes.reserve(groups.rows * groups.cols);
  groups.scales.reserve(groups.rows * groups.cols / kGroup);
  if (groups.quant == kernels::WeightQuant::kInt4) groups.offsets.reserve(groups.scales.capacity());

  const uint64_t row_bytes = stored.nbytes / static_cast<uint64_t>(stored.rows());
  const absl::Span<const uint8_t> bytes = file_->Bytes(stored);
  for (const IndexRange& range : rows) {
    for (int64_t row = range.begin; row < range.end; ++row) {
      const int64_t source =
          entry.permuted_head_rows > 0 ? StoredRow(row, entry.permuted_head_rows) : row;
      TESSERA_ASSIGN_OR_RETURN(
          GgmlGroups row_groups,
          GgmlRowGroups(stored.type, bytes.subspan(source * row_bytes, row_bytes), row_length));
      for (const IndexRange& cols : columns) {
        groups.codes.insert(groups.codes.end(), row_groups.codes.begin() + cols.begin,
                            row_groups.codes.begin() + cols.end);
        groups.scales.insert(groups.scales.end(), row_groups.scales.begin() + cols.begin / kGroup,
                             row_groups.scales.begin() + cols.end / kGroup);
        if (groups.quant == kernels::WeightQuant::kInt4) {
          groups.offsets.insert(groups.offsets.end(),
                                row_groups.offsets.begin() + cols.begin / kGroup,
                                row_groups.offsets.begin() + cols.end / kGroup);
        }
      }
    }
  }
  return groups;
}

void GgufCheckpointFile::ReleasePages(const TensorInfo& info) const {
  if (const GgufTensorInfo* stored = Stored(info.name)) file_->ReleasePages(*stored);
}

}  // namespace tessera::model
