#ifndef TESSERA_RUNTIME_MODEL_GGUF_CHECKPOINT_H_
#define TESSERA_RUNTIME_MODEL_GGUF_CHECKPOINT_H_

// A GGUF file's tensors under their Hugging Face names and layouts, read as f32 (or f16/bf16)
// by dequantizing the blocks of the rows a slice needs: each rank dequantizes only its part.
//
//   token_embd.weight            model.embed_tokens.weight
//   output_norm.weight           model.norm.weight
//   output.weight                lm_head.weight
//   blk.N.attn_norm.weight       model.layers.N.input_layernorm.weight
//   blk.N.ffn_norm.weight        model.layers.N.post_attention_layernorm.weight
//   blk.N.attn_{q,k,v}.{weight,bias}   model.layers.N.self_attn.{q,k,v}_proj.*
//   blk.N.attn_output.weight     model.layers.N.self_attn.o_proj.weight
//   blk.N.ffn_{gate,up,down}.weight    model.layers.N.mlp.{gate,up,down}_proj.weight
//
// llama.cpp's converter reorders the rows of a Llama-architecture model's q and k projections
// within each head (it interleaves the two rotary halves: HF row s * d/2 + j of a head of d
// rows is stored as row 2 j + s); reads put them back, so the tensors equal the original
// checkpoint's. Qwen2 files are stored in Hugging Face's order.

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/model/gguf_file.h"
#include "runtime/model/safetensors.h"

namespace tessera::model {

class GgufCheckpointFile : public TensorSource {
 public:
  // Opens and validates the file (GgufFile::Open), then names its tensors. INVALID_ARGUMENT
  // naming the tensor for one that has no Hugging Face counterpart Tessera knows, or a
  // permuted projection whose rows are not a whole number of heads.
  static absl::StatusOr<std::unique_ptr<GgufCheckpointFile>> Open(const std::string& path);

  const std::string& path() const override { return file_->path(); }
  // Hugging Face names and (out, in) shapes; dtype is what reads give by default: the stored
  // type for F32, F16 and BF16 tensors, f32 for quantized ones.
  const std::vector<TensorInfo>& tensors() const override { return tensors_; }
  const TensorInfo* Find(absl::string_view name) const override;
  // Any floating dtype may be asked for (rounded to nearest even from the dequantized f32).
  absl::StatusOr<Tensor> Read(absl::string_view name, const TensorSlice& slice = TensorSlice(),
                              std::optional<DType> dtype = std::nullopt) const override;
  void ReleasePages(const TensorInfo& info) const override;
  // The groups of 32 of a 2-D tensor stored as Q8_0 (int8), Q4_0, Q4_1 or Q4_K (int4), see
  // GgmlRowGroups: the values DequantizeGgmlRow gives, except that a Q4_K group's scale
  // d * sc and offset -dmin * m, which need more bits than an f16 holds, are rounded to f16
  // where the kernels store them. nullopt for other types. Column ranges must start and end
  // on a group.
  absl::StatusOr<std::optional<StoredGroups>> ReadStoredGroups(
      absl::string_view name, const TensorSlice& slice) const override;
  std::optional<StoredGroupFormat> StoredFormat(absl::string_view name) const override;

  const GgufFile& file() const { return *file_; }
  // The stored tensor behind a Hugging Face name, or nullptr.
  const GgufTensorInfo* Stored(absl::string_view name) const;

 private:
  struct Entry {
    const GgufTensorInfo* stored = nullptr;
    int64_t permuted_head_rows = 0;  // rows per head of a reordered q/k projection; 0: none
  };
  explicit GgufCheckpointFile(std::unique_ptr<GgufFile> file) : file_(std::move(file)) {}
  absl::Status NameTensors();
  // The position of `name` in tensors_; NOT_FOUND naming it and the file.
  absl::StatusOr<size_t> IndexOf(absl::string_view name) const;

  std::unique_ptr<GgufFile> file_;
  std::vector<TensorInfo> tensors_;
  std::vector<Entry> entries_;  // parallel to tensors_
  std::map<std::string, size_t, std::less<>> index_;
};

// The Hugging Face name of a GGUF tensor name; empty when there is none.
std::string HuggingFaceTensorName(absl::string_view gguf_name);

}  // namespace tessera::model

#endif  // TESSERA_RUNTIME_MODEL_GGUF_CHECKPOINT_H_
