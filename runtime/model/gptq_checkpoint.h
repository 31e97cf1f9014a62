#ifndef TESSERA_RUNTIME_MODEL_GPTQ_CHECKPOINT_H_
#define TESSERA_RUNTIME_MODEL_GPTQ_CHECKPOINT_H_

// Hugging Face GPTQ checkpoints: safetensors files whose linear layers are stored 4-bit, as
// GPTQModel and AutoGPTQ write them, read as ordinary [out, in] weights. Each projection X is
// stored as four tensors (in inputs, out outputs, G = ceil(in / group_size) groups):
//   X.qweight  i32 [in / 8, out]   word p of column o holds input 8 p + k's code in bits
//                                   4k .. 4k+3 (k = 0..7), codes 0..15
//   X.qzeros   i32 [G, ceil(out / 8)]   group g's zero points, output 8 c + k in bits 4k..
//   X.scales   f16 [G, out]        (bf16 and f32 are read too)
//   X.g_idx    i32 [in]            the group of each input: i / group_size without
//                                   act-order (desc_act false), any order with it; absent in
//                                   some checkpoints without act-order
// and its weight is W[o][i] = scale[g][o] * (q[i][o] - z[g][o]) with g = g_idx[i].
//
// The zero points z: checkpoint_format "gptq_v2" stores them as they are. "gptq" (v1, the
// format of AutoGPTQ and the default of GPTQModel) stores z - 1, subtracted from the whole
// 32-bit word at once (0x11111111), so that a zero point of 0 borrows from the next field;
// reads add 0x11111111 back (mod 2^32) before taking the fields apart, as GPTQModel's loader
// does (for a word with every z >= 1 that is the same as adding 1 to each field, as AutoGPTQ
// does).
//
// GptqCheckpoint presents X.weight, [out, in], f32 (f16/bf16 on request), for every such
// quartet, in place of the four, and every other tensor of the files (embeddings, norms,
// biases, an unquantized lm_head) as stored. A read dequantizes only the slice asked for: rows
// (output features) read only their columns of qweight, qzeros and scales; columns (input
// features) only the packed rows of qweight and the groups they use. A column range need not
// start or end on a multiple of 8.

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/model/safetensors.h"

namespace tessera::model {

// What config.json's "quantization_config" says about a GPTQ checkpoint.
struct GptqConfig {
  enum class Format { kGptq, kGptqV2 };
  int bits = 4;
  int64_t group_size = 128;  // inputs a group; -1 (one group of every input) is kept as -1
  bool desc_act = false;     // act-order: g_idx in any order
  bool sym = true;
  Format format = Format::kGptq;
  // Which projections the model has biases for (ModelConfig::qkv_bias and o_proj_bias; no
  // supported model has MLP biases). AutoGPTQ writes an all-zero X.bias beside every
  // projection it quantizes, bias or not; those of projections without one are not shown. Left
  // true (every bias shown) where the model's configuration is not known.
  bool qkv_bias = true;
  bool o_proj_bias = true;
  bool mlp_bias = true;
};

// Parses the text of a config.json: nullopt when it has no "quantization_config" (an ordinary
// float checkpoint). INVALID_ARGUMENT naming `source`, the field and its value for anything
// Tessera does not read: a quant_method other than "gptq", bits other than 4, a
// checkpoint_format/format other than "gptq" and "gptq_v2", is_marlin_format, a pack_dtype
// other than int32, per-module overrides ("dynamic"), a group_size that is neither positive
// nor -1, or a field of the wrong type. Text that is not JSON gives nullopt: the model
// configuration's own parser reports it.
absl::StatusOr<std::optional<GptqConfig>> ParseGptqConfig(absl::string_view config_json,
                                                          absl::string_view source);

// ParseGptqConfig of `dir`/config.json, with the bias fields from the model configuration
// there (ParseModelConfig; left true when it does not parse); nullopt when there is no such
// file.
absl::StatusOr<std::optional<GptqConfig>> LoadGptqConfig(const std::string& dir);

// The safetensors files of one GPTQ checkpoint seen as one source of float weights. A
// projection's four tensors may lie in different files (a sharded checkpoint). Thread
// compatible, like SafetensorsFile: concurrent reads are safe.
class GptqCheckpoint : public TensorSource {
 public:
  // Takes the files and checks every quartet against `config`, reading nothing but the
  // headers and g_idx. `path` names the checkpoint in errors (the file, or the index of a
  // sharded one). Errors name the tensor and its file:
  //   DATA_LOSS         a quartet without its qzeros or scales; qweight, qzeros, g_idx not
  //                     i32 or scales not floating; shapes that disagree with each other
  //                     (qweight [in / 8, out], qzeros [G, ceil(out / 8)], scales [G, out],
  //                     g_idx [in], G = ceil(in / group_size)); a g_idx value outside
  //                     [0, G).
  //   INVALID_ARGUMENT  bits other than 4; a tensor stored in two files; X.weight stored
  //                     beside X.qweight.
  // An all-zero X.bias of a projection the config says has no bias is not shown.
  static absl::StatusOr<std::unique_ptr<GptqCheckpoint>> Open(
      std::vector<std::unique_ptr<SafetensorsFile>> files, const GptqConfig& config,
      std::string path);

  const std::string& path() const override { return path_; }
  // X.weight (f32, [out, in]; offset and nbytes those of X.qweight) for every quartet, and the
  // files' other tensors as stored (but for the zero biases above).
  const std::vector<TensorInfo>& tensors() const override { return tensors_; }
  const TensorInfo* Find(absl::string_view name) const override;
  // A quantized weight reads as any floating dtype (f32 by default: exact; f16 and bf16
  // rounded to nearest even from it); other tensors as SafetensorsFile::Read reads them.
  absl::StatusOr<Tensor> Read(absl::string_view name, const TensorSlice& slice = TensorSlice(),
                              std::optional<DType> dtype = std::nullopt) const override;
  void ReleasePages(const TensorInfo& info) const override;
  // int4 groups exactly as stored (code = q, scale = s, offset = -s * z) for a weight without
  // act-order (g_idx[i] = i / group_size) and group_size 32 or 128 that divides its inputs;
  // nullopt for any other tensor. INVALID_ARGUMENT for a column slice that cuts a group.
  absl::StatusOr<std::optional<StoredGroups>> ReadStoredGroups(
      absl::string_view name, const TensorSlice& slice) const override;
  // {int4, group_size} where ReadStoredGroups gives groups; nullopt elsewhere.
  std::optional<StoredGroupFormat> StoredFormat(absl::string_view name) const override;

  const GptqConfig& config() const { return config_; }
  // Whether `name` (X.weight) is a dequantized GPTQ weight.
  bool IsQuantized(absl::string_view name) const;

 private:
  struct Stored {
    const SafetensorsFile* file = nullptr;
    const TensorInfo* info = nullptr;
  };
  struct Quantized {
    Stored qweight, qzeros, scales, g_idx;  // g_idx.file is null when absent
    int64_t in = 0, out = 0, groups = 0, group_size = 0;
    std::vector<int32_t> group_of;  // g_idx, or i / group_size when absent
    bool sequential = true;         // group_of[i] == i / group_size for every i
    // Whether ReadStoredGroups gives its groups: no act-order, groups of 32 or 128, all full.
    bool StoredAsGroups() const {
      return sequential && (group_size == 32 || group_size == 128) && in % group_size == 0;
    }
  };
  struct Entry {
    Stored passthrough;  // file is null for a quantized weight
    int quantized = -1;  // index into quantized_
  };

  GptqCheckpoint(std::vector<std::unique_ptr<SafetensorsFile>> files, const GptqConfig& config,
                 std::string path)
      : files_(std::move(files)), config_(config), path_(std::move(path)) {}
  absl::Status Index();
  absl::StatusOr<Quantized> CheckQuartet(const std::string& prefix,
                                         const std::map<std::string, Stored>& stored) const;
  // Whether prefix.bias is an all-zero bias of a projection the model has no bias for.
  absl::StatusOr<bool> IsUnwantedZeroBias(const std::string& prefix,
                                          const std::map<std::string, Stored>& stored) const;
  // Group g's scales and zero points of the outputs `rows`, into scale[r] and zero[r].
  void LoadGroupRow(const Quantized& q, int64_t g, const std::vector<int64_t>& rows, float* scale,
                    int8_t* zero) const;
  // Calls visit(r, column, i, code) for the code of output rows[r] and input i, at `column`
  // of the slice's inputs (`cols` one after another), for every such pair: qweight's packed
  // rows in order, each row's words along the outputs, so that the file is read forwards.
  template <typename Visit>
  static void ForEachCode(const Quantized& q, const std::vector<int64_t>& rows,
                          const std::vector<IndexRange>& cols, Visit&& visit);
  absl::StatusOr<Tensor> ReadQuantized(const std::string& name, const Quantized& q,
                                       const TensorSlice& slice, DType dtype) const;

  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  GptqConfig config_;
  std::string path_;
  std::vector<TensorInfo> tensors_;
  std::vector<Entry> entries_;  // parallel to tensors_
  std::vector<Quantized> quantized_;
  std::map<std::string, size_t, std::less<>> index_;  // name -> position in tensors_
};

}  // namespace tessera::model

#endif  // TESSERA_RUNTIME_MODEL_GPTQ_CHECKPOINT_H_
