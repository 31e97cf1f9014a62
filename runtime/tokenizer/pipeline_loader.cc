#include "runtime/tokenizer/pipeline_loader.h"

#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "runtime/core/status_macros.h"
#include "runtime/tokenizer/digits.h"

namespace tessera::tokenizer {
namespace {

// A Replace's or Split's "pattern": {"String": literal} or {"Regex": pattern}.
absl::StatusOr<std::unique_ptr<Regex>> LoadPattern(const JsonReader& reader, const Json& step,
                                                   const std::string& path) {
  const std::string pattern_path = absl::StrCat(path, ".pattern");
  TESSERA_ASSIGN_OR_RETURN(const Json* pattern,
                           reader.RequiredObject(step, "pattern", pattern_path));
  absl::StatusOr<std::unique_ptr<Regex>> compiled;
  if (const Json* regex = JsonReader::Field(*pattern, "Regex")) {
    if (!regex->is_string()) {
      return reader.Invalid(absl::StrCat(pattern_path, ".Regex"), "must be a string");
    }
    compiled = Regex::Compile(regex->get<std::string>());
  } else if (const Json* literal = JsonReader::Field(*pattern, "String")) {
    if (!literal->is_string()) {
      return reader.Invalid(absl::StrCat(pattern_path, ".String"), "must be a string");
    }
    compiled = Regex::CompileLiteral(literal->get<std::string>());
  } else {
    return reader.Invalid(pattern_path, "must have \"Regex\" or \"String\"");
  }
  if (!compiled.ok()) return reader.Invalid(pattern_path, compiled.status().message());
  return std::move(*compiled);
}

absl::StatusOr<NormalizerStep> LoadNormalizerStep(const JsonReader& reader, const Json& step,
                                                  const std::string& path,
                                                  const std::string& type) {
  using Kind = NormalizerStep::Kind;
  static const auto* const kForms =
      new absl::flat_hash_map<std::string, Kind>{{"NFC", Kind::kNfc},
                                                 {"NFD", Kind::kNfd},
                                                 {"NFKC", Kind::kNfkc},
                                                 {"NFKD", Kind::kNfkd},
                                                 {"Lowercase", Kind::kLowercase}};
  NormalizerStep out;
  if (auto form = kForms->find(type); form != kForms->end()) {
    if (!UnicodeFormsAvailable()) {
      return absl::UnimplementedError(absl::StrCat(reader.source(), ": ", path, ".type '", type,
                                                   "' needs ICU, and this build of Tessera has "
                                                   "none"));
    }
    out.kind = form->second;
  } else if (type == "Prepend") {
    out.kind = Kind::kPrepend;
    TESSERA_ASSIGN_OR_RETURN(
        out.text, reader.RequiredString(step, "prepend", absl::StrCat(path, ".prepend")));
  } else if (type == "Replace") {
    out.kind = Kind::kReplace;
    TESSERA_ASSIGN_OR_RETURN(out.pattern, LoadPattern(reader, step, path));
    TESSERA_ASSIGN_OR_RETURN(
        out.text, reader.RequiredString(step, "content", absl::StrCat(path, ".content")));
    // Hugging Face would put `content` at every place an empty match can be found.
    if (out.pattern->MayMatchEmpty()) {
      return reader.Invalid(absl::StrCat(path, ".pattern"),
                            "can match empty text, which is not supported");
    }
    // tokenizers 0.23 takes "$1" literally; later versions read it as a group.
    if (JsonReader::Field(*JsonReader::Field(step, "pattern"), "Regex") != nullptr &&
        out.text.find('$') != std::string::npos) {
      return reader.Invalid(absl::StrCat(path, ".content"),
                            "with '$' after a Regex pattern is not supported");
    }
  } else {
    return reader.Unsupported(absl::StrCat(path, ".type"), type);
  }
  return out;
}

absl::StatusOr<SplitStep> LoadSplit(const JsonReader& reader, const Json& split,
                                    const std::string& path) {
  SplitStep step;
  TESSERA_ASSIGN_OR_RETURN(step.pattern, LoadPattern(reader, split, path));
  TESSERA_ASSIGN_OR_RETURN(
      const std::string behavior,
      reader.RequiredString(split, "behavior", absl::StrCat(path, ".behavior")));
  static const auto* const kBehaviors = new absl::flat_hash_map<std::string, SplitBehavior>{
      {"Removed", SplitBehavior::kRemoved},
      {"Isolated", SplitBehavior::kIsolated},
      {"MergedWithPrevious", SplitBehavior::kMergedWithPrevious},
      {"MergedWithNext", SplitBehavior::kMergedWithNext},
      {"Contiguous", SplitBehavior::kContiguous}};
  auto it = kBehaviors->find(behavior);
  if (it == kBehaviors->end()) {
    return reader.Unsupported(absl::StrCat(path, ".behavior"), behavior);
  }
  step.behavior = it->second;
  TESSERA_ASSIGN_OR_RETURN(
      step.invert, reader.OptionalBool(split, "invert", absl::StrCat(path, ".invert"), false));
  return step;
}

// Metaspace, as a pre-tokenizer or a decoder. Files written before "prepend_scheme" existed
// have "add_prefix_space" instead (true meaning "always").
absl::StatusOr<Metaspace> LoadMetaspace(const JsonReader& reader, const Json& step,
                                        const std::string& path) {
  Metaspace metaspace;
  TESSERA_ASSIGN_OR_RETURN(
      metaspace.replacement,
      reader.RequiredCharacter(step, "replacement", absl::StrCat(path, ".replacement")));
  TESSERA_ASSIGN_OR_RETURN(metaspace.split,
                           reader.OptionalBool(step, "split", absl::StrCat(path, ".split"), true));
  if (JsonReader::Field(step, "prepend_scheme") != nullptr) {
    const std::string scheme_path = absl::StrCat(path, ".prepend_scheme");
    TESSERA_ASSIGN_OR_RETURN(const std::string scheme,
                             reader.RequiredString(step, "prepend_scheme", scheme_path));
    if (scheme == "always") {
      metaspace.prepend_scheme = PrependScheme::kAlways;
    } else if (scheme == "first") {
      metaspace.prepend_scheme = PrependScheme::kFirst;
    } else if (scheme == "never") {
      metaspace.prepend_scheme = PrependScheme::kNever;
    } else {
      return reader.Unsupported(scheme_path, scheme);
    }
  } else {
    TESSERA_ASSIGN_OR_RETURN(const bool add_prefix_space,
                             reader.OptionalBool(step, "add_prefix_space",
                                                 absl::StrCat(path, ".add_prefix_space"), true));
    metaspace.prepend_scheme = add_prefix_space ? PrependScheme::kAlways : PrependScheme::kNever;
  }
  return metaspace;
}

absl::StatusOr<DecoderStep> LoadDecoderStep(const JsonReader& reader, const Json& step,
                                            const std::string& path, const std::string& type) {
  DecoderStep out;
  if (type == "ByteLevel") {
    out.kind = DecoderStep::Kind::kByteLevel;
  } else if (type == "ByteFallback") {
    out.kind = DecoderStep::Kind::kByteFallback;
  } else if (type == "Fuse") {
    out.kind = DecoderStep::Kind::kFuse;
  } else if (type == "Replace") {
    out.kind = DecoderStep::Kind::kReplace;
    const std::string pattern_path = absl::StrCat(path, ".pattern");
    TESSERA_ASSIGN_OR_RETURN(const Json* pattern,
                             reader.RequiredObject(step, "pattern", pattern_path));
    if (JsonReader::Field(*pattern, "String") == nullptr) {
      return reader.Invalid(pattern_path, "must be {\"String\": ...}: decoders take no Regex");
    }
    TESSERA_ASSIGN_OR_RETURN(
        out.pattern,
        reader.RequiredString(*pattern, "String", absl::StrCat(pattern_path, ".String")));
    if (out.pattern.empty()) {
      return reader.Invalid(absl::StrCat(pattern_path, ".String"), "must not be empty");
    }
    TESSERA_ASSIGN_OR_RETURN(
        out.content, reader.RequiredString(step, "content", absl::StrCat(path, ".content")));
  } else if (type == "Strip") {
    out.kind = DecoderStep::Kind::kStrip;
    TESSERA_ASSIGN_OR_RETURN(
        out.content, reader.RequiredCharacter(step, "content", absl::StrCat(path, ".content")));
    TESSERA_ASSIGN_OR_RETURN(const int64_t start,
                             reader.RequiredCount(step, "start", absl::StrCat(path, ".start")));
    TESSERA_ASSIGN_OR_RETURN(const int64_t stop,
                             reader.RequiredCount(step, "stop", absl::StrCat(path, ".stop")));
    // Stripping the end would hold text back until the stream ends; no published decoder does
    // it (and tokenizers 0.23 panics on text shorter than `stop`).
    if (stop != 0) return reader.Unsupported(absl::StrCat(path, ".stop"), std::to_string(stop));
    out.start = static_cast<size_t>(start);
  } else if (type == "Metaspace") {
    out.kind = DecoderStep::Kind::kMetaspace;
    TESSERA_ASSIGN_OR_RETURN(out.metaspace, LoadMetaspace(reader, step, path));
  } else {
    return reader.Unsupported(absl::StrCat(path, ".type"), type);
  }
  return out;
}

}  // namespace

absl::StatusOr<Normalizer> LoadNormalizer(const JsonReader& reader, const Json* normalizer) {
  std::vector<NormalizerStep> steps;
  if (normalizer == nullptr) return Normalizer(std::move(steps));
  TESSERA_ASSIGN_OR_RETURN(const auto paths,
                           reader.Steps(*normalizer, "normalizers", "normalizer"));
  for (const auto& [path, step] : paths) {
    TESSERA_ASSIGN_OR_RETURN(const std::string type, reader.TypeOf(*step, path));
    TESSERA_ASSIGN_OR_RETURN(NormalizerStep loaded, LoadNormalizerStep(reader, *step, path, type));
    steps.push_back(std::move(loaded));
  }
  return Normalizer(std::move(steps));
}

absl::StatusOr<PreTokenizer> LoadPreTokenizer(const JsonReader& reader, const Json* pre_tokenizer) {
  std::vector<PreTokenizerStep> steps;
  std::optional<ByteLevelStep> byte_level;
  if (pre_tokenizer == nullptr) return PreTokenizer::Create(std::move(steps), byte_level);
  TESSERA_ASSIGN_OR_RETURN(const auto paths,
                           reader.Steps(*pre_tokenizer, "pretokenizers", "pre_tokenizer"));
  for (const auto& [path, step] : paths) {
    TESSERA_ASSIGN_OR_RETURN(const std::string type, reader.TypeOf(*step, path));
    if (byte_level.has_value()) {
      return reader.Invalid(path, absl::StrCat("'", type, "' after ByteLevel is not supported"));
    }
    if (type == "Split") {
      TESSERA_ASSIGN_OR_RETURN(SplitStep split, LoadSplit(reader, *step, path));
      steps.emplace_back(std::move(split));
    } else if (type == "Digits") {
      // Hugging Face gives individual_digits no default: it refuses a Digits without one.
      const std::string flag_path = absl::StrCat(path, ".individual_digits");
      if (JsonReader::Field(*step, "individual_digits") == nullptr) {
        return reader.Invalid(flag_path, "is missing");
      }
      TESSERA_ASSIGN_OR_RETURN(const bool individual_digits,
                               reader.OptionalBool(*step, "individual_digits", flag_path, false));
      TESSERA_ASSIGN_OR_RETURN(SplitStep split, DigitsSplit(individual_digits));
      steps.emplace_back(std::move(split));
    } else if (type == "Metaspace") {
      TESSERA_ASSIGN_OR_RETURN(Metaspace metaspace, LoadMetaspace(reader, *step, path));
      steps.emplace_back(std::move(metaspace));
    } else if (type == "ByteLevel") {
      ByteLevelStep b;
      TESSERA_ASSIGN_OR_RETURN(b.add_prefix_space,
                               reader.OptionalBool(*step, "add_prefix_space",
                                                   absl::StrCat(path, ".add_prefix_space"), true));
      TESSERA_ASSIGN_OR_RETURN(
          b.use_regex,
          reader.OptionalBool(*step, "use_regex", absl::StrCat(path, ".use_regex"), true));
      byte_level = b;
    } else {
      return reader.Unsupported(absl::StrCat(path, ".type"), type);
    }
  }
  return PreTokenizer::Create(std::move(steps), byte_level);
}

absl::StatusOr<std::vector<DecoderStep>> LoadDecoder(const JsonReader& reader,
                                                     const Json* decoder) {
  if (decoder == nullptr) return reader.Invalid("decoder", "is missing");
  TESSERA_ASSIGN_OR_RETURN(const auto paths, reader.Steps(*decoder, "decoders", "decoder"));
  std::vector<DecoderStep> steps;
  std::string joined_by;  // the Fuse or ByteLevel that made the tokens one text
  for (const auto& [path, step] : paths) {
    TESSERA_ASSIGN_OR_RETURN(const std::string type, reader.TypeOf(*step, path));
    TESSERA_ASSIGN_OR_RETURN(DecoderStep loaded, LoadDecoderStep(reader, *step, path, type));
    const bool needs_tokens = loaded.kind == DecoderStep::Kind::kByteLevel ||
                              loaded.kind == DecoderStep::Kind::kByteFallback;
    if (needs_tokens && !joined_by.empty()) {
      return reader.Invalid(path, absl::StrCat("'", type, "' after '", joined_by,
                                               "' is not supported (it needs the tokens apart)"));
    }
    if (joined_by.empty() &&
        (loaded.kind == DecoderStep::Kind::kFuse || loaded.kind == DecoderStep::Kind::kByteLevel)) {
      joined_by = type;
    }
    steps.push_back(std::move(loaded));
  }
  return steps;
}

}  // namespace tessera::tokenizer
