#include "runtime/tokenizer/json_reader.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "runtime/core/status_macros.h"
#include "runtime/tokenizer/utf8.h"

namespace tessera::tokenizer {

absl::Status JsonReader::Invalid(absl::string_view path, absl::string_view what) const {
  return absl::InvalidArgumentError(absl::StrCat(source_, ": ", path, " ", what));
}

absl::Status JsonReader::Unsupported(absl::string_view path, absl::string_view value) const {
  return Invalid(path, absl::StrCat("'", value, "' is not supported"));
}

const Json* JsonReader::Field(const Json& object, const char* key) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return nullptr;
  return &*it;
}

absl::StatusOr<const Json*> JsonReader::RequiredObject(const Json& object, const char* key,
                                                       absl::string_view path) const {
  const Json* field = Field(object, key);
  if (field == nullptr) return Invalid(path, "is missing");
  if (!field->is_object()) return Invalid(path, "must be an object");
  return field;
}

absl::StatusOr<std::string> JsonReader::RequiredString(const Json& object, const char* key,
                                                       absl::string_view path) const {
  const Json* field = Field(object, key);
  if (field == nullptr) return Invalid(path, "is missing");
  if (!field->is_string()) return Invalid(path, "must be a string");
  return ValidUtf8(field->get<std::string>(), path);
}

absl::StatusOr<std::string> JsonReader::RequiredCharacter(const Json& object, const char* key,
                                                          absl::string_view path) const {
  TESSERA_ASSIGN_OR_RETURN(std::string text, RequiredString(object, key, path));
  if (text.empty() || Utf8Length(text[0]) != text.size()) {
    return Invalid(path, absl::StrCat("must be one character, not ", Json(text).dump()));
  }
  return text;
}

absl::StatusOr<int64_t> JsonReader::RequiredCount(const Json& object, const char* key,
                                                  absl::string_view path) const {
  const Json* field = Field(object, key);
  if (field == nullptr) return Invalid(path, "is missing");
  if (!field->is_number_unsigned()) return Invalid(path, "must be a whole number, 0 or more");
  return static_cast<int64_t>(field->get<uint64_t>());
}

absl::StatusOr<bool> JsonReader::OptionalBool(const Json& object, const char* key,
                                              absl::string_view path, bool default_value) const {
  const Json* field = Field(object, key);
  if (field == nullptr) return default_value;
  if (!field->is_boolean()) return Invalid(path, "must be true or false");
  return field->get<bool>();
}

absl::StatusOr<std::string> JsonReader::TypeOf(const Json& object, absl::string_view path) const {
  if (!object.is_object()) return Invalid(path, "must be an object");
  return RequiredString(object, "type", absl::StrCat(path, ".type"));
}

absl::StatusOr<std::string> JsonReader::ValidUtf8(const std::string& text,
                                                  absl::string_view path) const {
  // nlohmann::json passes invalid UTF-8 in strings through; nothing downstream expects it.
  if (auto bad = FindInvalidUtf8(text)) {
    return Invalid(path, absl::StrFormat("is not valid UTF-8 (byte %d)", *bad));
  }
  return text;
}

absl::StatusOr<std::vector<std::pair<std::string, const Json*>>> JsonReader::Steps(
    const Json& object, const char* list_key, const std::string& path) const {
  std::vector<std::pair<std::string, const Json*>> steps;
  TESSERA_RETURN_IF_ERROR(AppendSteps(object, list_key, path, steps));
  return steps;
}

absl::Status JsonReader::AppendSteps(
    const Json& object, const char* list_key, const std::string& path,
    std::vector<std::pair<std::string, const Json*>>& steps) const {
  TESSERA_ASSIGN_OR_RETURN(const std::string type, TypeOf(object, path));
  if (type != "Sequence") {
    steps.emplace_back(path, &object);
    return absl::OkStatus();
  }
  const std::string list_path = absl::StrCat(path, ".", list_key);
  const Json* list = Field(object, list_key);
  if (list == nullptr || !list->is_array()) return Invalid(list_path, "must be an array");
  for (size_t i = 0; i < list->size(); ++i) {
    TESSERA_RETURN_IF_ERROR(
        AppendSteps((*list)[i], list_key, absl::StrCat(list_path, "[", i, "]"), steps));
  }
  return absl::OkStatus();
}

}  // namespace tessera::tokenizer
