#include "runtime/tokenizer/tokenizer_config.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace tessera::tokenizer {
namespace {

absl::Status FieldError(absl::string_view source, absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": ", field, ": ", what));
}

// A special token as tokenizer_config.json writes it: "<s>", null, or {"content": "<s>", ...}.
absl::StatusOr<std::optional<std::string>> TokenField(const nlohmann::json& config,
                                                      absl::string_view source, const char* field) {
  auto it = config.find(field);
  if (it == config.end() || it->is_null()) return std::optional<std::string>();
  if (it->is_string()) return std::optional<std::string>(it->get<std::string>());
  if (it->is_object()) {
    auto content = it->find("content");
    if (content != it->end() && content->is_string()) {
      return std::optional<std::string>(content->get<std::string>());
    }
    return FieldError(source, field, "an AddedToken object without a string \"content\"");
  }
  return FieldError(source, field, "must be a string, null or an AddedToken object");
}

absl::StatusOr<std::optional<bool>> BoolField(const nlohmann::json& config,
                                              absl::string_view source, const char* field) {
  auto it = config.find(field);
  if (it == config.end() || it->is_null()) return std::optional<bool>();
  if (!it->is_boolean()) return FieldError(source, field, "must be true or false");
  return std::optional<bool>(it->get<bool>());
}

// NOT_FOUND when absent; the errno's message naming the path when unreadable.
absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::error_code error;
  if (!std::filesystem::exists(path, error)) {
    return absl::NotFoundError(absl::StrCat(path, ": no such file"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in.is_open()) {
    return absl::PermissionDeniedError(
        absl::StrCat(path, ": cannot be opened: ", std::strerror(errno)));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) {
    return absl::UnavailableError(absl::StrCat(path, ": cannot be read: ", std::strerror(errno)));
  }
  return text.str();
}

}  // namespace

absl::StatusOr<TokenizerConfig> ParseTokenizerConfig(absl::string_view json_text,
                                                     absl::string_view source) {
  nlohmann::json config = nlohmann::json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not valid JSON"));
  }
  if (!config.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": must be a JSON object"));
  }
  TokenizerConfig result;
  auto bos = TokenField(config, source, "bos_token");
  if (!bos.ok()) return bos.status();
  result.bos_token = *std::move(bos);
  auto eos = TokenField(config, source, "eos_token");
  if (!eos.ok()) return eos.status();
  result.eos_token = *std::move(eos);
  auto add_bos = BoolField(config, source, "add_bos_token");
  if (!add_bos.ok()) return add_bos.status();
  result.add_bos_token = *add_bos;
  auto add_eos = BoolField(config, source, "add_eos_token");
  if (!add_eos.ok()) return add_eos.status();
  result.add_eos_token = *add_eos;

  auto chat = config.find("chat_template");
  if (chat == config.end() || chat->is_null()) return result;
  const std::string origin = absl::StrCat(source, ":chat_template");
  if (chat->is_string()) {
    result.chat_template = chat->get<std::string>();
    result.chat_template_origin = origin;
    return result;
  }
  if (!chat->is_array()) {
    return FieldError(source, "chat_template", "must be a string or a list of named templates");
  }
  for (size_t i = 0; i < chat->size(); ++i) {
    const nlohmann::json& named = (*chat)[i];
    auto name = named.is_object() ? named.find("name") : named.end();
    auto text = named.is_object() ? named.find("template") : named.end();
    if (name == named.end() || text == named.end() || !name->is_string() || !text->is_string()) {
      return FieldError(source, absl::StrCat("chat_template[", i, "]"),
                        "must be an object with string \"name\" and \"template\"");
    }
    if (name->get<std::string>() == "default") {
      result.chat_template = text->get<std::string>();
      result.chat_template_origin = absl::StrCat(origin, "[default]");
    }
  }
  return result;
}

absl::StatusOr<TokenizerConfig> ReadTokenizerConfig(const std::string& model_dir) {
  TokenizerConfig result;
  const std::string config_path = model_dir + "/tokenizer_config.json";
  absl::StatusOr<std::string> config_text = ReadFile(config_path);
  if (config_text.ok()) {
    auto parsed = ParseTokenizerConfig(*config_text, "tokenizer_config.json");
    if (!parsed.ok()) return parsed.status();
    result = *std::move(parsed);
  } else if (!absl::IsNotFound(config_text.status())) {
    return config_text.status();
  }
  absl::StatusOr<std::string> jinja = ReadFile(model_dir + "/chat_template.jinja");
  if (jinja.ok()) {
    result.chat_template = *std::move(jinja);
    result.chat_template_origin = "chat_template.jinja";
  } else if (!absl::IsNotFound(jinja.status())) {
    return jinja.status();
  }
  return result;
}

}  // namespace tessera::tokenizer
