#ifndef TESSERA_RUNTIME_TOKENIZER_JSON_READER_H_
#define TESSERA_RUNTIME_TOKENIZER_JSON_READER_H_

// Typed reads of tokenizer.json's fields for the loader, whose every error is INVALID_ARGUMENT
// naming the file and the field's place in it as a JSON path:
// "tokenizer.json: model.vocab must be an object of token: id".
//
// Thread safety: immutable.

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace tessera::tokenizer {

using Json = nlohmann::json;

class JsonReader {
 public:
  explicit JsonReader(absl::string_view source) : source_(source) {}

  const std::string& source() const { return source_; }

  // "<source>: <path> <what>".
  absl::Status Invalid(absl::string_view path, absl::string_view what) const;
  // "<source>: <path> '<value>' is not supported".
  absl::Status Unsupported(absl::string_view path, absl::string_view value) const;

  // The field `key` of `object`, or nullptr when it is absent or null.
  static const Json* Field(const Json& object, const char* key);

  absl::StatusOr<const Json*> RequiredObject(const Json& object, const char* key,
                                             absl::string_view path) const;
  absl::StatusOr<std::string> RequiredString(const Json& object, const char* key,
                                             absl::string_view path) const;
  // A string of exactly one character.
  absl::StatusOr<std::string> RequiredCharacter(const Json& object, const char* key,
                                                absl::string_view path) const;
  absl::StatusOr<int64_t> RequiredCount(const Json& object, const char* key,
                                        absl::string_view path) const;
  absl::StatusOr<bool> OptionalBool(const Json& object, const char* key, absl::string_view path,
                                    bool default_value) const;
  // The "type" of the object at `path`.
  absl::StatusOr<std::string> TypeOf(const Json& object, absl::string_view path) const;
  absl::StatusOr<std::string> ValidUtf8(const std::string& text, absl::string_view path) const;

  // The steps of a normalizer, pre-tokenizer or decoder at `path`, with their paths: the object
  // itself, or the elements of its `list_key` array when its type is "Sequence" (and of the
  // Sequences among them, in order).
  absl::StatusOr<std::vector<std::pair<std::string, const Json*>>> Steps(
      const Json& object, const char* list_key, const std::string& path) const;

 private:
  absl::Status AppendSteps(const Json& object, const char* list_key, const std::string& path,
                           std::vector<std::pair<std::string, const Json*>>& steps) const;

  std::string source_;
};

}  // namespace tessera::tokenizer

#endif  // TESSERA_RUNTIME_TOKENIZER_JSON_READER_H_
