#include "launcher/secret_file.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace tessera::launcher {

absl::StatusOr<std::string> ReadSecret(const std::string& path, const char* variable,
                                       const std::string& flag) {
  if (path.empty()) {
    const char* value = std::getenv(variable);
    return std::string(absl::StripAsciiWhitespace(value == nullptr ? "" : value));
  }
  std::ifstream file(path);
  if (!file) return absl::InvalidArgumentError(absl::StrCat(flag, ": cannot read ", path));
  std::stringstream text;
  text << file.rdbuf();
  std::string secret(absl::StripAsciiWhitespace(text.str()));
  if (secret.empty())
    return absl::InvalidArgumentError(absl::StrCat(flag, ": ", path, " is empty"));
  return secret;
}

}  // namespace tessera::launcher
