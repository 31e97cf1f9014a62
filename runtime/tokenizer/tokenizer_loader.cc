// Reads tokenizer.json into a Tokenizer: Tokenizer::FromFile and FromJson. The model, the added
// tokens, the post-processor (and tokenizer_config.json's say on it) are read here, the text
// pipeline around the model by pipeline_loader.h.

#include <algorithm>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "runtime/core/status_macros.h"
#include "runtime/tokenizer/byte_level.h"
#include "runtime/tokenizer/json_reader.h"
#include "runtime/tokenizer/pipeline_loader.h"
#include "runtime/tokenizer/tokenizer.h"

namespace tessera::tokenizer {
namespace {

// Ids index tables, so a file that claims a huge id would make them huge. No tokenizer comes
// near this.
constexpr int64_t kMaxId = (int64_t{1} << 24) - 1;

}  // namespace

// Every error names the file and the place in it, as a JSON path.
class TokenizerLoader {
 public:
  explicit TokenizerLoader(absl::string_view source) : reader_(source) {}

  absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const Json& root, const TokenizerConfig& config);

 private:
  absl::Status LoadModel(const Json& model, Tokenizer& t);
  // The BPE model, once the pre-tokenizer says whether it is byte-level.
  absl::Status BuildModel(Tokenizer& t);
  absl::Status LoadAddedTokens(const Json& root, Tokenizer& t);
  absl::Status LoadPostProcessor(const Json* processor, const std::string& path, Tokenizer& t);
  absl::Status LoadTemplate(const Json& processor, const std::string& path, Tokenizer& t);
  absl::Status ApplyConfig(const TokenizerConfig& config, Tokenizer& t);
  // The ids of `token` (tokenizer_config.json's `field`) for the template.
  absl::StatusOr<std::vector<int32_t>> ConfigTokenIds(const std::optional<std::string>& token,
                                                      absl::string_view field,
                                                      const Tokenizer& t) const;
  // The id tables, and the text of each id's token as the decoder takes it.
  std::vector<std::string> BuildIdTables(Tokenizer& t);

  JsonReader reader_;
  // From the model, kept until the id tables and the model are built.
  std::vector<std::pair<std::string, int32_t>> vocab_;
  std::vector<BpeMerge> merges_;
  BpeOptions options_;
  std::vector<AddedToken> added_;
  std::vector<std::string> added_texts_;  // what each of added_ decodes to
  int64_t max_id_ = -1;
};

absl::StatusOr<std::unique_ptr<Tokenizer>> TokenizerLoader::Load(const Json& root,
                                                                 const TokenizerConfig& config) {
  if (!root.is_object()) return reader_.Invalid("the top level", "must be a JSON object");
  auto t = std::unique_ptr<Tokenizer>(new Tokenizer());
  TESSERA_ASSIGN_OR_RETURN(const Json* model, reader_.RequiredObject(root, "model", "model"));
  TESSERA_RETURN_IF_ERROR(LoadModel(*model, *t));
  TESSERA_ASSIGN_OR_RETURN(Normalizer normalizer,
                           LoadNormalizer(reader_, JsonReader::Field(root, "normalizer")));
  if (!normalizer.empty()) t->normalizer_.emplace(std::move(normalizer));
  TESSERA_RETURN_IF_ERROR(LoadAddedTokens(root, *t));
  TESSERA_ASSIGN_OR_RETURN(PreTokenizer pre_tokenizer,
                           LoadPreTokenizer(reader_, JsonReader::Field(root, "pre_tokenizer")));
  t->pre_tokenizer_.emplace(std::move(pre_tokenizer));
  TESSERA_RETURN_IF_ERROR(BuildModel(*t));
  TESSERA_RETURN_IF_ERROR(
      LoadPostProcessor(JsonReader::Field(root, "post_processor"), "post_processor", *t));
  TESSERA_RETURN_IF_ERROR(ApplyConfig(config, *t));
  TESSERA_ASSIGN_OR_RETURN(std::vector<DecoderStep> decoder,
                           LoadDecoder(reader_, JsonReader::Field(root, "decoder")));
  // The id tables are indexed by id: ids far past the token count would make them huge for
  // nothing (a registering worker's tokenizer must not cost the coordinator gigabytes).
  const int64_t tokens = static_cast<int64_t>(vocab_.size() + added_.size());
  if (max_id_ >= 4 * tokens + 65536) {
    return reader_.Invalid("the token ids",
                           absl::StrCat("go up to ", max_id_, " for ", tokens,
                                        " tokens; ids must be dense (below 4 x the "
                                        "token count + 65536)"));
  }
  const std::vector<std::string> decoder_tokens = BuildIdTables(*t);
  t->decoder_.emplace(std::move(decoder), decoder_tokens);
  return t;
}

absl::Status TokenizerLoader::LoadModel(const Json& model, Tokenizer& t) {
  // Files written before "type" existed tell BPE by its merges.
  std::string type = "BPE";
  if (JsonReader::Field(model, "type") != nullptr ||
      JsonReader::Field(model, "merges") == nullptr) {
    TESSERA_ASSIGN_OR_RETURN(type, reader_.TypeOf(model, "model"));
  }
  if (type != "BPE") return reader_.Unsupported("model.type", type);
  if (const Json* dropout = JsonReader::Field(model, "dropout")) {
    if (!dropout->is_number() || dropout->get<double>() != 0.0) {
      return reader_.Invalid("model.dropout", "must be null or 0: BPE dropout is not supported");
    }
  }
  TESSERA_ASSIGN_OR_RETURN(
      options_.byte_fallback,
      reader_.OptionalBool(model, "byte_fallback", "model.byte_fallback", false));
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (const Json* affix = JsonReader::Field(model, key)) {
      if (!affix->is_string() || !affix->get<std::string>().empty()) {
        return reader_.Unsupported(absl::StrCat("model.", key), affix->dump());
      }
    }
  }
  TESSERA_ASSIGN_OR_RETURN(
      options_.ignore_merges,
      reader_.OptionalBool(model, "ignore_merges", "model.ignore_merges", false));
  TESSERA_ASSIGN_OR_RETURN(options_.fuse_unk,
                           reader_.OptionalBool(model, "fuse_unk", "model.fuse_unk", false));

  const Json* vocab = JsonReader::Field(model, "vocab");
  if (vocab == nullptr) return reader_.Invalid("model.vocab", "is missing");
  if (!vocab->is_object()) return reader_.Invalid("model.vocab", "must be an object of token: id");
  t.model_ids_.reserve(vocab->size());
  vocab_.reserve(vocab->size());
  absl::flat_hash_map<int32_t, const std::string*> token_of_id;
  token_of_id.reserve(vocab->size());
  for (const auto& [token, id_json] : vocab->items()) {
    const std::string path = absl::StrCat("model.vocab[", Json(token).dump(), "]");
    TESSERA_ASSIGN_OR_RETURN(std::string text, reader_.ValidUtf8(token, path));
    if (!id_json.is_number_integer() || id_json.get<int64_t>() < 0 ||
        id_json.get<int64_t>() > kMaxId) {
      return reader_.Invalid(
          path, absl::StrCat("must be an id in [0, ", kMaxId, "], not ", id_json.dump()));
    }
    const auto id = static_cast<int32_t>(id_json.get<int64_t>());
    auto [it, inserted] = token_of_id.try_emplace(id, &token);
    if (!inserted) {
      return reader_.Invalid(
          path, absl::StrCat("has id ", id, ", which ", Json(*it->second).dump(), " has too"));
    }
    t.model_ids_.emplace(text, id);
    vocab_.emplace_back(std::move(text), id);
    max_id_ = std::max<int64_t>(max_id_, id);
  }

  if (const Json* unk = JsonReader::Field(model, "unk_token")) {
    if (!unk->is_string()) return reader_.Invalid("model.unk_token", "must be a string or null");
    auto it = t.model_ids_.find(unk->get<std::string>());
    if (it == t.model_ids_.end()) {
      return reader_.Invalid("model.unk_token",
                             absl::StrCat(unk->dump(), " is not in model.vocab"));
    }
    options_.unk_id = it->second;
  }

  const Json* merges = JsonReader::Field(model, "merges");
  if (merges == nullptr) return reader_.Invalid("model.merges", "is missing");
  if (!merges->is_array()) return reader_.Invalid("model.merges", "must be an array");
  merges_.reserve(merges->size());
  for (size_t i = 0; i < merges->size(); ++i) {
    const Json& merge = (*merges)[i];
    const std::string path = absl::StrCat("model.merges[", i, "]");
    std::string left;
    std::string right;
    if (merge.is_string()) {
      // "a b": tokens never contain a space (byte-level BPE spells it "Ġ", SentencePiece "▁").
      std::vector<std::string> parts = absl::StrSplit(merge.get<std::string>(), ' ');
      if (parts.size() != 2) {
        return reader_.Invalid(
            path, absl::StrCat(merge.dump(), " must be two tokens separated by a space"));
      }
      left = std::move(parts[0]);
      right = std::move(parts[1]);
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() &&
               merge[1].is_string()) {
      left = merge[0].get<std::string>();
      right = merge[1].get<std::string>();
    } else {
      return reader_.Invalid(path, "must be \"a b\" or [\"a\", \"b\"]");
    }
    for (const std::string* name : {&left, &right}) {
      if (!t.model_ids_.contains(*name)) {
        return reader_.Invalid(
            path, absl::StrCat("names ", Json(*name).dump(), ", which is not in model.vocab"));
      }
    }
    auto merged_it = t.model_ids_.find(left + right);
    if (merged_it == t.model_ids_.end()) {
      return reader_.Invalid(
          path, absl::StrCat("makes ", Json(left + right).dump(), ", which is not in model.vocab"));
    }
    merges_.push_back({t.model_ids_.at(left), t.model_ids_.at(right), merged_it->second});
  }

  return absl::OkStatus();
}

absl::Status TokenizerLoader::BuildModel(Tokenizer& t) {
  options_.byte_level = t.pre_tokenizer_->byte_level();
  absl::flat_hash_map<std::string, int32_t> table;
  table.reserve(vocab_.size());
  if (!options_.byte_level) {
    for (const auto& [text, id] : vocab_) table.emplace(text, id);
  } else {
    // Byte fallback would spell the alphabet's characters, not the bytes they stand for.
    if (options_.byte_fallback) {
      return reader_.Invalid("model.byte_fallback",
                             "true is not supported with a ByteLevel pre-tokenizer");
    }
    // The model works on raw bytes; tokens that are not byte-level text can never come out of
    // a byte-level piece, so they are left out of its table.
    for (const auto& [text, id] : vocab_) {
      if (std::optional<std::string> bytes = ByteLevelToBytes(text)) {
        table.emplace(std::move(*bytes), id);
      }
    }
  }
  t.model_ = std::make_unique<BpeModel>(std::move(table), merges_, options_);
  return absl::OkStatus();
}

absl::Status TokenizerLoader::LoadAddedTokens(const Json& root, Tokenizer& t) {
  const Json* tokens = JsonReader::Field(root, "added_tokens");
  if (tokens == nullptr) return absl::OkStatus();
  if (!tokens->is_array()) return reader_.Invalid("added_tokens", "must be an array");
  std::vector<AddedToken> raw;
  std::vector<std::string> raw_patterns;
  std::vector<AddedToken> normalized;
  std::vector<std::string> normalized_patterns;
  for (size_t i = 0; i < tokens->size(); ++i) {
    const Json& entry = (*tokens)[i];
    const std::string path = absl::StrCat("added_tokens[", i, "]");
    if (!entry.is_object()) return reader_.Invalid(path, "must be an object");
    AddedToken token;
    const Json* id = JsonReader::Field(entry, "id");
    if (id == nullptr || !id->is_number_integer() || id->get<int64_t>() < 0 ||
        id->get<int64_t>() > kMaxId) {
      return reader_.Invalid(absl::StrCat(path, ".id"),
                             absl::StrCat("must be an id in [0, ", kMaxId, "]"));
    }
    token.id = static_cast<int32_t>(id->get<int64_t>());
    TESSERA_ASSIGN_OR_RETURN(
        token.content, reader_.RequiredString(entry, "content", absl::StrCat(path, ".content")));
    TESSERA_ASSIGN_OR_RETURN(
        token.special,
        reader_.OptionalBool(entry, "special", absl::StrCat(path, ".special"), false));
    TESSERA_ASSIGN_OR_RETURN(
        token.single_word,
        reader_.OptionalBool(entry, "single_word", absl::StrCat(path, ".single_word"), false));
    TESSERA_ASSIGN_OR_RETURN(
        token.lstrip, reader_.OptionalBool(entry, "lstrip", absl::StrCat(path, ".lstrip"), false));
    TESSERA_ASSIGN_OR_RETURN(
        token.rstrip, reader_.OptionalBool(entry, "rstrip", absl::StrCat(path, ".rstrip"), false));
    TESSERA_ASSIGN_OR_RETURN(
        token.normalized, reader_.OptionalBool(entry, "normalized",
                                               absl::StrCat(path, ".normalized"), !token.special));
    // Hugging Face ignores an added token without text.
    if (token.content.empty()) continue;
    t.added_ids_[token.content] = token.id;
    max_id_ = std::max<int64_t>(max_id_, token.id);
    // Hugging Face matches these in normalized text by their normalized content, and decodes
    // them as that too.
    std::string pattern = token.content;
    if (token.normalized && t.normalizer_.has_value()) {
      TESSERA_RETURN_IF_ERROR(t.normalizer_->Normalize(token.content, &pattern));
    }
    added_.push_back(token);
    added_texts_.push_back(pattern);
    if (token.normalized) {
      normalized_patterns.push_back(std::move(pattern));
      normalized.push_back(std::move(token));
    } else {
      raw_patterns.push_back(std::move(pattern));
      raw.push_back(std::move(token));
    }
  }
  // Hugging Face lists special tokens before the others when it builds its matchers, so a
  // special token wins a tie with an identical plain one.
  auto specials_first = [](std::vector<AddedToken>& list, std::vector<std::string>& patterns) {
    std::vector<size_t> order(list.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return list[a].special && !list[b].special; });
    std::vector<AddedToken> sorted_list;
    std::vector<std::string> sorted_patterns;
    for (const size_t i : order) {
      sorted_list.push_back(std::move(list[i]));
      sorted_patterns.push_back(std::move(patterns[i]));
    }
    list = std::move(sorted_list);
    patterns = std::move(sorted_patterns);
  };
  specials_first(raw, raw_patterns);
  specials_first(normalized, normalized_patterns);
  if (!raw.empty()) {
    TESSERA_ASSIGN_OR_RETURN(t.raw_matcher_,
                             AddedTokenMatcher::Create(std::move(raw), raw_patterns));
  }
  if (!normalized.empty()) {
    TESSERA_ASSIGN_OR_RETURN(t.normalized_matcher_,
                             AddedTokenMatcher::Create(std::move(normalized), normalized_patterns));
  }
  return absl::OkStatus();
}

absl::Status TokenizerLoader::LoadTemplate(const Json& processor, const std::string& path,
                                           Tokenizer& t) {
  const Json* single = JsonReader::Field(processor, "single");
  if (single == nullptr || !single->is_array()) {
    return reader_.Invalid(absl::StrCat(path, ".single"), "must be an array");
  }
  const Json* specials = JsonReader::Field(processor, "special_tokens");
  if (specials != nullptr && !specials->is_object()) {
    return reader_.Invalid(absl::StrCat(path, ".special_tokens"), "must be an object");
  }
  t.template_.clear();
  for (size_t i = 0; i < single->size(); ++i) {
    const Json& piece = (*single)[i];
    const std::string piece_path = absl::StrCat(path, ".single[", i, "]");
    if (const Json* sequence = piece.is_object() ? JsonReader::Field(piece, "Sequence") : nullptr) {
      TESSERA_ASSIGN_OR_RETURN(
          const std::string id,
          reader_.RequiredString(*sequence, "id", absl::StrCat(piece_path, ".Sequence.id")));
      if (id != "A") {
        return reader_.Invalid(absl::StrCat(piece_path, ".Sequence.id"),
                               absl::StrCat("'", id, "' is not the single sequence 'A'"));
      }
      t.template_.emplace_back();
    } else if (const Json* special =
                   piece.is_object() ? JsonReader::Field(piece, "SpecialToken") : nullptr) {
      const std::string id_path = absl::StrCat(piece_path, ".SpecialToken.id");
      TESSERA_ASSIGN_OR_RETURN(const std::string name,
                               reader_.RequiredString(*special, "id", id_path));
      const Json* entry =
          specials == nullptr ? nullptr : JsonReader::Field(*specials, name.c_str());
      if (entry == nullptr || !entry->is_object()) {
        return reader_.Invalid(id_path,
                               absl::StrCat("'", name, "' is not in ", path, ".special_tokens"));
      }
      const Json* ids = JsonReader::Field(*entry, "ids");
      const std::string ids_path =
          absl::StrCat(path, ".special_tokens[", Json(name).dump(), "].ids");
      if (ids == nullptr || !ids->is_array() || ids->empty()) {
        return reader_.Invalid(ids_path, "must be a non-empty array of ids");
      }
      std::vector<int32_t> values;
      for (const Json& id : *ids) {
        if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > kMaxId) {
          return reader_.Invalid(ids_path, absl::StrCat("has ", id.dump(), ", which is not an id"));
        }
        values.push_back(static_cast<int32_t>(id.get<int64_t>()));
        max_id_ = std::max<int64_t>(max_id_, values.back());
      }
      t.template_.push_back(std::move(values));
    } else {
      return reader_.Invalid(piece_path, "must be {\"Sequence\": ...} or {\"SpecialToken\": ...}");
    }
  }
  t.has_template_ = true;
  return absl::OkStatus();
}

absl::Status TokenizerLoader::LoadPostProcessor(const Json* processor, const std::string& path,
                                                Tokenizer& t) {
  if (processor == nullptr) return absl::OkStatus();
  TESSERA_ASSIGN_OR_RETURN(const std::string type, reader_.TypeOf(*processor, path));
  // ByteLevel only trims offsets, which change no id.
  if (type == "ByteLevel") return absl::OkStatus();
  if (type == "TemplateProcessing") {
    if (t.has_template_) return reader_.Invalid(path, "is a second TemplateProcessing");
    return LoadTemplate(*processor, path, t);
  }
  if (type == "Sequence") {
    const Json* list = JsonReader::Field(*processor, "processors");
    if (list == nullptr || !list->is_array()) {
      return reader_.Invalid(absl::StrCat(path, ".processors"), "must be an array");
    }
    for (size_t i = 0; i < list->size(); ++i) {
      TESSERA_RETURN_IF_ERROR(
          LoadPostProcessor(&(*list)[i], absl::StrCat(path, ".processors[", i, "]"), t));
    }
    return absl::OkStatus();
  }
  return reader_.Unsupported(absl::StrCat(path, ".type"), type);
}

absl::StatusOr<std::vector<int32_t>> TokenizerLoader::ConfigTokenIds(
    const std::optional<std::string>& token, absl::string_view field, const Tokenizer& t) const {
  const std::string path = absl::StrCat("tokenizer_config.json's ", field);
  if (!token.has_value()) return reader_.Invalid(path, "is needed and not set");
  std::optional<int32_t> id = t.TokenToId(*token);
  if (!id.has_value()) {
    return reader_.Invalid(path,
                           absl::StrCat(Json(*token).dump(), " is not a token of this tokenizer"));
  }
  return std::vector<int32_t>{*id};
}

absl::Status TokenizerLoader::ApplyConfig(const TokenizerConfig& config, Tokenizer& t) {
  if (!config.add_bos_token.has_value() && !config.add_eos_token.has_value()) {
    return absl::OkStatus();
  }
  // The special tokens before and after the text in tokenizer.json's template.
  std::vector<std::vector<int32_t>> before;
  std::vector<std::vector<int32_t>> after;
  bool text_seen = false;
  for (std::vector<int32_t>& piece : t.template_) {
    if (piece.empty()) {
      text_seen = true;
    } else {
      (text_seen ? after : before).push_back(std::move(piece));
    }
  }
  if (config.add_bos_token.has_value()) {
    before.clear();
    if (*config.add_bos_token) {
      TESSERA_ASSIGN_OR_RETURN(std::vector<int32_t> bos,
                               ConfigTokenIds(config.bos_token, "bos_token", t));
      before.push_back(std::move(bos));
    }
  }
  if (config.add_eos_token.has_value()) {
    after.clear();
    if (*config.add_eos_token) {
      TESSERA_ASSIGN_OR_RETURN(std::vector<int32_t> eos,
                               ConfigTokenIds(config.eos_token, "eos_token", t));
      after.push_back(std::move(eos));
    }
  }
  t.template_ = std::move(before);
  t.template_.emplace_back();
  for (std::vector<int32_t>& piece : after) t.template_.push_back(std::move(piece));
  t.has_template_ = true;
  return absl::OkStatus();
}

std::vector<std::string> TokenizerLoader::BuildIdTables(Tokenizer& t) {
  const size_t size = static_cast<size_t>(max_id_ + 1);
  t.id_tokens_.assign(size, std::string());
  t.id_flags_.assign(size, 0);
  std::vector<std::string> decoder_tokens(size);
  for (const auto& [text, id] : vocab_) {
    t.id_tokens_[id] = text;
    decoder_tokens[id] = text;
    t.id_flags_[id] = Tokenizer::kAssigned;
  }
  // Added tokens name their ids over the model's.
  absl::flat_hash_map<std::string, bool> special_contents;
  for (size_t i = 0; i < added_.size(); ++i) {
    const AddedToken& token = added_[i];
    t.id_tokens_[token.id] = token.content;
    decoder_tokens[token.id] = added_texts_[i];
    t.id_flags_[token.id] = Tokenizer::kAssigned;
    if (token.special) special_contents[token.content] = true;
  }
  // Decode skips by the text it decodes, so a model token spelled like a special token is
  // skipped too, and a special token that normalization changed is not.
  for (size_t id = 0; id < size; ++id) {
    if ((t.id_flags_[id] & Tokenizer::kAssigned) && special_contents.contains(decoder_tokens[id])) {
      t.id_flags_[id] |= Tokenizer::kSpecial;
    }
  }
  return decoder_tokens;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(const std::string& path,
                                                               const TokenizerConfig& config) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return absl::NotFoundError(absl::StrCat(path, ": cannot open the tokenizer file"));
  std::stringstream buffer;
  buffer << file.rdbuf();
  if (file.bad()) return absl::DataLossError(absl::StrCat(path, ": read failed"));
  return FromJson(buffer.str(), path, config);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(absl::string_view json,
                                                               absl::string_view source,
                                                               const TokenizerConfig& config) {
  Json root;
  try {
    root = Json::parse(json.begin(), json.end());
  } catch (const Json::exception& e) {
    // Syntax errors, and numbers past a double's range ("1e776", out_of_range).
    return absl::InvalidArgumentError(absl::StrCat(source, ": not valid JSON: ", e.what()));
  }
  try {
    return TokenizerLoader(source).Load(root, config);
  } catch (const Json::exception& e) {
    // The loader checks types before it reads values; this is a last line of defence.
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": unexpected JSON content: ", e.what()));
  }
}

}  // namespace tessera::tokenizer
