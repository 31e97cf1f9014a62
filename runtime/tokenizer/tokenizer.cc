#include "runtime/tokenizer/tokenizer.h"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"
#include "runtime/core/status_macros.h"
#include "runtime/tokenizer/byte_level.h"
#include "runtime/tokenizer/digits.h"
#include "runtime/tokenizer/normalizer.h"
#include "runtime/tokenizer/utf8.h"

namespace tessera::tokenizer {

using Json = nlohmann::json;

namespace {

// Ids index tables, so a file that claims a huge id would make them huge. No tokenizer comes
// near this.
constexpr int64_t kMaxId = (int64_t{1} << 24) - 1;

}  // namespace

// Reads a parsed tokenizer.json into a Tokenizer. Every error names the file (`source_`) and
// the place in it, as a JSON path.
class TokenizerLoader {
 public:
  explicit TokenizerLoader(absl::string_view source) : source_(source) {}

  absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const Json& root);

 private:
  absl::Status Invalid(absl::string_view path, absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": ", path, " ", what));
  }
  absl::Status Unsupported(absl::string_view path, absl::string_view value) const {
    return Invalid(path, absl::StrCat("'", value, "' is not supported"));
  }

  // The field `key` of `object`, or nullptr when it is absent or null.
  static const Json* Field(const Json& object, const char* key) {
    auto it = object.find(key);
    if (it == object.end() || it->is_null()) return nullptr;
    return &*it;
  }
  absl::StatusOr<const Json*> RequiredObject(const Json& object, const char* key,
                                             absl::string_view path) const;
  absl::StatusOr<std::string> RequiredString(const Json& object, const char* key,
                                             absl::string_view path) const;
  absl::StatusOr<bool> OptionalBool(const Json& object, const char* key, absl::string_view path,
                                    bool default_value) const;
  absl::StatusOr<std::string> TypeOf(const Json& object, absl::string_view path) const;
  absl::StatusOr<std::string> ValidUtf8(const std::string& text, absl::string_view path) const;

  absl::Status LoadModel(const Json& model, Tokenizer& t);
  absl::Status LoadAddedTokens(const Json& root, Tokenizer& t);
  absl::Status LoadNormalizer(const Json* normalizer, Tokenizer& t);
  absl::Status LoadPreTokenizer(const Json* pre_tokenizer, Tokenizer& t);
  absl::StatusOr<SplitStep> LoadSplit(const Json& split, const std::string& path);
  absl::Status LoadPostProcessor(const Json* processor, const std::string& path, Tokenizer& t);
  absl::Status LoadTemplate(const Json& processor, const std::string& path, Tokenizer& t);
  absl::Status LoadDecoder(const Json* decoder);
  void BuildIdTables(Tokenizer& t);

  std::string source_;
  // From the model, kept until the id tables are built.
  std::vector<std::pair<std::string, int32_t>> vocab_;
  std::vector<AddedToken> added_;
  int64_t max_id_ = -1;
};

absl::StatusOr<const Json*> TokenizerLoader::RequiredObject(const Json& object, const char* key,
                                                            absl::string_view path) const {
  const Json* field = Field(object, key);
  if (field == nullptr) return Invalid(path, "is missing");
  if (!field->is_object()) return Invalid(path, "must be an object");
  return field;
}

absl::StatusOr<std::string> TokenizerLoader::RequiredString(const Json& object, const char* key,
                                                            absl::string_view path) const {
  const Json* field = Field(object, key);
  if (field == nullptr) return Invalid(path, "is missing");
  if (!field->is_string()) return Invalid(path, "must be a string");
  return ValidUtf8(field->get<std::string>(), path);
}

absl::StatusOr<bool> TokenizerLoader::OptionalBool(const Json& object, const char* key,
                                                   absl::string_view path,
                                                   bool default_value) const {
  const Json* field = Field(object, key);
  if (field == nullptr) return default_value;
  if (!field->is_boolean()) return Invalid(path, "must be true or false");
  return field->get<bool>();
}

absl::StatusOr<std::string> TokenizerLoader::TypeOf(const Json& object,
                                                    absl::string_view path) const {
  if (!object.is_object()) return Invalid(path, "must be an object");
  return RequiredString(object, "type", absl::StrCat(path, ".type"));
}

absl::StatusOr<std::string> TokenizerLoader::ValidUtf8(const std::string& text,
                                                       absl::string_view path) const {
  // nlohmann::json passes invalid UTF-8 in strings through; nothing downstream expects it.
  if (auto bad = FindInvalidUtf8(text)) {
    return Invalid(path, absl::StrFormat("is not valid UTF-8 (byte %d)", *bad));
  }
  return text;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> TokenizerLoader::Load(const Json& root) {
  if (!root.is_object()) return Invalid("the top level", "must be a JSON object");
  auto t = std::unique_ptr<Tokenizer>(new Tokenizer());
  TESSERA_ASSIGN_OR_RETURN(const Json* model, RequiredObject(root, "model", "model"));
  TESSERA_RETURN_IF_ERROR(LoadModel(*model, *t));
  TESSERA_RETURN_IF_ERROR(LoadNormalizer(Field(root, "normalizer"), *t));
  TESSERA_RETURN_IF_ERROR(LoadAddedTokens(root, *t));
  TESSERA_RETURN_IF_ERROR(LoadPreTokenizer(Field(root, "pre_tokenizer"), *t));
  TESSERA_RETURN_IF_ERROR(LoadPostProcessor(Field(root, "post_processor"), "post_processor", *t));
  TESSERA_RETURN_IF_ERROR(LoadDecoder(Field(root, "decoder")));
  // The id tables are indexed by id: ids far past the token count would make them huge for
  // nothing (a registering worker's tokenizer must not cost the coordinator gigabytes).
  const int64_t tokens = static_cast<int64_t>(vocab_.size() + added_.size());
  if (max_id_ >= 4 * tokens + 65536) {
    return Invalid("the token ids", absl::StrCat("go up to ", max_id_, " for ", tokens,
                                                 " tokens; ids must be dense (below 4 x the "
                                                 "token count + 65536)"));
  }
  BuildIdTables(*t);
  return t;
}

absl::Status TokenizerLoader::LoadModel(const Json& model, Tokenizer& t) {
  // Files written before "type" existed tell BPE by its merges.
  std::string type = "BPE";
  if (Field(model, "type") != nullptr || Field(model, "merges") == nullptr) {
    TESSERA_ASSIGN_OR_RETURN(type, TypeOf(model, "model"));
  }
  if (type != "BPE") return Unsupported("model.type", type);
  if (const Json* dropout = Field(model, "dropout")) {
    if (!dropout->is_number() || dropout->get<double>() != 0.0) {
      return Invalid("model.dropout", "must be null or 0: BPE dropout is not supported");
    }
  }
  TESSERA_ASSIGN_OR_RETURN(const bool byte_fallback,
                           OptionalBool(model, "byte_fallback", "model.byte_fallback", false));
  if (byte_fallback) return Unsupported("model.byte_fallback", "true");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (const Json* affix = Field(model, key)) {
      if (!affix->is_string() || !affix->get<std::string>().empty()) {
        return Unsupported(absl::StrCat("model.", key), affix->dump());
      }
    }
  }
  BpeOptions options;
  TESSERA_ASSIGN_OR_RETURN(options.ignore_merges,
                           OptionalBool(model, "ignore_merges", "model.ignore_merges", false));
  TESSERA_ASSIGN_OR_RETURN(options.fuse_unk,
                           OptionalBool(model, "fuse_unk", "model.fuse_unk", false));

  const Json* vocab = Field(model, "vocab");
  if (vocab == nullptr) return Invalid("model.vocab", "is missing");
  if (!vocab->is_object()) return Invalid("model.vocab", "must be an object of token: id");
  t.model_ids_.reserve(vocab->size());
  vocab_.reserve(vocab->size());
  absl::flat_hash_map<int32_t, const std::string*> token_of_id;
  token_of_id.reserve(vocab->size());
  for (const auto& [token, id_json] : vocab->items()) {
    const std::string path = absl::StrCat("model.vocab[", Json(token).dump(), "]");
    TESSERA_ASSIGN_OR_RETURN(std::string text, ValidUtf8(token, path));
    if (!id_json.is_number_integer() || id_json.get<int64_t>() < 0 ||
        id_json.get<int64_t>() > kMaxId) {
      return Invalid(path,
                     absl::StrCat("must be an id in [0, ", kMaxId, "], not ", id_json.dump()));
    }
    const auto id = static_cast<int32_t>(id_json.get<int64_t>());
    auto [it, inserted] = token_of_id.try_emplace(id, &token);
    if (!inserted) {
      return Invalid(path,
                     absl::StrCat("has id ", id, ", which ", Json(*it->second).dump(), " has too"));
    }
    t.model_ids_.emplace(text, id);
    vocab_.emplace_back(std::move(text), id);
    max_id_ = std::max<int64_t>(max_id_, id);
  }

  if (const Json* unk = Field(model, "unk_token")) {
    if (!unk->is_string()) return Invalid("model.unk_token", "must be a string or null");
    auto it = t.model_ids_.find(unk->get<std::string>());
    if (it == t.model_ids_.end()) {
      return Invalid("model.unk_token", absl::StrCat(unk->dump(), " is not in model.vocab"));
    }
    options.unk_id = it->second;
  }

  const Json* merges = Field(model, "merges");
  if (merges == nullptr) return Invalid("model.merges", "is missing");
  if (!merges->is_array()) return Invalid("model.merges", "must be an array");
  std::vector<BpeMerge> rules;
  rules.reserve(merges->size());
  for (size_t i = 0; i < merges->size(); ++i) {
    const Json& merge = (*merges)[i];
    const std::string path = absl::StrCat("model.merges[", i, "]");
    std::string left;
    std::string right;
    if (merge.is_string()) {
      // "a b": byte-level tokens never contain a space (it is spelled "Ġ").
      std::vector<std::string> parts = absl::StrSplit(merge.get<std::string>(), ' ');
      if (parts.size() != 2) {
        return Invalid(path,
                       absl::StrCat(merge.dump(), " must be two tokens separated by a space"));
      }
      left = std::move(parts[0]);
      right = std::move(parts[1]);
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() &&
               merge[1].is_string()) {
      left = merge[0].get<std::string>();
      right = merge[1].get<std::string>();
    } else {
      return Invalid(path, "must be \"a b\" or [\"a\", \"b\"]");
    }
    for (const std::string* name : {&left, &right}) {
      if (!t.model_ids_.contains(*name)) {
        return Invalid(path,
                       absl::StrCat("names ", Json(*name).dump(), ", which is not in model.vocab"));
      }
    }
    auto merged_it = t.model_ids_.find(left + right);
    if (merged_it == t.model_ids_.end()) {
      return Invalid(
          path, absl::StrCat("makes ", Json(left + right).dump(), ", which is not in model.vocab"));
    }
    rules.push_back({t.model_ids_.at(left), t.model_ids_.at(right), merged_it->second});
  }

  // The model works on raw bytes; tokens that are not byte-level text can never come out of
  // a byte-level piece, so they are left out of its table.
  absl::flat_hash_map<std::string, int32_t> by_bytes;
  by_bytes.reserve(vocab_.size());
  for (const auto& [text, id] : vocab_) {
    if (std::optional<std::string> bytes = ByteLevelToBytes(text)) {
      by_bytes.emplace(std::move(*bytes), id);
    }
  }
  t.model_ = std::make_unique<BpeModel>(std::move(by_bytes), rules, options);
  return absl::OkStatus();
}

absl::Status TokenizerLoader::LoadAddedTokens(const Json& root, Tokenizer& t) {
  const Json* tokens = Field(root, "added_tokens");
  if (tokens == nullptr) return absl::OkStatus();
  if (!tokens->is_array()) return Invalid("added_tokens", "must be an array");
  std::vector<AddedToken> raw;
  std::vector<std::string> raw_patterns;
  std::vector<AddedToken> normalized;
  std::vector<std::string> normalized_patterns;
  for (size_t i = 0; i < tokens->size(); ++i) {
    const Json& entry = (*tokens)[i];
    const std::string path = absl::StrCat("added_tokens[", i, "]");
    if (!entry.is_object()) return Invalid(path, "must be an object");
    AddedToken token;
    const Json* id = Field(entry, "id");
    if (id == nullptr || !id->is_number_integer() || id->get<int64_t>() < 0 ||
        id->get<int64_t>() > kMaxId) {
      return Invalid(absl::StrCat(path, ".id"), absl::StrCat("must be an id in [0, ", kMaxId, "]"));
    }
    token.id = static_cast<int32_t>(id->get<int64_t>());
    TESSERA_ASSIGN_OR_RETURN(token.content,
                             RequiredString(entry, "content", absl::StrCat(path, ".content")));
    TESSERA_ASSIGN_OR_RETURN(token.special,
                             OptionalBool(entry, "special", absl::StrCat(path, ".special"), false));
    TESSERA_ASSIGN_OR_RETURN(
        token.single_word,
        OptionalBool(entry, "single_word", absl::StrCat(path, ".single_word"), false));
    TESSERA_ASSIGN_OR_RETURN(token.lstrip,
                             OptionalBool(entry, "lstrip", absl::StrCat(path, ".lstrip"), false));
    TESSERA_ASSIGN_OR_RETURN(token.rstrip,
                             OptionalBool(entry, "rstrip", absl::StrCat(path, ".rstrip"), false));
    TESSERA_ASSIGN_OR_RETURN(
        token.normalized,
        OptionalBool(entry, "normalized", absl::StrCat(path, ".normalized"), !token.special));
    // Hugging Face ignores an added token without text.
    if (token.content.empty()) continue;
    t.added_ids_[token.content] = token.id;
    max_id_ = std::max<int64_t>(max_id_, token.id);
    added_.push_back(token);
    if (token.normalized) {
      std::string pattern = token.content;
      if (t.nfc_) TESSERA_RETURN_IF_ERROR(ToNfc(token.content, &pattern));
      normalized_patterns.push_back(std::move(pattern));
      normalized.push_back(std::move(token));
    } else {
      raw_patterns.push_back(token.content);
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

absl::Status TokenizerLoader::LoadNormalizer(const Json* normalizer, Tokenizer& t) {
  if (normalizer == nullptr) return absl::OkStatus();
  TESSERA_ASSIGN_OR_RETURN(const std::string type, TypeOf(*normalizer, "normalizer"));
  std::vector<std::pair<std::string, std::string>> steps;  // (path, type)
  if (type == "Sequence") {
    const Json* list = Field(*normalizer, "normalizers");
    if (list == nullptr || !list->is_array()) {
      return Invalid("normalizer.normalizers", "must be an array");
    }
    for (size_t i = 0; i < list->size(); ++i) {
      const std::string path = absl::StrCat("normalizer.normalizers[", i, "]");
      TESSERA_ASSIGN_OR_RETURN(std::string step, TypeOf((*list)[i], path));
      steps.emplace_back(absl::StrCat(path, ".type"), std::move(step));
    }
  } else {
    steps.emplace_back("normalizer.type", type);
  }
  for (const auto& [path, step] : steps) {
    if (step != "NFC") return Unsupported(path, step);
    if (!NfcAvailable()) {
      return absl::UnimplementedError(absl::StrCat(
          source_, ": ", path, " 'NFC' needs ICU, and this build of Tessera has none"));
    }
    t.nfc_ = true;
  }
  return absl::OkStatus();
}

absl::StatusOr<SplitStep> TokenizerLoader::LoadSplit(const Json& split, const std::string& path) {
  SplitStep step;
  TESSERA_ASSIGN_OR_RETURN(const Json* pattern,
                           RequiredObject(split, "pattern", absl::StrCat(path, ".pattern")));
  absl::StatusOr<std::unique_ptr<Regex>> compiled;
  if (const Json* regex = Field(*pattern, "Regex")) {
    if (!regex->is_string())
      return Invalid(absl::StrCat(path, ".pattern.Regex"), "must be a string");
    compiled = Regex::Compile(regex->get<std::string>());
  } else if (const Json* literal = Field(*pattern, "String")) {
    if (!literal->is_string()) {
      return Invalid(absl::StrCat(path, ".pattern.String"), "must be a string");
    }
    compiled = Regex::CompileLiteral(literal->get<std::string>());
  } else {
    return Invalid(absl::StrCat(path, ".pattern"), "must have \"Regex\" or \"String\"");
  }
  if (!compiled.ok()) {
    return Invalid(absl::StrCat(path, ".pattern"), compiled.status().message());
  }
  step.pattern = std::move(*compiled);
  TESSERA_ASSIGN_OR_RETURN(const std::string behavior,
                           RequiredString(split, "behavior", absl::StrCat(path, ".behavior")));
  static const auto* const kBehaviors = new absl::flat_hash_map<std::string, SplitBehavior>{
      {"Removed", SplitBehavior::kRemoved},
      {"Isolated", SplitBehavior::kIsolated},
      {"MergedWithPrevious", SplitBehavior::kMergedWithPrevious},
      {"MergedWithNext", SplitBehavior::kMergedWithNext},
      {"Contiguous", SplitBehavior::kContiguous}};
  auto it = kBehaviors->find(behavior);
  if (it == kBehaviors->end()) return Unsupported(absl::StrCat(path, ".behavior"), behavior);
  step.behavior = it->second;
  TESSERA_ASSIGN_OR_RETURN(step.invert,
                           OptionalBool(split, "invert", absl::StrCat(path, ".invert"), false));
  return step;
}

absl::Status TokenizerLoader::LoadPreTokenizer(const Json* pre_tokenizer, Tokenizer& t) {
  if (pre_tokenizer == nullptr) {
    return Invalid("pre_tokenizer", "is missing: a byte-level BPE tokenizer needs ByteLevel");
  }
  TESSERA_ASSIGN_OR_RETURN(const std::string type, TypeOf(*pre_tokenizer, "pre_tokenizer"));
  std::vector<std::pair<std::string, const Json*>> steps;  // (path, step)
  if (type == "Sequence") {
    const Json* list = Field(*pre_tokenizer, "pretokenizers");
    if (list == nullptr || !list->is_array()) {
      return Invalid("pre_tokenizer.pretokenizers", "must be an array");
    }
    for (size_t i = 0; i < list->size(); ++i) {
      steps.emplace_back(absl::StrCat("pre_tokenizer.pretokenizers[", i, "]"), &(*list)[i]);
    }
  } else {
    steps.emplace_back("pre_tokenizer", pre_tokenizer);
  }
  std::vector<SplitStep> splits;
  std::optional<ByteLevelStep> byte_level;
  for (const auto& [path, step] : steps) {
    TESSERA_ASSIGN_OR_RETURN(const std::string step_type, TypeOf(*step, path));
    if (byte_level.has_value()) {
      return Invalid(path, absl::StrCat("'", step_type, "' after ByteLevel is not supported"));
    }
    if (step_type == "Split") {
      TESSERA_ASSIGN_OR_RETURN(SplitStep split, LoadSplit(*step, path));
      splits.push_back(std::move(split));
    } else if (step_type == "ByteLevel") {
      ByteLevelStep b;
      TESSERA_ASSIGN_OR_RETURN(
          b.add_prefix_space,
          OptionalBool(*step, "add_prefix_space", absl::StrCat(path, ".add_prefix_space"), true));
      TESSERA_ASSIGN_OR_RETURN(
          b.use_regex, OptionalBool(*step, "use_regex", absl::StrCat(path, ".use_regex"), true));
      byte_level = b;
    } else if (step_type == "Digits") {
      // Hugging Face gives individual_digits no default: it refuses a Digits without one.
      const std::string flag_path = absl::StrCat(path, ".individual_digits");
      if (Field(*step, "individual_digits") == nullptr) return Invalid(flag_path, "is missing");
      TESSERA_ASSIGN_OR_RETURN(const bool individual_digits,
                               OptionalBool(*step, "individual_digits", flag_path, false));
      TESSERA_ASSIGN_OR_RETURN(SplitStep split, DigitsSplit(individual_digits));
      splits.push_back(std::move(split));
    } else {
      return Unsupported(absl::StrCat(path, ".type"), step_type);
    }
  }
  if (!byte_level.has_value()) {
    return Invalid("pre_tokenizer", "must end with ByteLevel (only byte-level BPE is supported)");
  }
  TESSERA_ASSIGN_OR_RETURN(PreTokenizer pre, PreTokenizer::Create(std::move(splits), *byte_level));
  t.pre_tokenizer_.emplace(std::move(pre));
  return absl::OkStatus();
}

absl::Status TokenizerLoader::LoadTemplate(const Json& processor, const std::string& path,
                                           Tokenizer& t) {
  const Json* single = Field(processor, "single");
  if (single == nullptr || !single->is_array()) {
    return Invalid(absl::StrCat(path, ".single"), "must be an array");
  }
  const Json* specials = Field(processor, "special_tokens");
  if (specials != nullptr && !specials->is_object()) {
    return Invalid(absl::StrCat(path, ".special_tokens"), "must be an object");
  }
  t.template_.clear();
  for (size_t i = 0; i < single->size(); ++i) {
    const Json& piece = (*single)[i];
    const std::string piece_path = absl::StrCat(path, ".single[", i, "]");
    if (const Json* sequence = piece.is_object() ? Field(piece, "Sequence") : nullptr) {
      TESSERA_ASSIGN_OR_RETURN(
          const std::string id,
          RequiredString(*sequence, "id", absl::StrCat(piece_path, ".Sequence.id")));
      if (id != "A") {
        return Invalid(absl::StrCat(piece_path, ".Sequence.id"),
                       absl::StrCat("'", id, "' is not the single sequence 'A'"));
      }
      t.template_.emplace_back();
    } else if (const Json* special = piece.is_object() ? Field(piece, "SpecialToken") : nullptr) {
      const std::string id_path = absl::StrCat(piece_path, ".SpecialToken.id");
      TESSERA_ASSIGN_OR_RETURN(const std::string name, RequiredString(*special, "id", id_path));
      const Json* entry = specials == nullptr ? nullptr : Field(*specials, name.c_str());
      if (entry == nullptr || !entry->is_object()) {
        return Invalid(id_path, absl::StrCat("'", name, "' is not in ", path, ".special_tokens"));
      }
      const Json* ids = Field(*entry, "ids");
      const std::string ids_path =
          absl::StrCat(path, ".special_tokens[", Json(name).dump(), "].ids");
      if (ids == nullptr || !ids->is_array() || ids->empty()) {
        return Invalid(ids_path, "must be a non-empty array of ids");
      }
      std::vector<int32_t> values;
      for (const Json& id : *ids) {
        if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > kMaxId) {
          return Invalid(ids_path, absl::StrCat("has ", id.dump(), ", which is not an id"));
        }
        values.push_back(static_cast<int32_t>(id.get<int64_t>()));
        max_id_ = std::max<int64_t>(max_id_, values.back());
      }
      t.template_.push_back(std::move(values));
    } else {
      return Invalid(piece_path, "must be {\"Sequence\": ...} or {\"SpecialToken\": ...}");
    }
  }
  t.has_template_ = true;
  return absl::OkStatus();
}

absl::Status TokenizerLoader::LoadPostProcessor(const Json* processor, const std::string& path,
                                                Tokenizer& t) {
  if (processor == nullptr) return absl::OkStatus();
  TESSERA_ASSIGN_OR_RETURN(const std::string type, TypeOf(*processor, path));
  // ByteLevel only trims offsets, which change no id.
  if (type == "ByteLevel") return absl::OkStatus();
  if (type == "TemplateProcessing") {
    if (t.has_template_) return Invalid(path, "is a second TemplateProcessing");
    return LoadTemplate(*processor, path, t);
  }
  if (type == "Sequence") {
    const Json* list = Field(*processor, "processors");
    if (list == nullptr || !list->is_array()) {
      return Invalid(absl::StrCat(path, ".processors"), "must be an array");
    }
    for (size_t i = 0; i < list->size(); ++i) {
      TESSERA_RETURN_IF_ERROR(
          LoadPostProcessor(&(*list)[i], absl::StrCat(path, ".processors[", i, "]"), t));
    }
    return absl::OkStatus();
  }
  return Unsupported(absl::StrCat(path, ".type"), type);
}

absl::Status TokenizerLoader::LoadDecoder(const Json* decoder) {
  if (decoder == nullptr) return Invalid("decoder", "is missing: only ByteLevel is supported");
  TESSERA_ASSIGN_OR_RETURN(const std::string type, TypeOf(*decoder, "decoder"));
  if (type != "ByteLevel") return Unsupported("decoder.type", type);
  return absl::OkStatus();
}

void TokenizerLoader::BuildIdTables(Tokenizer& t) {
  const size_t size = static_cast<size_t>(max_id_ + 1);
  t.id_tokens_.assign(size, std::string());
  t.id_bytes_.assign(size, std::string());
  t.id_flags_.assign(size, 0);
  auto assign = [&t](int32_t id, const std::string& text) {
    t.id_tokens_[id] = text;
    // Hugging Face's ByteLevel decoder maps a token character by character, or takes its
    // UTF-8 text whole when a character is outside the byte-level alphabet.
    std::optional<std::string> bytes = ByteLevelToBytes(text);
    t.id_bytes_[id] = bytes.has_value() ? std::move(*bytes) : text;
    t.id_flags_[id] = Tokenizer::kAssigned;
  };
  for (const auto& [text, id] : vocab_) assign(id, text);
  // Added tokens name their ids over the model's.
  absl::flat_hash_map<std::string, bool> special_contents;
  for (const AddedToken& token : added_) {
    assign(token.id, token.content);
    if (token.special) special_contents[token.content] = true;
  }
  // Decode skips by text, so a model token spelled like a special token is skipped too.
  for (size_t id = 0; id < size; ++id) {
    if ((t.id_flags_[id] & Tokenizer::kAssigned) && special_contents.contains(t.id_tokens_[id])) {
      t.id_flags_[id] |= Tokenizer::kSpecial;
    }
  }
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return absl::NotFoundError(absl::StrCat(path, ": cannot open the tokenizer file"));
  std::stringstream buffer;
  buffer << file.rdbuf();
  if (file.bad()) return absl::DataLossError(absl::StrCat(path, ": read failed"));
  return FromJson(buffer.str(), path);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(absl::string_view json,
                                                               absl::string_view source) {
  Json root;
  try {
    root = Json::parse(json.begin(), json.end());
  } catch (const Json::parse_error& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not valid JSON: ", e.what()));
  }
  try {
    return TokenizerLoader(source).Load(root);
  } catch (const Json::exception& e) {
    // The loader checks types before it reads values; this is a last line of defence.
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": unexpected JSON content: ", e.what()));
  }
}

Tokenizer::~Tokenizer() = default;

absl::Status Tokenizer::EncodeNormalized(absl::string_view text, std::vector<int32_t>* ids) const {
  return pre_tokenizer_->Split(text, [&](absl::string_view piece) { model_->Encode(piece, ids); });
}

absl::Status Tokenizer::EncodeText(absl::string_view text, std::vector<int32_t>* ids) const {
  std::vector<TextSegment> raw_segments;
  if (raw_matcher_.has_value()) {
    TESSERA_RETURN_IF_ERROR(raw_matcher_->Split(text, &raw_segments));
  } else {
    raw_segments.push_back({0, text.size(), -1});
  }
  std::string normalized;
  std::vector<TextSegment> segments;
  for (const TextSegment& raw : raw_segments) {
    if (raw.id >= 0) {
      ids->push_back(raw.id);
      continue;
    }
    if (raw.end == raw.begin) continue;
    absl::string_view piece = text.substr(raw.begin, raw.end - raw.begin);
    if (nfc_) {
      TESSERA_RETURN_IF_ERROR(ToNfc(piece, &normalized));
      piece = normalized;
    }
    if (!normalized_matcher_.has_value()) {
      TESSERA_RETURN_IF_ERROR(EncodeNormalized(piece, ids));
      continue;
    }
    segments.clear();
    TESSERA_RETURN_IF_ERROR(normalized_matcher_->Split(piece, &segments));
    for (const TextSegment& s : segments) {
      if (s.id >= 0) {
        ids->push_back(s.id);
      } else if (s.end > s.begin) {
        TESSERA_RETURN_IF_ERROR(EncodeNormalized(piece.substr(s.begin, s.end - s.begin), ids));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(absl::string_view text,
                                                       bool add_special_tokens) const {
  if (std::optional<size_t> bad = FindInvalidUtf8(text)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "text is not valid UTF-8: byte 0x%02x at offset %d does not start a well-formed "
        "character",
        static_cast<unsigned char>(text[*bad]), *bad));
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  TESSERA_RETURN_IF_ERROR(EncodeText(text, &ids));
  if (!add_special_tokens || !has_template_) return ids;
  std::vector<int32_t> out;
  out.reserve(ids.size() + template_.size() * 2);
  for (const std::vector<int32_t>& piece : template_) {
    if (piece.empty()) {
      out.insert(out.end(), ids.begin(), ids.end());
    } else {
      out.insert(out.end(), piece.begin(), piece.end());
    }
  }
  return out;
}

absl::StatusOr<absl::string_view> Tokenizer::TokenBytes(int32_t id,
                                                        bool skip_special_tokens) const {
  if (id < 0 || id >= vocab_size()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("token id %d is outside the vocabulary [0, %d)", id, vocab_size()));
  }
  const uint8_t flags = id_flags_[id];
  if (skip_special_tokens && (flags & kSpecial)) return absl::string_view();
  return absl::string_view(id_bytes_[id]);
}

absl::StatusOr<std::string> Tokenizer::Decode(absl::Span<const int32_t> ids,
                                              bool skip_special_tokens) const {
  std::string bytes;
  for (size_t i = 0; i < ids.size(); ++i) {
    absl::StatusOr<absl::string_view> piece = TokenBytes(ids[i], skip_special_tokens);
    if (!piece.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("ids[", i, "]: ", piece.status().message()));
    }
    bytes.append(piece->data(), piece->size());
  }
  std::string text;
  text.reserve(bytes.size());
  AppendUtf8Lossy(bytes, /*final=*/true, &text);
  return text;
}

std::optional<int32_t> Tokenizer::TokenToId(absl::string_view token) const {
  if (auto it = added_ids_.find(token); it != added_ids_.end()) return it->second;
  if (auto it = model_ids_.find(token); it != model_ids_.end()) return it->second;
  return std::nullopt;
}

std::optional<std::string> Tokenizer::IdToToken(int32_t id) const {
  if (id < 0 || id >= vocab_size() || !(id_flags_[id] & kAssigned)) return std::nullopt;
  return id_tokens_[id];
}

bool Tokenizer::IsSpecial(int32_t id) const {
  return id >= 0 && id < vocab_size() && (id_flags_[id] & kSpecial);
}

absl::StatusOr<std::string> StreamingDecoder::Add(int32_t id) {
  TESSERA_ASSIGN_OR_RETURN(const absl::string_view bytes,
                           tokenizer_->TokenBytes(id, skip_special_tokens_));
  pending_.append(bytes.data(), bytes.size());
  std::string text;
  const size_t consumed = AppendUtf8Lossy(pending_, /*final=*/false, &text);
  pending_.erase(0, consumed);
  return text;
}

std::string StreamingDecoder::Flush() {
  std::string text;
  AppendUtf8Lossy(pending_, /*final=*/true, &text);
  pending_.clear();
  return text;
}

}  // namespace tessera::tokenizer
