#ifndef TESSERA_RUNTIME_MODEL_JSON_FILE_H_
#define TESSERA_RUNTIME_MODEL_JSON_FILE_H_

// Reading the JSON files of a model directory, with errors that name the file. Internal to
// tessera_model.

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace tessera::model {

// The whole file. NOT_FOUND when it does not exist; the errno's status (naming the path)
// when it cannot be read.
absl::StatusOr<std::string> ReadTextFile(const std::string& path);

// Parses `text`; INVALID_ARGUMENT naming `source` and the parser's byte position otherwise.
absl::StatusOr<nlohmann::json> ParseJson(absl::string_view text, absl::string_view source);

}  // namespace tessera::model

#endif  // TESSERA_RUNTIME_MODEL_JSON_FILE_H_
